"""The public surfaces of medigan_iso.packages, .archives and .downloads are deliberate: this pins them."""

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
        "StoredPackageDate",
        "download",
        "ensure_package",
        "rewrite_model_paths",
        "safe_extract",
        "sha256_file",
        "stored_package_date",
        "tree_sha256",
    ]
    for name in packages.__all__:
        assert hasattr(packages, name)


def test_archives_and_downloads_surfaces_are_pinned() -> None:
    from medigan_iso import archives, downloads

    assert sorted(archives.__all__) == sorted(
        [
            "DEFAULT_EXTRACT_LIMITS",
            "HASH_CHUNK_BYTES",
            "TREE_HASH_MAGIC",
            "ZIP_MAGICS",
            "ExtractLimits",
            "file_digests",
            "make_read_only",
            "relative_parts",
            "remove_tree",
            "safe_extract",
            "sha256_file",
            "tree_sha256",
            "walk_package_dir",
        ]
    )
    assert sorted(downloads.__all__) == sorted(
        [
            "DEFAULT_DOWNLOAD_OPTIONS",
            "MAX_PACKAGE_BYTES",
            "DownloadOptions",
            "ProgressCallback",
            "discard_partial",
            "download",
        ]
    )
    assert packages.safe_extract is archives.safe_extract
    assert packages.download is downloads.download
