"""Spec and lock inputs: what an env is asked for (requirements, Python range, given lock, as-of date),
normalised, and the env key derived from a lock."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from medigan_iso_runner.protocol import PROTOCOL_VERSION
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from medigan_iso.envs._common import KEY_LENGTH_HEX, _sha256_text
from medigan_iso.errors import (
    ResolutionError,
)

logger = logging.getLogger(__name__)


RUNNER_REQUIREMENTS = ("msgpack>=1.0", "numpy")
# Names that appear in upstream medigan dependency lists but are stdlib/typing names, not distributions
# (`Path`, `Union`), or a Python-2-era backport that breaks Python 3 (`pathlib`).
JUNK_REQUIREMENT_NAMES = frozenset({"path", "union", "pathlib"})


@runtime_checkable
class ModelEntryLike(Protocol):
    """What ensure_env reads from a catalogue ModelEntry (duck-typed, so envs does not import catalogue)."""

    @property
    def model_id(self) -> str: ...
    @property
    def dependencies(self) -> Sequence[str]: ...
    @property
    def python_requires(self) -> str | None: ...
    @property
    def requirements_lock(self) -> str | None: ...


@dataclass(frozen=True)
class EnvSpec:
    """An env described directly: requirement strings, an optional Python range, lock and display name."""

    requirements: Sequence[str]
    python_requires: str | None = None
    requirements_lock: str | None = None
    name: str | None = None


SpecLike = ModelEntryLike | EnvSpec | Sequence[str]


@dataclass(frozen=True)
class _Spec:
    name: str | None  # model id or EnvSpec.name: who uses the env (recorded in the env's users file)
    requirements: tuple[str, ...]  # canonical, sorted, junk dropped, runner requirements included
    dropped: tuple[str, ...]
    python_requires: str | None
    given_lock: str | None
    lock_origin: str | None  # for messages: where a given lock came from


@dataclass(frozen=True)
class Interpreter:
    """A Python interpreter an env is built on."""

    path: Path
    version: str  # "3.11.7"
    implementation: str  # "cpython"
    platform: str  # sysconfig platform + libc, e.g. "linux-x86_64-glibc2.36"

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    @property
    def cache_tag(self) -> str:
        return f"{self.implementation}-{self.minor.replace('.', '')}"

    def as_json(self) -> dict[str, str]:
        return {
            "path": str(self.path),
            "version": self.version,
            "implementation": self.implementation,
            "platform": self.platform,
        }


def _normalise_spec(spec: SpecLike) -> _Spec:
    if isinstance(spec, str | bytes):
        raise TypeError(
            f"ensure_env got the string {spec!r}; pass a list of requirement strings, an EnvSpec "
            "or a catalogue ModelEntry"
        )
    catalogue_dir: Path | None = None
    if isinstance(spec, EnvSpec):
        name, raw, python_requires, lock = (
            spec.name,
            spec.requirements,
            spec.python_requires,
            spec.requirements_lock,
        )
        if isinstance(raw, str):
            raise TypeError("EnvSpec.requirements must be a sequence of requirement strings, not one string")
    elif isinstance(spec, ModelEntryLike):
        name, raw, python_requires, lock = (
            spec.model_id,
            spec.dependencies,
            spec.python_requires,
            spec.requirements_lock,
        )
        catalogue_dir = getattr(spec, "catalogue_dir", None)
    else:
        name, raw, python_requires, lock = None, spec, None, None
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for text in list(raw) + list(RUNNER_REQUIREMENTS):
        if not isinstance(text, str):
            raise TypeError(f"requirement {text!r} is not a string")
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise ResolutionError(
                name,
                list(raw),
                f"{text!r} is not a valid PEP 508 requirement ({exc})",
                remedy="fix the requirement string (e.g. 'numpy>=1.24,<2')",
            ) from exc
        if canonicalize_name(req.name) in JUNK_REQUIREMENT_NAMES:
            dropped.append(text)
            continue
        kept.setdefault(str(req), str(req))
    if dropped:
        logger.warning(
            "%s: dropping %s from the dependencies (not installable distributions; upstream medigan "
            "lists them by mistake)",
            name or "env",
            ", ".join(repr(d) for d in dropped),
        )
    given, origin = _load_given_lock(lock, catalogue_dir) if lock else (None, None)
    return _Spec(
        name=name,
        requirements=tuple(sorted(kept)),
        dropped=tuple(dropped),
        python_requires=python_requires or None,
        given_lock=given,
        lock_origin=origin,
    )


def _load_given_lock(lock: str, catalogue_dir: Path | None) -> tuple[str, str]:
    """A requirements_lock is the lock text itself, or a path (relative to the catalogue's folder)."""
    if "\n" in lock or "--hash" in lock:
        return lock, "requirements_lock text"
    path = Path(lock).expanduser()
    if not path.is_absolute() and catalogue_dir is not None:
        path = catalogue_dir / path
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except OSError as exc:
        raise ResolutionError(
            None,
            [],
            f"cannot read requirements_lock {path}: {exc.strerror or exc}",
            remedy="point requirements_lock at an existing file or inline the lock text",
        ) from exc


def _locked_names(lock: str) -> set[str]:
    names: set[str] = set()
    for line in lock.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-", "\\")):
            continue
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if match:
            names.add(canonicalize_name(match.group(1)))
    return names


# --- uv and interpreters ---------------------------------------------------------------------------


def _env_key(lock: str, interp: Interpreter, builder: str, *, wheels_only: bool = False) -> str:
    canonical = "\n".join(line.rstrip() for line in lock.strip().splitlines())
    fields: dict[str, Any] = {
        "lock": canonical,
        "python": [interp.implementation, interp.version],
        "platform": interp.platform,
        "protocol": PROTOCOL_VERSION,
        "builder": builder,
    }
    if wheels_only:  # only then: keys of envs built before strict mode existed stay the same
        fields["wheels_only"] = True
    material = json.dumps(fields, sort_keys=True)
    return _sha256_text(material)[:KEY_LENGTH_HEX]


# --- validity, usage, stamps -----------------------------------------------------------------------
