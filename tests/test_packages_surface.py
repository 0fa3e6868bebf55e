"""The public surface of medigan_iso.packages is deliberate: this pins it."""

from __future__ import annotations

from medigan_iso import packages


def test_packages_public_surface_is_pinned() -> None:
    assert sorted(packages.__all__) == [
        "DEFAULT_DOWNLOAD_OPTIONS",
        "DEFAULT_EXTRACT_LIMITS",
        "DownloadOptions",
        "ExtractLimits",
        "ModelPackage",
        "PackageEntry",
        "ProgressCallback",
        "download",
        "ensure_package",
        "rewrite_model_paths",
        "safe_extract",
        "sha256_file",
        "tree_sha256",
    ]
    for name in packages.__all__:
        assert hasattr(packages, name)
