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
