"""Spec and lock inputs: what an env is asked for (requirements, Python range, given lock, as-of date),
normalised, and the env key derived from a lock."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol, Union, runtime_checkable
from urllib.parse import unquote, urlsplit

from medigan_iso_runner.protocol import PROTOCOL_VERSION
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from medigan_iso.envs._common import KEY_LENGTH_HEX, _sha256_text
from medigan_iso.envs.asof import NO_DATE, SETUPTOOLS_WITHOUT_PKG_RESOURCES, AsOf, as_of_for
from medigan_iso.errors import DirectReferenceError, ResolutionError
from medigan_iso.untrusted import get_logger

logger = get_logger(__name__)


RUNNER_REQUIREMENTS = ("msgpack>=1.0", "numpy")
# Names that appear in upstream medigan dependency lists but are stdlib/typing names, not distributions
# (`Path`, `Union`), or a Python-2-era backport that breaks Python 3 (`pathlib`).
JUNK_REQUIREMENT_NAMES = frozenset({"path", "union", "pathlib"})
# Resolution never holds these back to a model's as-of date: the runner needs msgpack>=1.0 (2020) even in
# a 2019 env. numpy, the runner's other need, is the model's too and follows the model's era.
RUNNER_UNDATED = ("msgpack",)
_HASH_FRAGMENT = re.compile(r"[#&]sha256=[0-9a-fA-F]{64}\b")


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
    as_of: str | None = None  # ISO date or "latest"; None: no cut-off (requirement lists have no date)


SpecLike = Union[ModelEntryLike, EnvSpec, Sequence[str]]  # a runtime alias: Python 3.9 has no X | Y on types


@dataclass(frozen=True)
class _Spec:
    name: str | None  # model id or EnvSpec.name: who uses the env (recorded in the env's users file)
    requirements: tuple[str, ...]  # canonical, sorted, junk dropped, runner requirements included
    dropped: tuple[str, ...]
    python_requires: str | None
    given_lock: str | None
    lock_origin: str | None  # for messages: where a given lock came from
    as_of: AsOf = NO_DATE
    undated: tuple[str, ...] = ()  # distributions resolution does not hold back to ``as_of``


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


def _normalise_spec(
    spec: SpecLike, *, as_of: str | date | None = None, package_date: date | None = None
) -> _Spec:
    """Validate and canonicalise ``spec``; ``as_of`` overrides its date, ``package_date`` is the newest
    file of its fetched package (a date source after ``execution.dependencies_as_of``)."""
    if isinstance(spec, (str, bytes)):
        raise TypeError(
            f"ensure_env got the string {spec!r}; pass a list of requirement strings, an EnvSpec "
            "or a catalogue ModelEntry"
        )
    catalogue_dir: Path | None = None
    is_entry = False
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
        is_entry = True
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
        if req.url and is_entry:
            _check_direct_reference(name, text, req.url, catalogue_dir)
        kept.setdefault(str(req), str(req))
    if dropped:
        logger.warning(
            "%s: dropping %s from the dependencies (not installable distributions; upstream medigan "
            "lists them by mistake)",
            name or "env",
            ", ".join(repr(d) for d in dropped),
        )
    given, origin = _load_given_lock(lock, catalogue_dir) if lock else (None, None)
    if is_entry or isinstance(spec, EnvSpec):
        try:
            dated = as_of_for(spec, override=as_of, package_date=package_date)
        except ValueError as exc:
            raise ResolutionError(
                name, list(raw), str(exc), remedy="write the date as YYYY-MM-DD, or 'latest'"
            ) from exc
    else:
        dated = as_of_for(None, override=as_of)
    if dated.date is None and is_entry and as_of is None and dated.source == "execution.dependencies_as_of":
        logger.info(
            "%s: the entry asks for 'latest' (execution.dependencies_as_of); resolving against the index as "
            "it is today",
            name,
        )
    elif dated.date is None and is_entry and as_of is None:
        logger.warning(
            "%s: the entry has no date (execution.dependencies_as_of, description.provided_date or "
            "selection.year); resolving against the index as it is today",
            name,
        )
    if dated.date is not None and dated.date < SETUPTOOLS_WITHOUT_PKG_RESOURCES:
        # pip-made envs of that era always had setuptools, and their packages import pkg_resources
        kept.setdefault("setuptools", "setuptools")
    # An exact pin names its version itself (pytorch-lightning==1.4.7, a demo's torch==2.13.0); the cut-off
    # only chooses among the open ones, and resolving an exact pin uploaded after it is not an error.
    undated = set(RUNNER_UNDATED)
    for text in kept:
        req = Requirement(text)
        if any(s.operator in {"==", "==="} and "*" not in s.version for s in req.specifier):
            undated.add(canonicalize_name(req.name))
    return _Spec(
        name=name,
        requirements=tuple(sorted(kept)),
        dropped=tuple(dropped),
        python_requires=python_requires or None,
        given_lock=given,
        lock_origin=origin,
        as_of=dated,
        undated=tuple(sorted(undated)) if dated.date is not None else (),
    )


UNDATED_CUTOFF = "2100-01-01T00:00:00Z"  # "no cut-off" for one package under a global cut-off


def _date_args(spec: _Spec) -> list[str]:
    """uv flags that hold resolution back to the spec's as-of date (none without a date)."""
    if spec.as_of.cutoff is None:
        return []
    args = ["--exclude-newer", spec.as_of.cutoff]
    for name in spec.undated:
        args += ["--exclude-newer-package", f"{name}={UNDATED_CUTOFF}"]
    return args


def _local_references(requirements: Sequence[str]) -> list[str]:
    """Files named by ``name @ file://...`` requirements (a confined build must be able to read them)."""
    paths = []
    for text in requirements:
        url = Requirement(text).url
        if url and url.startswith("file://"):
            paths.append(unquote(urlsplit(url).path))
    return paths


def _check_direct_reference(name: str | None, text: str, url: str, catalogue_dir: Path | None) -> None:
    """A catalogue entry's ``name @ url`` dependency installs whatever the URL names (a local file, a
    repository): allowed only from a local catalogue file and only when pinned by sha256."""
    if catalogue_dir is None:
        raise DirectReferenceError(
            name,
            text,
            "the catalogue is not a local file",
            remedy="ask the catalogue's maintainer for a requirement by name and version (e.g. 'pkg==1.2'),"
            " or copy the entry into a local catalogue file and pin the URL with '#sha256=...'",
        )
    if not _HASH_FRAGMENT.search(url):
        raise DirectReferenceError(
            name,
            text,
            "the URL is not pinned by hash",
            remedy="append '#sha256=<the file's sha256>' to the URL in the local catalogue",
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


def _env_key(
    lock: str, interp: Interpreter, builder: str, *, wheels_only: bool = False, as_of: AsOf | None = None
) -> str:
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
    if as_of is not None and as_of.date is not None:  # likewise: undated envs keep their keys
        fields["as_of"] = as_of.label
    material = json.dumps(fields, sort_keys=True)
    return _sha256_text(material)[:KEY_LENGTH_HEX]


# --- validity, usage, stamps -----------------------------------------------------------------------
