"""The subprocess boundary: the only code in medigan_iso that starts uv, pip, virtualenv or an env's
Python outside the runner. An env's interpreter is always started with ``-I -S`` here (no site
directory, so no ``.pth`` file or ``sitecustomize`` of a dependency runs on the host)."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medigan_iso.envs.index import IndexSettings
from medigan_iso.envs.spec import Interpreter

logger = logging.getLogger(__name__)


UV_BIN_ENV = "MEDIGAN_ISO_UV"  # seam: path to the uv binary (a missing path forces the fallback)
# How the host starts an env's interpreter (or a discovered one): isolated (-I: no user site, no PYTHON*
# variables, no script dir on sys.path) and without the site module (-S: no .pth file and no
# sitecustomize of any installed distribution runs). Only the confined runner starts without -S.
HOST_PYTHON_FLAGS = ("-I", "-S")


def python_argv(python: Path | str, *args: str) -> list[str]:
    """The argv that runs ``python`` from the host: ``python -I -S *args``."""
    return [os.fspath(python), *HOST_PYTHON_FLAGS, *args]


def _find_uv() -> Path | None:
    override = os.environ.get(UV_BIN_ENV)
    if override:
        path = Path(override)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    try:
        import uv  # the PyPI package that ships the binary

        return Path(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        return Path(found) if found else None


def uv_version() -> tuple[Path | None, str | None]:
    """The uv binary envs would use and its ``--version`` line (None, None when there is none)."""
    uv = _find_uv()
    if uv is None:
        return None, None
    try:
        done = _run_uv(uv, ["--version"], capture_output=True, timeout=30)
    except (_UvUnusable, subprocess.TimeoutExpired):
        return uv, None
    return uv, done.stdout.strip() or None


class _UvUnusable(Exception):
    """uv exists but cannot start; the caller falls back to virtualenv."""


def _tool_env(settings: IndexSettings | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONHOME", "PYTHONPATH", "UV_PYTHON", "UV_SYSTEM_PYTHON"):
        env.pop(var, None)
    env["NO_COLOR"] = "1"
    if settings is not None:
        env.update(settings.uv_env())
    return env


def _run_uv(uv: Path, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([str(uv), *args], text=True, check=False, **kwargs)
    except OSError as exc:
        raise _UvUnusable(f"{uv}: {exc}") from exc


_PROBE = (
    "import json, platform, sys, sysconfig;"
    "libc = '-'.join(x for x in platform.libc_ver() if x);"
    "print(json.dumps([sys.implementation.name, platform.python_version(),"
    " sysconfig.get_platform() + ('-' + libc if libc else '')]))"
)


def _current_interpreter() -> Interpreter:
    libc = "-".join(x for x in platform.libc_ver() if x)
    base = Path(getattr(sys, "_base_executable", None) or sys.executable)
    return Interpreter(
        path=base,
        version=platform.python_version(),
        implementation=sys.implementation.name,
        platform=sysconfig.get_platform() + (f"-{libc}" if libc else ""),
    )


def _probe(path: Path) -> Interpreter:
    out = subprocess.run(python_argv(path, "-c", _PROBE), capture_output=True, text=True, check=True)
    impl, version, plat = json.loads(out.stdout)
    return Interpreter(path=path, version=version, implementation=impl, platform=plat)
