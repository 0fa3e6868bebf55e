"""Interpreter discovery: the host's own, PATH, pyenv's versions folder, uv-managed installs, conda envs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from medigan_iso.envs._common import _read_json, _write_atomic
from medigan_iso.envs.spec import Interpreter
from medigan_iso.envs.tools import _current_interpreter, _find_uv, _probe, _run_uv, _tool_env, _UvUnusable
from medigan_iso.errors import (
    InterpreterNotFoundError,
)
from medigan_iso.paths import CacheLayout

logger = logging.getLogger(__name__)


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


def _find_interpreter(python_requires: str | None, *, name: str | None, layout: CacheLayout) -> Interpreter:
    current = _current_interpreter()
    if python_requires is None:
        return current
    try:
        specifier = SpecifierSet(python_requires)
    except InvalidSpecifier:
        specifier = SpecifierSet(
            f"=={python_requires}.*" if re.fullmatch(r"\d+(\.\d+)*", python_requires) else ""
        )
        if not str(specifier):
            raise InterpreterNotFoundError(
                name, python_requires, detail="not a valid version specifier (e.g. '>=3.8,<3.12')"
            ) from None
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
