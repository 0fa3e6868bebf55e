"""Fixtures every test module may use.

- ``shared_fixtures``: the folder with the real upstream catalogues (``../shared/fixtures`` beside the
  checkout, or ``$MEDIGAN_ISO_SHARED_FIXTURES``); tests that need it skip with the reason when absent.
- ``home``: a fresh ``MEDIGAN_ISO_HOME`` per test. The uv cache stays shared across runs through
  ``$MEDIGAN_ISO_UV_CACHE`` (tox sets it) so real env builds reuse downloaded wheels.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _shared_fixtures_dir() -> Path:
    env = os.environ.get("MEDIGAN_ISO_SHARED_FIXTURES")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    path = _shared_fixtures_dir()
    if not (path / "medigan_global.json").is_file():
        pytest.skip(f"shared fixtures folder not found at {path} (set MEDIGAN_ISO_SHARED_FIXTURES)")
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "medigan-iso-home"
    monkeypatch.setenv("MEDIGAN_ISO_HOME", str(root))
    monkeypatch.setenv("MEDIGAN_ISO_OFFLINE", "1")
    return root


@pytest.fixture
def upstream_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave the bundled demo models out: for tests that compare with medigan 1.0 on upstream entries."""
    monkeypatch.setenv("MEDIGAN_ISO_BUNDLED", "0")
