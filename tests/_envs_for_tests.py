"""Real model envs for the runner tests, built with uv: the one place phase 2 swaps for envs.ensure_env.

``build_runner_env(dest, requirements, python=...)`` makes a venv with ``uv venv``, installs the
requirements with ``uv pip install`` (``--find-links /opt/wheels`` so ``torch==2.13.0`` resolves to the CPU
wheel) and copies the installed ``medigan_iso_runner`` package into the env's site-packages, exactly as the
envs module will. Returns the env's python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import medigan_iso_runner

WHEELS_DIR = Path("/opt/wheels")
HOST_PYTHON = "3.11"


def uv_binary() -> str:
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise RuntimeError("uv is not installed") from None
        return found


def _uv_env() -> dict[str, str]:
    env = dict(os.environ)
    cache = os.environ.get("MEDIGAN_ISO_UV_CACHE")
    if cache:
        env["UV_CACHE_DIR"] = cache
    return env


def build_runner_env(dest: Path, requirements: list[str], *, python: str = HOST_PYTHON) -> Path:
    uv = uv_binary()
    env = _uv_env()
    subprocess.run([uv, "venv", "--quiet", "--python", python, str(dest)], check=True, env=env)
    interpreter = dest / "bin" / "python"
    install = [uv, "pip", "install", "--quiet", "--compile-bytecode", "--python", str(interpreter)]
    if WHEELS_DIR.is_dir():
        install += ["--find-links", str(WHEELS_DIR)]
    subprocess.run([*install, *requirements], check=True, env=env)
    purelib = subprocess.run(
        [str(interpreter), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    source = Path(medigan_iso_runner.__file__).parent
    shutil.copytree(
        source, Path(purelib) / "medigan_iso_runner", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return interpreter
