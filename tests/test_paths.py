from __future__ import annotations

from pathlib import Path

import pytest

from medigan_iso.paths import CACHEDIR_TAG_NAME, cache_layout


def test_root_comes_from_medigan_iso_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("MEDIGAN_ISO_UV_CACHE", raising=False)
    layout = cache_layout()
    assert layout.root == tmp_path / "h"
    assert layout.uv_cache == tmp_path / "h" / "uv-cache"
    assert {
        p.parent for p in (layout.catalogues, layout.packages, layout.envs, layout.locks, layout.logs)
    } == {layout.root}


def test_ensure_creates_every_dir_and_a_valid_cachedir_tag(tmp_path: Path) -> None:
    layout = cache_layout(tmp_path / "root").ensure()
    for path in (layout.catalogues, layout.packages, layout.envs, layout.uv_cache, layout.locks, layout.logs):
        assert path.is_dir()
    tag = (layout.root / CACHEDIR_TAG_NAME).read_text(encoding="ascii")
    assert tag.startswith("Signature: 8a477f597d28d172789f06886806bc55")


def test_uv_cache_override_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_UV_CACHE", str(tmp_path / "uvc"))
    assert cache_layout(tmp_path / "root").uv_cache == tmp_path / "uvc"


def test_default_root_is_the_user_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MEDIGAN_ISO_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_layout().root == tmp_path / "xdg" / "medigan-iso"


def test_every_file_of_the_package_store_is_a_path_cache_layout_names(tmp_path: Path) -> None:
    """A fetch writes only where CacheLayout says: the tree, its archive date, the lock of its hash."""
    import hashlib
    import os

    from _zipcraft import Entry, model_zip

    from medigan_iso.packages import ensure_package

    archive = tmp_path / "pkg.zip"
    archive.write_bytes(model_zip("demo_pkg"))
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    home = tmp_path / "home"
    pkg = ensure_package(Entry("00001_DEMO", str(archive), catalogue_dir=tmp_path), home=home, offline=True)
    layout = cache_layout(home)
    assert pkg.sha256 == sha
    assert pkg.root == layout.package_tree(sha) / "demo_pkg"
    assert pkg.newest_file_date is not None
    assert layout.package_date(sha).read_text(encoding="ascii") == pkg.newest_file_date.isoformat()
    named = {layout.package_date(sha), layout.package_lock(sha)}
    for folder in (layout.packages, layout.locks):
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                path = Path(dirpath) / name
                inside_tree = layout.package_tree(sha) in path.parents
                assert inside_tree or path in named, f"{path} is not a path CacheLayout names"
    assert layout.package_index == layout.packages / "index"
    assert layout.package_download("demo_pkg", "k" * 24).parent == layout.package_downloads


def test_runner_logs_are_named_by_cache_layout(tmp_path: Path) -> None:
    layout = cache_layout(tmp_path)
    log = layout.runner_log("00001/../x y", started="20261130-150000", pid=12, serial=34)
    assert log == layout.logs / "runner-00001_.._x_y-20261130-150000-12-34.log"
