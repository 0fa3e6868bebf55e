"""Skipping a test that needs another Python version, honestly.

A machine with one Python cannot run a test that needs 3.8 or 3.12: it skips with the reason ("no
Python X.Y on this machine", a reason CI allows, see conftest.py). But a skip must not hide a broken
interpreter discovery: before skipping, ``skip_without_python`` looks for the version itself (PATH,
pyenv's versions folder, uv-managed installs) and fails the test when one is installed after all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def installed_pythons(version: str) -> list[Path]:
    """Interpreters of ``version`` (``"3.8"``) on this machine, found without medigan_iso's code."""
    found: list[Path] = []
    on_path = shutil.which(f"python{version}")
    if on_path:
        found.append(Path(on_path))
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    uv_root = Path(os.environ.get("UV_PYTHON_INSTALL_DIR") or Path.home() / ".local/share/uv/python")
    candidates = [
        *sorted(pyenv_root.glob(f"versions/{version}.*/bin/python{version}")),
        *sorted(uv_root.glob(f"cpython-{version}.*/bin/python{version}")),
    ]
    found.extend(p for p in candidates if os.access(p, os.X_OK))
    return found


def skip_without_python(version: str, error: Exception) -> None:
    """Skip because ``error`` says no Python ``version`` was found; fail if one is installed after all."""
    present = installed_pythons(version)
    if present:
        pytest.fail(
            f"Python {version} is installed at {present[0]} but was not found: {error}", pytrace=False
        )
    pytest.skip(
        f"no Python {version} on this machine ({error}); install one, e.g. uv python install {version}"
    )
