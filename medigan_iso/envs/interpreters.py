"""Interpreter discovery: the host's own, PATH, pyenv's versions folder, uv-managed installs, conda envs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from medigan_iso.envs._common import _read_json, _write_atomic
from medigan_iso.envs.spec import Interpreter
from medigan_iso.envs.tools import _current_interpreter, _find_uv, _probe, _run_uv, _tool_env, _UvUnusable
from medigan_iso.errors import (
    InterpreterNotFoundError,
)
from medigan_iso.paths import CacheLayout
from medigan_iso.untrusted import get_logger

logger = get_logger(__name__)


def _pyenv_free_path() -> str:
    """PATH without pyenv shims, plus every pyenv version's bin dir.

    A pyenv shim for a version that is not active exits 127 when uv queries it, and uv stops searching at
    the first broken interpreter on PATH (seen with uv 0.13 and pyenv 2.x: ``uv python find 3.8``).
    """
    parts = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not p.endswith("shims")]
    root = Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser() / "versions"
    if root.is_dir():
        parts += [str(p / "bin") for p in sorted(root.iterdir(), reverse=True) if (p / "bin").is_dir()]
    return os.pathsep.join(parts)


def _specifier(python_requires: str, name: str | None) -> SpecifierSet:
    try:
        return SpecifierSet(python_requires)
    except InvalidSpecifier:
        specifier = SpecifierSet(
            f"=={python_requires}.*" if re.fullmatch(r"\d+(\.\d+)*", python_requires) else ""
        )
        if not str(specifier):
            raise InterpreterNotFoundError(
                name, python_requires, detail="not a valid version specifier (e.g. '>=3.8,<3.12')"
            ) from None
        return specifier


def _find_interpreter(python_requires: str | None, *, name: str | None, layout: CacheLayout) -> Interpreter:
    current = _current_interpreter()
    if python_requires is None:
        return current
    specifier = _specifier(python_requires, name)
    if current.version in specifier:
        return current
    cache_file = layout.interpreters_file
    cached = _read_json(cache_file) or {}
    hit = cached.get(str(specifier))
    if isinstance(hit, dict) and Path(hit.get("path", "")).exists():
        return Interpreter(Path(hit["path"]), hit["version"], hit["implementation"], hit["platform"])
    uv = _find_uv()
    if uv is None:
        raise InterpreterNotFoundError(
            name, python_requires, detail="uv, which discovers interpreters, is missing"
        )
    request = str(specifier)
    detail = ""
    for path_var in (os.environ.get("PATH", ""), _pyenv_free_path()):
        env = _tool_env()
        env["PATH"] = path_var
        try:
            out = _run_uv(
                uv, ["python", "find", "--no-python-downloads", request], capture_output=True, env=env
            )
        except _UvUnusable as exc:
            raise InterpreterNotFoundError(name, python_requires, detail=str(exc)) from exc
        if out.returncode == 0 and out.stdout.strip():
            interp = _probe(Path(out.stdout.strip()))
            cached[str(specifier)] = interp.as_json()
            with contextlib.suppress(OSError):
                _write_atomic(cache_file, json.dumps(cached, indent=2))
            return interp
        detail = out.stderr.strip().splitlines()[0] if out.stderr.strip() else "uv python find found none"
    raise InterpreterNotFoundError(name, python_requires, detail=detail)


# --- resolution ------------------------------------------------------------------------------------


# --- interpreters of a model's era -----------------------------------------------------------------

MIN_RUNNER_PYTHON = (3, 7)  # the runner's oldest supported Python
CONDA_ROOTS = ("~/miniconda3", "~/anaconda3", "~/miniforge3", "~/mambaforge", "/opt/conda")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


def _candidate_paths(uv: Path | None) -> list[Path]:
    """Every interpreter executable this machine offers: PATH, pyenv, uv-managed, conda."""
    found: list[Path] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or directory.endswith("shims"):
            continue
        with contextlib.suppress(OSError):
            found += sorted(
                p for p in Path(directory).glob("python3*") if re.fullmatch(r"python3(\.\d+)?", p.name)
            )
    pyenv = Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser() / "versions"
    with contextlib.suppress(OSError):
        found += sorted(pyenv.glob("*/bin/python3"))
    if uv is not None:
        with contextlib.suppress(_UvUnusable, OSError):
            out = _run_uv(uv, ["python", "dir"], capture_output=True, env=_tool_env(), timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                found += sorted(Path(out.stdout.strip()).glob("*/bin/python3"))
    conda_roots = [Path(r).expanduser() for r in CONDA_ROOTS]
    if os.environ.get("CONDA_EXE"):
        conda_roots.append(Path(os.environ["CONDA_EXE"]).parent.parent)
    listed = Path("~/.conda/environments.txt").expanduser()
    with contextlib.suppress(OSError):
        conda_roots += [Path(line.strip()) for line in listed.read_text().splitlines() if line.strip()]
    for root in conda_roots:
        found.append(root / "bin" / "python3")
        with contextlib.suppress(OSError):
            found += sorted(root.glob("envs/*/bin/python3"))
    unique: list[Path] = []
    for path in found:
        if path not in unique and path.is_file() and os.access(path, os.X_OK):
            unique.append(path)
    return unique


def discover_interpreters(layout: CacheLayout) -> list[Interpreter]:
    """CPython interpreters the runner supports (>= 3.7), one per version, newest first.

    Probing starts each candidate with ``-I -S``; results are cached by path and modification time.
    """
    cache = _read_json(layout.interpreters_file) or {}
    probed = cache.get("probed") if isinstance(cache.get("probed"), dict) else {}
    assert isinstance(probed, dict)
    by_version: dict[str, Interpreter] = {}
    changed = False
    current = _current_interpreter()
    for path in [current.path, *_candidate_paths(_find_uv())]:
        try:
            real = path.resolve(strict=True)
            stamp = f"{real}:{real.stat().st_mtime_ns}"
        except OSError:
            continue
        hit = probed.get(str(path))
        if isinstance(hit, dict) and hit.get("stamp") == stamp:
            interp = Interpreter(path, hit["version"], hit["implementation"], hit["platform"])
        else:
            try:
                interp = _probe(path)
            except (OSError, ValueError, subprocess.CalledProcessError):
                continue
            probed[str(path)] = {**interp.as_json(), "stamp": stamp}
            changed = True
        if interp.implementation != "cpython" or _version_tuple(interp.version)[:2] < MIN_RUNNER_PYTHON:
            continue
        by_version.setdefault(interp.minor, interp)
    if changed:
        with contextlib.suppress(OSError):
            layout.interpreters_file.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(layout.interpreters_file, json.dumps({**cache, "probed": probed}, indent=2))
    return sorted(by_version.values(), key=lambda i: _version_tuple(i.version), reverse=True)


def era_candidates(
    python_requires: str | None, *, name: str | None, layout: CacheLayout
) -> list[Interpreter]:
    """Interpreters to try for a dated resolution, in order: the host's own (when it fits), then the
    others newest first. Raises InterpreterNotFoundError when none fits ``python_requires``."""
    specifier = _specifier(python_requires, name) if python_requires else SpecifierSet()
    found = [i for i in discover_interpreters(layout) if i.version in specifier]
    current = _current_interpreter()
    host = [i for i in found if i.minor == current.minor]
    ordered = host + [i for i in found if i.minor != current.minor]
    if not ordered:
        raise InterpreterNotFoundError(
            name, python_requires or ">=3.7", detail="no interpreter on this machine"
        )
    return ordered
