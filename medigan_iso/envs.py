"""Model environments: one virtualenv per resolved dependency set, built atomically and reused.

This module owns every call to uv, pip and virtualenv in medigan_iso (no other module runs them) and the
``envs/`` part of the cache layout. It never imports model code and never starts a runner.

How an env comes to be (see DESIGN.md section 5 and README "Model environments"):

1. *Requirements*: a catalogue entry's ``dependencies`` (known junk names such as ``Path``, ``Union`` and
   ``pathlib`` are dropped with a warning) plus the runner's own needs (:data:`RUNNER_REQUIREMENTS`).
2. *Interpreter*: the host's own interpreter, or, when ``python_requires`` excludes it, the one uv's
   discovery (``uv python find``) returns.
3. *Lock*: ``uv pip compile --generate-hashes`` for that interpreter, cached under ``envs/.resolved`` by
   (requirements, interpreter, index settings), so a later call does not resolve again; an entry's
   ``requirements_lock`` is used as given.
4. *Key*: sha256 of (lock, interpreter version, platform, runner protocol version, builder). Equal locks
   share one env.
5. *Build*: under a per-key file lock, in ``envs/.tmp-<key>-*`` (same filesystem as the uv cache, so uv
   hardlinks files), ``uv venv --relocatable`` + ``uv pip install --require-hashes``; bytecode is compiled
   once into uv's unpacked-wheel cache and hardlinked into each env; the runner package is copied in; the
   stamp is written last; the directory is renamed into place. A killed build leaves only a temp dir that
   the next build of that key (or :func:`prune_envs`) removes.

When uv is missing or cannot start, virtualenv + pip build the same lock into an env with the same stamp
(``builder="virtualenv"``), after one warning about the cost.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit, urlunsplit

import filelock
from medigan_iso_runner.protocol import PROTOCOL_VERSION
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from medigan_iso.errors import (
    EnvBuildError,
    EnvNotBuiltError,
    InterpreterNotFoundError,
    ResolutionError,
)
from medigan_iso.paths import CacheLayout, cache_layout

__all__ = [
    "BUILDERS",
    "JUNK_REQUIREMENT_NAMES",
    "RUNNER_REQUIREMENTS",
    "EnvInfo",
    "EnvSpec",
    "IndexSettings",
    "Interpreter",
    "ModelEntryLike",
    "ModelEnv",
    "PruneReport",
    "Resolution",
    "SpecLike",
    "diff_stamps",
    "ensure_env",
    "index_settings",
    "list_envs",
    "prune_envs",
    "remove_env",
    "resolve",
    "runner_sha256",
    "uv_version",
]

logger = logging.getLogger(__name__)

RUNNER_REQUIREMENTS = ("msgpack>=1.0", "numpy")
# Names that appear in upstream medigan dependency lists but are stdlib/typing names, not distributions
# (`Path`, `Union`), or a Python-2-era backport that breaks Python 3 (`pathlib`).
JUNK_REQUIREMENT_NAMES = frozenset({"path", "union", "pathlib"})
BUILDERS = ("uv", "virtualenv")
STAMP_FORMAT = 1
KEY_LENGTH_HEX = 16  # 64 bits of sha256: the env directory name
STAMP_NAME = "medigan-iso-stamp.json"
LOCK_NAME = "medigan-iso-lock.txt"
USERS_NAME = "medigan-iso-models.json"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
LOG_TAIL_LINES = 30
UV_BIN_ENV = "MEDIGAN_ISO_UV"  # seam: path to the uv binary (a missing path forces the fallback)
OFFLINE_ENV = "MEDIGAN_ISO_OFFLINE"
BYTECODE_MARKER_PREFIX = ".medigan-iso-bytecode-"
# pip's configuration files, lowest precedence first: global, then user (skipped when $PIP_CONFIG_FILE
# names an existing file), then the site file of the host's environment; $PIP_CONFIG_FILE wins over all.
PIP_GLOBAL_CONFIG_FILES = (Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf"))
PIP_USER_CONFIG_FILES = (Path("~/.pip/pip.conf"), Path("~/.config/pip/pip.conf"))
_NETWORK_ERROR_MARKERS = (
    "failed to fetch",
    "error sending request",
    "dns error",
    "connection refused",
    "network is unreachable",
    "tcp connect error",
    "timed out",
    "could not connect",
    "failed to download",
)

ProgressFn = Callable[[str], None]


# --- specs -----------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class ModelEnv:
    """A ready env: run ``python -I -m medigan_iso_runner``."""

    key: str
    path: Path
    python: Path
    lock_path: Path
    log_path: Path
    python_version: str
    builder: str  # "uv" | "virtualenv"


@dataclass(frozen=True)
class Resolution:
    """A lock for a spec on an interpreter; ``from_cache`` says no resolver ran."""

    lock: str
    interpreter: Interpreter
    requirements: tuple[str, ...]
    dropped: tuple[str, ...]
    origin: str  # "resolved" | "given"
    from_cache: bool


@dataclass(frozen=True)
class EnvInfo:
    """One env on disk, for listing: own size counts only blocks no other path shares."""

    key: str
    path: Path
    valid: bool
    own_bytes: int
    last_use: float | None  # epoch seconds
    models: tuple[str, ...]
    builder: str | None
    python_version: str | None


@dataclass(frozen=True)
class PruneReport:
    removed: tuple[Path, ...]
    freed_bytes: int


# --- index settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexSettings:
    """Where packages come from, as uv flags. Built by :func:`index_settings`."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    constraints: tuple[Path, ...] = ()
    no_index: bool = False
    offline: bool = False
    index_strategy: str | None = None
    cert: str | None = None
    timeout_s: str | None = None
    sources: tuple[str, ...] = ()  # which pip settings were translated, for logs
    wheels_only: bool = False  # strict supply chain: no sdist build scripts run at install time

    def uv_args(self, *, constraints: bool = True) -> list[str]:
        args: list[str] = []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for link in self.find_links:
            args += ["--find-links", link]
        if self.index_strategy:
            args += ["--index-strategy", self.index_strategy]
        if self.no_index:
            args.append("--no-index")
        if constraints:
            for path in self.constraints:
                args += ["--constraint", str(path)]
        if self.offline:
            args.append("--offline")
        if self.wheels_only:
            args.append("--no-build")
        return args

    def pip_args(self) -> list[str]:
        # pip reads its own configuration; only per-call settings and offline mode are added.
        args: list[str] = []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for link in self.find_links:
            args += ["--find-links", link]
        if self.offline or self.no_index:
            args.append("--no-index")
        if self.wheels_only:
            args += ["--only-binary", ":all:"]
        return args

    def uv_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.cert and "SSL_CERT_FILE" not in os.environ:
            env["SSL_CERT_FILE"] = self.cert
        if self.timeout_s and "UV_HTTP_TIMEOUT" not in os.environ:
            env["UV_HTTP_TIMEOUT"] = self.timeout_s
        return env

    def fingerprint(self) -> dict[str, Any]:
        """What resolution depends on (constraint files by content; uv's own UV_* index variables)."""
        return {
            "index_url": self.index_url,
            "extra_index_urls": list(self.extra_index_urls),
            "find_links": list(self.find_links),
            "no_index": self.no_index,
            "index_strategy": self.index_strategy,
            "constraints": [_file_sha256_or_missing(p) for p in self.constraints],
            "uv_env": {k: v for k, v in sorted(os.environ.items()) if k in _UV_RESOLUTION_VARIABLES},
        } | ({"wheels_only": True} if self.wheels_only else {})

    def describe(self) -> str:
        return " ".join(shlex.quote(_redact(a)) for a in self.uv_args()) or "(uv defaults)"


_UV_RESOLUTION_VARIABLES = frozenset(
    {
        "UV_INDEX",
        "UV_DEFAULT_INDEX",
        "UV_INDEX_URL",
        "UV_EXTRA_INDEX_URL",
        "UV_FIND_LINKS",
        "UV_NO_INDEX",
        "UV_INDEX_STRATEGY",
        "UV_CONSTRAINT",
        "UV_OVERRIDE",
        "UV_PRERELEASE",
        "UV_RESOLUTION",
        "UV_EXCLUDE_NEWER",
        "UV_TORCH_BACKEND",
    }
)


def _read_pip_config(files: Iterable[Path]) -> tuple[dict[str, str], list[str]]:
    """Merge pip's ``[global]`` then ``[install]`` sections across ``files`` (later files win)."""
    merged: dict[str, str] = {}
    sources: list[str] = []
    for file in files:
        path = file.expanduser()
        if not path.is_file():
            continue
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError) as exc:
            logger.warning("ignoring unreadable pip configuration %s: %s", path, exc)
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                for option, value in parser.items(section):
                    merged[option.replace("_", "-")] = value
                    sources.append(f"{path}[{section}]{option}")
    return merged, sources


def index_settings(
    *,
    index_url: str | None = None,
    find_links: Sequence[str | os.PathLike[str]] = (),
    offline: bool | None = None,
    environ: Mapping[str, str] | None = None,
    pip_config_files: Sequence[Path] | None = None,
) -> IndexSettings:
    """Translate the user's pip settings (and per-call overrides) into uv flags.

    Precedence per setting, highest first: the per-call argument; uv's own variable (``UV_INDEX_URL``,
    ``UV_DEFAULT_INDEX``, ``UV_EXTRA_INDEX_URL``, ``UV_INDEX``, ``UV_FIND_LINKS``, ``UV_CONSTRAINT``,
    ``UV_NO_INDEX``: when set, we pass nothing and uv reads it); ``PIP_*`` variables; pip.conf
    ``[global]``/``[install]`` from pip's files in pip's order (``$PIP_CONFIG_FILE`` last). Per-call
    find-links are added to the translated ones. ``environ`` and ``pip_config_files`` are seams for tests.
    """
    env = os.environ if environ is None else environ
    if pip_config_files is None:
        env_file = Path(env["PIP_CONFIG_FILE"]).expanduser() if env.get("PIP_CONFIG_FILE") else None
        files = list(PIP_GLOBAL_CONFIG_FILES)
        if env_file is None or not env_file.is_file():
            files += PIP_USER_CONFIG_FILES
        files.append(Path(sys.prefix) / "pip.conf")
        if env_file is not None:
            files.append(env_file)
    else:
        files = list(pip_config_files)
    if env.get("PIP_CONFIG_FILE") == os.devnull:
        files = []  # pip's documented way to read no configuration file
    config, sources = _read_pip_config(files)

    def pip_value(name: str) -> str | None:
        var = "PIP_" + name.upper().replace("-", "_")
        if env.get(var):
            sources.append(var)
            return env[var]
        return config.get(name)

    def uv_has(*names: str) -> bool:
        return any(env.get(n) for n in names)

    resolved_index = index_url
    if resolved_index is None and not uv_has("UV_INDEX_URL", "UV_DEFAULT_INDEX"):
        resolved_index = pip_value("index-url")
    extra: tuple[str, ...] = ()
    if not uv_has("UV_EXTRA_INDEX_URL", "UV_INDEX"):
        extra = tuple((pip_value("extra-index-url") or "").split())
    links = tuple(os.fspath(f) for f in find_links)
    if not uv_has("UV_FIND_LINKS"):
        links += tuple(x for x in (pip_value("find-links") or "").split() if x not in links)
    constraints: tuple[Path, ...] = ()
    if not uv_has("UV_CONSTRAINT"):
        constraints = tuple(Path(c).expanduser() for c in (pip_value("constraint") or "").split())
    no_index = False
    if not uv_has("UV_NO_INDEX"):
        no_index = (pip_value("no-index") or "").strip().lower() in {"1", "true", "yes", "on"}
    if offline is None:
        offline = env.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
    # pip picks the best version across all its indexes; uv by default stops at the first index that has
    # the package (its defence against dependency confusion). Translated pip extra indexes keep pip's
    # semantics, or a mirror holding only some wheels of a package hides the rest (seen here: msgpack
    # cp311-only on a local extra index made every cp312 env unresolvable).
    strategy = "unsafe-best-match" if extra and not uv_has("UV_INDEX_STRATEGY") else None
    return IndexSettings(
        index_url=resolved_index or None,
        extra_index_urls=extra,
        index_strategy=strategy,
        find_links=links,
        constraints=constraints,
        no_index=no_index,
        offline=offline,
        cert=pip_value("cert"),
        timeout_s=pip_value("timeout") or env.get("PIP_DEFAULT_TIMEOUT"),
        sources=tuple(dict.fromkeys(sources)),
    )


def _redact(text: str) -> str:
    """Hide passwords in URLs (index URLs may carry credentials)."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if parts.password is None:
        return text
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _file_sha256_or_missing(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return f"missing:{path}"


# --- small helpers ---------------------------------------------------------------------------------


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The failing command's output from its first error line on (else its last lines), at most ``lines``.

    uv prints the cause first and then long lists (every expected hash of a wheel), so a plain tail would
    often show only the list.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    all_lines = text.rstrip().splitlines()
    starts = [i for i, line in enumerate(all_lines) if re.match(r"\[\+[0-9.]+s\] \$ ", line)]
    section = all_lines[starts[-1] + 1 :] if starts else all_lines
    first_error = next((i for i, line in enumerate(section) if re.search(r"error|×", line, re.I)), None)
    if first_error is None:
        return "\n".join(section[-lines:])
    excerpt = section[first_error : first_error + lines]
    if len(section) > first_error + lines:
        excerpt.append(f"... ({len(section) - first_error - lines} more lines in the log)")
    return "\n".join(excerpt)


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _own_bytes(path: Path) -> int:
    """Blocks of files under ``path`` that no other path shares (hardlinks into the uv cache are free)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))  # noqa: PTH118 (os.walk strings, hot loop)
                if st.st_nlink == 1:
                    total += st.st_blocks * 512
    return total


# --- the runner package ----------------------------------------------------------------------------


def _runner_dir() -> Path:
    """The installed medigan_iso_runner package directory, found without importing it."""
    spec = importlib.util.find_spec("medigan_iso_runner")
    if spec is None or not spec.submodule_search_locations:
        raise EnvBuildError(
            None,
            "the medigan_iso_runner package is not installed next to medigan_iso",
            remedy="reinstall medigan-iso (`pip install --force-reinstall medigan-iso`)",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _runner_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
    )


def runner_sha256(root: Path | None = None) -> str:
    """Content hash of the runner package (sorted relative POSIX paths and bytes; no bytecode)."""
    root = _runner_dir() if root is None else root
    digest = hashlib.sha256()
    for file in _runner_files(root):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()


def _copy_runner(site_packages: Path, *, dest_name: str = "medigan_iso_runner") -> Path:
    source = _runner_dir()
    dest = site_packages / dest_name
    for file in _runner_files(source):
        target = dest / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    return dest


# --- spec normalisation ----------------------------------------------------------------------------


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
    out = subprocess.run([str(path), "-I", "-c", _PROBE], capture_output=True, text=True, check=True)
    impl, version, plat = json.loads(out.stdout)
    return Interpreter(path=path, version=version, implementation=impl, platform=plat)


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
    cache_file = layout.envs / ".interpreters.json"
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


def _looks_like_network_error(text: str) -> bool:
    low = text.lower()
    return any(marker in low for marker in _NETWORK_ERROR_MARKERS)


def _clean_uv_message(stderr: str) -> str:
    lines = [
        ln.rstrip()
        for ln in stderr.splitlines()
        if ln.strip() and not ln.startswith(("Resolved", "warning:"))
    ]
    return "\n".join(lines) or stderr.strip()


def _compile(
    uv: Path,
    requirements: Sequence[str],
    interp: Interpreter,
    settings: IndexSettings,
    layout: CacheLayout,
) -> subprocess.CompletedProcess[str]:
    args = [
        "pip",
        "compile",
        "-",
        "--generate-hashes",
        "--no-header",
        "--no-annotate",
        "--quiet",
        "--python",
        str(interp.path),
        "--cache-dir",
        str(layout.uv_cache),
        *settings.uv_args(),
    ]
    return _run_uv(
        uv,
        args,
        input="\n".join(requirements) + "\n",
        capture_output=True,
        env=_tool_env(settings),
        cwd=layout.envs,
    )


def _resolution_error(
    spec: _Spec,
    out: subprocess.CompletedProcess[str],
    offline_retry: Callable[[], bool],
    settings: IndexSettings,
) -> ResolutionError:
    explanation = _clean_uv_message(out.stderr)
    missing = re.search(r"Because (\S+?) was not found in the package registry", out.stderr)
    if missing:
        requirement = next(
            (
                r
                for r in spec.requirements
                if canonicalize_name(Requirement(r).name) == canonicalize_name(missing[1])
            ),
            missing[1],
        )
        who = f"model {spec.name}" if spec.name else "this env"
        return ResolutionError(
            spec.name,
            spec.requirements,
            f"{who} requires {requirement!r}, which no configured index or find-links location has\n"
            + explanation,
            offline_may_help=False,
            remedy=f"check the name {requirement!r}; indexes searched: {settings.describe()}",
        )
    if not settings.offline and _looks_like_network_error(out.stderr):
        works = offline_retry()
        remedy = (
            "everything needed is in the uv cache: retry offline (offline=True, MEDIGAN_ISO_OFFLINE=1, "
            "or `medigan-iso env build --offline`)"
            if works
            else "the uv cache does not hold everything either, so an offline retry would fail too; check "
            "the network and the index settings (PIP_INDEX_URL, UV_INDEX_URL, pip.conf)"
        )
        return ResolutionError(
            spec.name,
            spec.requirements,
            "network failure while resolving\n" + explanation,
            offline_may_help=works,
            remedy=remedy,
        )
    if settings.offline and "offline" in out.stderr.lower():
        return ResolutionError(
            spec.name,
            spec.requirements,
            explanation,
            offline_may_help=False,
            remedy="offline mode is on and the uv cache lacks something; build once online "
            "(offline=False, unset MEDIGAN_ISO_OFFLINE)",
        )
    return ResolutionError(
        spec.name,
        spec.requirements,
        explanation,
        remedy="relax or change the conflicting requirements named above",
    )


def _resolve_with_uv(
    uv: Path, spec: _Spec, interp: Interpreter, settings: IndexSettings, layout: CacheLayout
) -> str:
    out = _compile(uv, spec.requirements, interp, settings, layout)
    if out.returncode == 0:
        return out.stdout

    def offline_retry() -> bool:
        retry = _compile(uv, spec.requirements, interp, dataclasses.replace(settings, offline=True), layout)
        return retry.returncode == 0

    raise _resolution_error(spec, out, offline_retry, settings)


def _resolve_with_pip(spec: _Spec, interp: Interpreter, settings: IndexSettings, layout: CacheLayout) -> str:
    """Resolve without uv: ``pip install --dry-run --report`` in a scratch virtualenv, then pin hashes."""
    with tempfile.TemporaryDirectory(dir=layout.envs, prefix=f"{TMP_PREFIX}resolve-") as scratch:
        venv = Path(scratch) / "venv"
        made = subprocess.run(
            [
                sys.executable,
                "-m",
                "virtualenv",
                "--quiet",
                "--no-setuptools",
                "-p",
                str(interp.path),
                str(venv),
            ],
            capture_output=True,
            text=True,
            check=False,
            env=_tool_env(),
        )
        if made.returncode != 0:
            raise EnvBuildError(
                spec.name,
                "virtualenv could not create a scratch env",
                returncode=made.returncode,
                log_tail=made.stderr[-2000:],
            )
        report = Path(scratch) / "report.json"
        reqs = Path(scratch) / "requirements.in"
        reqs.write_text("\n".join(spec.requirements) + "\n", encoding="utf-8")
        out = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--disable-pip-version-check",
                "--report",
                str(report),
                "-r",
                str(reqs),
                *settings.pip_args(),
            ],
            capture_output=True,
            text=True,
            check=False,
            env=_tool_env(),
        )
        if out.returncode != 0:
            raise ResolutionError(
                spec.name,
                spec.requirements,
                out.stderr.strip() or out.stdout.strip(),
                remedy="relax or change the conflicting requirements named above",
            )
        data = json.loads(report.read_text(encoding="utf-8"))
    lines = []
    for item in sorted(data.get("install", []), key=lambda i: canonicalize_name(i["metadata"]["name"])):
        info = item.get("download_info", {})
        hashes = info.get("archive_info", {}).get("hashes", {})
        digest = hashes.get("sha256")
        if digest is None and info.get("url", "").startswith("file://"):
            digest = hashlib.sha256(Path(unquote(urlsplit(info["url"]).path)).read_bytes()).hexdigest()
        if digest is None:
            raise ResolutionError(
                spec.name,
                spec.requirements,
                f"pip reported no sha256 for {item['metadata']['name']}",
                remedy="install uv (`pip install uv`), which locks with hashes",
            )
        name = canonicalize_name(item["metadata"]["name"])
        lines.append(f"{name}=={item['metadata']['version']} \\\n    --hash=sha256:{digest}")
    return "\n".join(lines) + "\n"


def _resolution_cache(
    spec: _Spec, interp: Interpreter, settings: IndexSettings, uv: Path | None, layout: CacheLayout
) -> Path:
    """Where the lock for (requirements, interpreter, index settings, resolver) is cached."""
    rkey = _sha256_text(
        json.dumps(
            {
                "requirements": spec.requirements,
                "interpreter": [interp.implementation, interp.version, interp.platform],
                "index": settings.fingerprint(),
                "resolver": "uv" if uv else "pip",
            },
            sort_keys=True,
        )
    )[: KEY_LENGTH_HEX * 2]
    return layout.envs / ".resolved" / f"{rkey}.txt"


def _resolve(
    spec: _Spec,
    *,
    layout: CacheLayout,
    settings: IndexSettings,
    uv: Path | None,
    refresh: bool,
) -> Resolution:
    interp = _find_interpreter(spec.python_requires, name=spec.name, layout=layout)
    if spec.given_lock is not None:
        missing = {canonicalize_name(Requirement(r).name) for r in RUNNER_REQUIREMENTS} - _locked_names(
            spec.given_lock
        )
        if missing:
            raise ResolutionError(
                spec.name,
                spec.requirements,
                f"the requirements_lock ({spec.lock_origin}) lacks the runner's {', '.join(sorted(missing))}",
                remedy="add them to the lock (`uv pip compile --generate-hashes` with msgpack and numpy)",
            )
        return Resolution(spec.given_lock, interp, spec.requirements, spec.dropped, "given", from_cache=False)
    cache = _resolution_cache(spec, interp, settings, uv, layout)
    rkey = cache.stem
    if not refresh and cache.is_file():
        return Resolution(
            cache.read_text(encoding="utf-8"), interp, spec.requirements, spec.dropped, "resolved", True
        )
    cache.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(layout.locks / f"resolve-{rkey}.lock")):
        if not refresh and cache.is_file():
            return Resolution(
                cache.read_text(encoding="utf-8"), interp, spec.requirements, spec.dropped, "resolved", True
            )
        started = time.monotonic()
        lock = (
            _resolve_with_uv(uv, spec, interp, settings, layout)
            if uv is not None
            else _resolve_with_pip(spec, interp, settings, layout)
        )
        logger.info("resolved %s in %.1f s", spec.name or "env", time.monotonic() - started)
        _write_atomic(cache, lock)
    return Resolution(lock, interp, spec.requirements, spec.dropped, "resolved", from_cache=False)


def resolve(
    spec: SpecLike,
    *,
    home: str | os.PathLike[str] | None = None,
    index_url: str | None = None,
    find_links: Sequence[str | os.PathLike[str]] = (),
    offline: bool | None = None,
    refresh: bool = False,
) -> Resolution:
    """The lock ``ensure_env`` would build for ``spec`` (cached; ``refresh=True`` resolves again)."""
    layout = cache_layout(home).ensure()
    settings = index_settings(index_url=index_url, find_links=find_links, offline=offline)
    try:
        return _resolve(
            _normalise_spec(spec), layout=layout, settings=settings, uv=_find_uv(), refresh=refresh
        )
    except _UvUnusable:
        return _resolve(_normalise_spec(spec), layout=layout, settings=settings, uv=None, refresh=refresh)


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


def _site_packages(env_dir: Path, interp_minor: str) -> Path:
    return env_dir / "lib" / f"python{interp_minor}" / "site-packages"


def _valid_stamp(env_dir: Path, key: str) -> dict[str, Any] | None:
    """The env's stamp if the dir is a complete env for ``key`` (stamp and python link check), else None."""
    stamp = _read_json(env_dir / STAMP_NAME)
    if stamp is None or stamp.get("format") != STAMP_FORMAT or stamp.get("key") != key:
        return None
    python = env_dir / "bin" / "python"
    try:
        target = python.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not os.access(target, os.X_OK) or not (env_dir / "pyvenv.cfg").is_file():
        return None
    if not (env_dir / LOCK_NAME).is_file():
        return None
    return stamp


def _record_use(env_dir: Path, key: str, name: str | None, layout: CacheLayout) -> None:
    path = env_dir / USERS_NAME
    with filelock.FileLock(str(layout.locks / f"env-{key}.users.lock")):
        data = _read_json(path) or {}
        users = data.get("models") if isinstance(data.get("models"), dict) else {}
        assert isinstance(users, dict)
        now = time.time()
        if name:
            users[name] = now
        _write_atomic(path, json.dumps({"models": users, "last_use": now}, indent=2, sort_keys=True))


def diff_stamps(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable reasons two stamps differ (why a spec now maps to a different env)."""
    changes: list[str] = []
    old_reqs, new_reqs = set(old.get("requirements", [])), set(new.get("requirements", []))
    if old_reqs != new_reqs:
        added, removed = sorted(new_reqs - old_reqs), sorted(old_reqs - new_reqs)
        parts = ([f"added {', '.join(added)}"] if added else []) + (
            [f"removed {', '.join(removed)}"] if removed else []
        )
        changes.append("requirements changed: " + "; ".join(parts))
    if old.get("lock_sha256") != new.get("lock_sha256") and old_reqs == new_reqs:
        changes.append(
            "the lock changed (same requirements, new resolution or a different requirements_lock)"
        )
    old_py, new_py = old.get("interpreter", {}), new.get("interpreter", {})
    if old_py.get("version") != new_py.get("version"):
        changes.append(f"interpreter {old_py.get('version')} -> {new_py.get('version')}")
    if old_py.get("platform") != new_py.get("platform"):
        changes.append(f"platform {old_py.get('platform')} -> {new_py.get('platform')}")
    if old.get("protocol_version") != new.get("protocol_version"):
        changes.append(f"runner protocol {old.get('protocol_version')} -> {new.get('protocol_version')}")
    if old.get("builder") != new.get("builder"):
        changes.append(f"builder {old.get('builder')} -> {new.get('builder')}")
    return changes


def _names_file(layout: CacheLayout, name: str) -> Path:
    return layout.envs / ".names" / f"{_sha256_text(name)[:KEY_LENGTH_HEX]}.json"


# --- building --------------------------------------------------------------------------------------


def _link_shared_bytecode(
    env_dir: Path, site_packages: Path, interp: Interpreter, layout: CacheLayout, log: Any
) -> set[str]:
    """Compile each wheel once inside uv's cache and hardlink the .pyc files into the env.

    uv hardlinks every file of an unpacked wheel from ``<uv cache>/archive-v0/<id>/`` into the env, so a
    ``.pyc`` written next to those sources is valid for every env linking them (same inode, same mtime;
    CPython rewrites ``co_filename`` on load). ``uv pip install --compile-bytecode`` instead writes fresh
    .pyc files into every env: 8.7 s and ~150 MB per torch env on this project's machines. If uv's cache
    layout differs from what this expects, nothing matches and the env is compiled in place instead.
    """
    archives = layout.uv_cache / "archive-v0"
    covered: set[str] = set()  # top-level site-packages entries that received shared .pyc files
    if not archives.is_dir():
        return covered
    wanted: dict[tuple[int, int], Path] = {}
    for dist_info in site_packages.glob("*.dist-info"):
        with contextlib.suppress(OSError):
            st = (dist_info / "METADATA").stat()
            if st.st_nlink > 1:
                wanted[(st.st_dev, st.st_ino)] = dist_info
    matched: list[Path] = []
    if wanted:
        for archive in archives.iterdir():
            for dist_info in archive.glob("*.dist-info"):
                with contextlib.suppress(OSError):
                    st = (dist_info / "METADATA").stat()
                    if (st.st_dev, st.st_ino) in wanted:
                        matched.append(archive)
    marker = BYTECODE_MARKER_PREFIX + interp.cache_tag
    cold = [a for a in matched if not (a / marker).exists()]
    if cold:
        log.write(f"compiling bytecode into the uv cache for {len(cold)} wheel(s)\n")
        log.flush()
        subprocess.run(
            [str(env_dir / "bin" / "python"), "-I", "-m", "compileall", "-q", "-j", "0", *map(str, cold)],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
        for archive in list(cold):
            try:
                (archive / marker).touch()
            except OSError:  # a read-only uv cache: these wheels get compiled inside the env instead
                cold.remove(archive)
                matched.remove(archive)
    suffix = f".{interp.cache_tag}.pyc"
    for archive in matched:
        covered.update(entry.name for entry in archive.iterdir() if not entry.name.startswith("."))
    # uv links every file of an archive, .pyc included, so archives compiled before this install are
    # already complete in the env; only the ones compiled just now need their .pyc linked by hand.
    for archive in cold:
        base = len(str(archive)) + 1
        for root, dirs, files in os.walk(archive):
            if not root.endswith("__pycache__"):
                dirs[:] = [d for d in dirs if d == "__pycache__" or not d.endswith(".dist-info")]
                continue
            target_dir = site_packages / root[base:]
            if not target_dir.parent.is_dir():
                continue
            target_dir.mkdir(exist_ok=True)
            for name in files:
                if name.endswith(suffix):
                    with contextlib.suppress(FileExistsError, OSError):
                        os.link(os.path.join(root, name), target_dir / name)  # noqa: PTH118
    return covered


def _build(
    *,
    spec: _Spec,
    resolution: Resolution,
    key: str,
    builder: str,
    uv: Path | None,
    settings: IndexSettings,
    layout: CacheLayout,
    env_dir: Path,
    log_path: Path,
    reason: str,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    """Build into a temp dir, stamp it, rename it to ``env_dir``. Caller holds the key lock."""
    interp = resolution.interpreter
    say = progress or (lambda _msg: None)
    tmp = Path(tempfile.mkdtemp(dir=layout.envs, prefix=f"{TMP_PREFIX}{key}-{os.getpid()}-"))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; runners in a sandbox may run as another user
    started = time.monotonic()
    with log_path.open("a", encoding="utf-8") as log:
        log.write(
            f"=== medigan-iso env build {key} started {_now_iso()} pid {os.getpid()} builder {builder} "
            f"python {interp.version} ({interp.path}) reason: {reason}\n"
        )
        log.flush()

        def run(args: Sequence[str], what: str, *, fatal: bool = True) -> bool:
            log.write(
                f"[+{time.monotonic() - started:.2f}s] $ "
                + " ".join(shlex.quote(_redact(a)) for a in args)
                + "\n"
            )
            log.flush()
            try:
                done = subprocess.run(
                    list(args),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                    env=_tool_env(settings),
                    cwd=layout.envs,
                )
            except OSError as exc:
                if builder == "uv":
                    raise _UvUnusable(f"{args[0]}: {exc}") from exc
                raise EnvBuildError(spec.name, f"{what}: {exc}", log_path=log_path) from exc
            if done.returncode != 0 and not fatal:
                # compileall exits 1 when any file fails to compile; wheels ship such files on purpose
                # (torch's py312_intrinsics.py on 3.11), and pip and uv ignore them too.
                log.write(f"(ignored: {what}, exit code {done.returncode})\n")
                return False
            if done.returncode != 0:
                log.flush()
                raise EnvBuildError(
                    spec.name,
                    what,
                    returncode=done.returncode,
                    log_path=log_path,
                    log_tail=_tail(log_path),
                    remedy=f"read the log above; rebuild with `medigan-iso env build {spec.name or '...'} "
                    "--rebuild` once fixed",
                )
            return True

        try:
            lock_file = tmp.parent / f"{tmp.name}.lock.txt"  # moved into the env once it exists
            lock_file.write_text(resolution.lock, encoding="utf-8")
            python = tmp / "bin" / "python"
            if builder == "uv":
                assert uv is not None
                uv_version = _run_uv(uv, ["--version"], capture_output=True).stdout.strip()
                say(f"creating env {key} (Python {interp.version}, {uv_version})")
                run(
                    [
                        str(uv),
                        "venv",
                        "--quiet",
                        "--relocatable",
                        "--no-project",
                        "--allow-existing",
                        "--python",
                        str(interp.path),
                        "--cache-dir",
                        str(layout.uv_cache),
                        str(tmp),
                    ],
                    "uv venv failed",
                )
                say(f"installing {len(_locked_names(resolution.lock))} locked packages")
                install = [
                    str(uv),
                    "pip",
                    "install",
                    "--python",
                    str(python),
                    "--require-hashes",
                    "-r",
                    str(lock_file),
                    "--link-mode",
                    "hardlink",
                    "--cache-dir",
                    str(layout.uv_cache),
                    *settings.uv_args(constraints=False),
                ]
                # The lock pins every file by hash, so uv's cached index pages are as good as fresh ones;
                # trying offline first skips ~0.25 s of index requests when every wheel is cached.
                if settings.offline or not run(
                    [*install, "--offline"],
                    "not every wheel is in the uv cache; installing online",
                    fatal=False,
                ):
                    run(
                        install,
                        "uv pip install failed",
                    )
                tool_version = uv_version
            else:
                say(f"creating env {key} with virtualenv (Python {interp.version})")
                run(
                    [
                        sys.executable,
                        "-m",
                        "virtualenv",
                        "--quiet",
                        "--no-setuptools",
                        "--no-periodic-update",
                        "-p",
                        str(interp.path),
                        str(tmp),
                    ],
                    "virtualenv failed",
                )
                say(f"installing {len(_locked_names(resolution.lock))} locked packages with pip")
                run(
                    [
                        str(python),
                        "-m",
                        "pip",
                        "install",
                        "--require-hashes",
                        "--no-input",
                        "--disable-pip-version-check",
                        "-r",
                        str(lock_file),
                        *settings.pip_args(),
                    ],
                    "pip install failed",
                )
                pip_v = subprocess.run(
                    [str(python), "-m", "pip", "--version"], capture_output=True, text=True, check=False
                ).stdout.split()
                tool_version = f"virtualenv+pip {pip_v[1] if len(pip_v) > 1 else '?'}"
            lock_file = lock_file.replace(tmp / LOCK_NAME)
            site_packages = _site_packages(tmp, interp.minor)
            if not site_packages.is_dir():
                raise EnvBuildError(spec.name, f"no site-packages at {site_packages}", log_path=log_path)
            say("compiling bytecode")
            covered = (
                _link_shared_bytecode(tmp, site_packages, interp, layout, log) if builder == "uv" else None
            )
            runner_hash = runner_sha256()
            runner_copy = _copy_runner(site_packages)
            # pip compiles what it installs; uv's files get the shared .pyc above. Compile the rest: the
            # runner, and whatever the shared step did not cover (uv cache on another filesystem, sdists).
            targets = [runner_copy] + [
                entry
                for entry in (site_packages.iterdir() if covered is not None else ())
                if entry.name not in (covered or ())
                and entry != runner_copy
                and not entry.name.endswith((".dist-info", ".pth", "__pycache__"))
                and (entry.is_dir() or entry.suffix == ".py")
            ]
            run(
                [str(python), "-I", "-m", "compileall", "-q", *map(str, targets)],
                "compiling bytecode failed",
                fatal=False,
            )
            stamp = {
                "format": STAMP_FORMAT,
                "key": key,
                "name": spec.name,
                "requirements": list(resolution.requirements),
                "dropped": list(resolution.dropped),
                "python_requires": spec.python_requires,
                "lock_origin": resolution.origin,
                "lock_sha256": _sha256_text(resolution.lock),
                "interpreter": interp.as_json(),
                "protocol_version": PROTOCOL_VERSION,
                "builder": builder,
                "builder_version": tool_version,
                "runner_sha256": runner_hash,
                "index": settings.describe(),
                "site_packages": str(site_packages.relative_to(tmp)),
                "built_at": _now_iso(),
                "build_seconds": round(time.monotonic() - started, 3),
                "reason": reason,
            }
            _write_atomic(tmp / STAMP_NAME, json.dumps(stamp, indent=2))
            if env_dir.exists() or env_dir.is_symlink():
                old = env_dir.with_name(f"{OLD_PREFIX}{key}-{os.getpid()}")
                env_dir.rename(old)
                _rmtree(old)
            tmp.rename(env_dir)
            log.write(f"=== done in {time.monotonic() - started:.2f} s\n")
            say(f"env {key} ready in {time.monotonic() - started:.1f} s")
            return stamp
        except BaseException as exc:
            log.write(f"=== failed: {exc!r}\n")
            _rmtree(tmp)
            (tmp.parent / f"{tmp.name}.lock.txt").unlink(missing_ok=True)
            raise


def _clear_stale(layout: CacheLayout, key: str) -> None:
    """Remove temp/old dirs of ``key`` left by killed builds. Caller holds the key lock."""
    for prefix in (TMP_PREFIX, OLD_PREFIX):
        for leftover in layout.envs.glob(f"{prefix}{key}-*"):
            logger.info("removing %s left by an interrupted build", leftover)
            _rmtree(leftover)


def _refresh_runner(
    env_dir: Path, stamp: dict[str, Any], current_hash: str, layout: CacheLayout
) -> dict[str, Any]:
    """Replace the runner copy inside a valid env (same protocol version, new runner code)."""
    key = str(stamp["key"])
    with filelock.FileLock(str(layout.locks / f"env-{key}.lock")):
        fresh = _valid_stamp(env_dir, key)
        if fresh is None or fresh.get("runner_sha256") == current_hash:
            return fresh or stamp
        site_packages = env_dir / str(fresh["site_packages"])
        staging = site_packages / f".medigan_iso_runner.new-{os.getpid()}"
        _rmtree(staging)
        _copy_runner(site_packages, dest_name=staging.name)
        subprocess.run(
            [str(env_dir / "bin" / "python"), "-I", "-m", "compileall", "-q", str(staging)],
            capture_output=True,
            check=False,
        )
        current = site_packages / "medigan_iso_runner"
        old = site_packages / f".medigan_iso_runner.old-{os.getpid()}"
        if current.exists():
            current.rename(old)
        staging.rename(current)
        _rmtree(old)
        fresh = {**fresh, "runner_sha256": current_hash, "runner_refreshed_at": _now_iso()}
        _write_atomic(env_dir / STAMP_NAME, json.dumps(fresh, indent=2))
        logger.info("refreshed the runner inside env %s", key)
        return fresh


def _model_env(env_dir: Path, key: str, stamp: Mapping[str, Any], layout: CacheLayout) -> ModelEnv:
    return ModelEnv(
        key=key,
        path=env_dir,
        python=env_dir / "bin" / "python",
        lock_path=env_dir / LOCK_NAME,
        log_path=layout.logs / f"env-{key}.log",
        python_version=str(stamp["interpreter"]["version"]),
        builder=str(stamp["builder"]),
    )


def _fallback_warning(reason: str) -> None:
    logger.warning(
        "uv is unusable (%s); building with virtualenv + pip instead: about 20x slower and about 0.9 GB of "
        "disk per torch env instead of a few MB of hardlinks. Install uv (`pip install uv`) to avoid this.",
        reason,
    )


def ensure_env(
    spec: SpecLike,
    *,
    home: str | os.PathLike[str] | None = None,
    build: bool = True,
    rebuild: bool = False,
    index_url: str | None = None,
    find_links: Sequence[str | os.PathLike[str]] = (),
    offline: bool | None = None,
    builder: str | None = None,
    progress: ProgressFn | None = None,
    strict: bool = False,
) -> ModelEnv:
    """Return a ready env for ``spec`` (a catalogue ModelEntry, an :class:`EnvSpec` or requirement strings).

    Reuses an existing env when its stamp matches the key; otherwise resolves (unless the resolution is
    cached) and builds it atomically. ``build=False`` never builds (:class:`EnvNotBuiltError` instead);
    ``rebuild=True`` resolves and builds again. ``builder`` forces ``"uv"`` or ``"virtualenv"``;
    ``offline=None`` reads ``$MEDIGAN_ISO_OFFLINE``. ``progress`` receives one-line status messages.
    ``strict`` (the strict supply-chain mode) installs wheels only (``uv --no-build``, pip
    ``--only-binary :all:``): no sdist's build script runs; such envs have their own key.
    """
    if builder is not None and builder not in BUILDERS:
        raise ValueError(f"builder must be one of {BUILDERS}, not {builder!r}")
    normalised = _normalise_spec(spec)
    layout = cache_layout(home).ensure()
    settings = index_settings(index_url=index_url, find_links=find_links, offline=offline)
    if strict:
        settings = replace(settings, wheels_only=True)
    uv = _find_uv() if builder != "virtualenv" else None
    if builder is None and uv is None:
        _fallback_warning("no uv binary found")
        builder = "virtualenv"
    elif builder == "uv" and uv is None:
        raise EnvBuildError(
            normalised.name,
            "builder='uv' was requested but no uv binary was found",
            remedy="install uv (`pip install uv`) or pass builder='virtualenv'",
        )
    chosen = builder or "uv"
    resolver = uv if uv is not None else _find_uv()
    try:
        return _ensure(
            normalised,
            layout=layout,
            settings=settings,
            uv=resolver,
            builder=chosen,
            build=build,
            rebuild=rebuild,
            progress=progress,
        )
    except _UvUnusable as exc:
        if builder is not None and builder == "uv":
            raise EnvBuildError(
                normalised.name,
                f"uv cannot start: {exc}",
                remedy="reinstall uv (`pip install --force-reinstall uv`)",
            ) from exc
        _fallback_warning(str(exc))
        return _ensure(
            normalised,
            layout=layout,
            settings=settings,
            uv=None,
            builder="virtualenv",
            build=build,
            rebuild=rebuild,
            progress=progress,
        )


def _ensure(
    spec: _Spec,
    *,
    layout: CacheLayout,
    settings: IndexSettings,
    uv: Path | None,
    builder: str,
    build: bool,
    rebuild: bool,
    progress: ProgressFn | None,
) -> ModelEnv:
    label = spec.name or ", ".join(spec.requirements)
    if not build:
        cached = _cached_resolution_only(spec, layout=layout, settings=settings, uv=uv)
        if cached is None:
            raise EnvNotBuiltError(label)
        resolution = cached
    else:
        if progress is not None:
            progress(f"resolving {label}")
        resolution = _resolve(spec, layout=layout, settings=settings, uv=uv, refresh=rebuild)
    key = _env_key(resolution.lock, resolution.interpreter, builder, wheels_only=settings.wheels_only)
    env_dir = layout.envs / key
    current_runner = runner_sha256()
    stamp = None if rebuild else _valid_stamp(env_dir, key)
    if stamp is None and not build:
        raise EnvNotBuiltError(label)
    if stamp is None:
        with filelock.FileLock(str(layout.locks / f"env-{key}.lock")):
            stamp = None if rebuild else _valid_stamp(env_dir, key)
            if stamp is None:
                _clear_stale(layout, key)
                preview = {
                    "requirements": list(resolution.requirements),
                    "lock_sha256": _sha256_text(resolution.lock),
                    "interpreter": resolution.interpreter.as_json(),
                    "protocol_version": PROTOCOL_VERSION,
                    "builder": builder,
                }
                reason = _build_reason(spec, preview, env_dir, key, layout, rebuild)
                if reason != "new env":
                    logger.info("building env %s for %s: %s", key, label, reason)
                stamp = _build(
                    spec=spec,
                    resolution=resolution,
                    key=key,
                    builder=builder,
                    uv=uv,
                    settings=settings,
                    layout=layout,
                    env_dir=env_dir,
                    log_path=layout.logs / f"env-{key}.log",
                    reason=reason,
                    progress=progress,
                )
    elif stamp.get("runner_sha256") != current_runner:
        stamp = _refresh_runner(env_dir, stamp, current_runner, layout)
    if spec.name:
        names = _names_file(layout, spec.name)
        names.parent.mkdir(exist_ok=True)
        if (_read_json(names) or {}).get("key") != key:
            _write_atomic(names, json.dumps({"name": spec.name, "key": key}))
    _record_use(env_dir, key, spec.name, layout)
    return _model_env(env_dir, key, stamp, layout)


def _cached_resolution_only(
    spec: _Spec, *, layout: CacheLayout, settings: IndexSettings, uv: Path | None
) -> Resolution | None:
    """The lock ``_resolve`` would return, without resolving: None when nothing is cached."""
    if spec.given_lock is not None:
        return _resolve(spec, layout=layout, settings=settings, uv=uv, refresh=False)
    interp = _find_interpreter(spec.python_requires, name=spec.name, layout=layout)
    cache = _resolution_cache(spec, interp, settings, uv, layout)
    if not cache.is_file():
        return None
    return Resolution(
        cache.read_text(encoding="utf-8"), interp, spec.requirements, spec.dropped, "resolved", True
    )


def _build_reason(
    spec: _Spec, preview: Mapping[str, Any], env_dir: Path, key: str, layout: CacheLayout, rebuild: bool
) -> str:
    """Why this build happens; for a named spec that used another env before, which inputs changed."""
    if rebuild:
        return "rebuild requested"
    if env_dir.exists():
        return "the existing directory is incomplete or foreign (no valid stamp); replacing it"
    if spec.name:
        previous = _read_json(_names_file(layout, spec.name))
        if previous and previous.get("key") != key:
            old_stamp = _read_json(layout.envs / str(previous.get("key")) / STAMP_NAME)
            if old_stamp is not None:
                changes = "; ".join(diff_stamps(old_stamp, preview)) or "inputs changed"
                return f"{spec.name} previously used env {previous.get('key')}: {changes}"
    return "new env"


# --- listing, removal, pruning ---------------------------------------------------------------------


def _env_dirs(layout: CacheLayout) -> Iterator[Path]:
    if layout.envs.is_dir():
        for path in sorted(layout.envs.iterdir()):
            if path.is_dir() and not path.name.startswith("."):
                yield path


def list_envs(*, home: str | os.PathLike[str] | None = None) -> list[EnvInfo]:
    """Every env under the cache, with its own disk use, last use and the models that used it."""
    layout = cache_layout(home)
    infos = []
    for path in _env_dirs(layout):
        stamp = _valid_stamp(path, path.name)
        users = _read_json(path / USERS_NAME) or {}
        models = users.get("models") if isinstance(users.get("models"), dict) else {}
        assert isinstance(models, dict)
        last = users.get("last_use")
        infos.append(
            EnvInfo(
                key=path.name,
                path=path,
                valid=stamp is not None,
                own_bytes=_own_bytes(path),
                last_use=float(last) if isinstance(last, int | float) else None,
                models=tuple(sorted(models)),
                builder=stamp.get("builder") if stamp else None,
                python_version=stamp["interpreter"]["version"] if stamp else None,
            )
        )
    return infos


def remove_env(key: str, *, home: str | os.PathLike[str] | None = None) -> Path:
    """Delete the env ``key`` (under its build lock). Returns the removed path."""
    layout = cache_layout(home)
    env_dir = layout.envs / key
    if not key or key.startswith(".") or "/" in key or not env_dir.is_dir():
        raise EnvNotBuiltError(key)
    layout.locks.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(layout.locks / f"env-{key}.lock")):
        old = env_dir.with_name(f"{OLD_PREFIX}{key}-{os.getpid()}")
        env_dir.rename(old)
        _rmtree(old)
    return env_dir


def prune_envs(
    *,
    home: str | os.PathLike[str] | None = None,
    older_than_days: float | None = None,
    max_size_gb: float | None = None,
) -> PruneReport:
    """Remove leftovers of killed builds, invalid dirs, envs unused for ``older_than_days`` and, while the
    envs' own size exceeds ``max_size_gb``, the least recently used ones."""
    layout = cache_layout(home)
    removed: list[Path] = []
    freed = 0
    if not layout.envs.is_dir():
        return PruneReport((), 0)
    layout.locks.mkdir(parents=True, exist_ok=True)
    for leftover in sorted(layout.envs.iterdir()):
        if not leftover.name.startswith((TMP_PREFIX, OLD_PREFIX)):
            continue
        if leftover.name.startswith(f"{TMP_PREFIX}resolve-"):
            # scratch dirs of pip resolutions hold no key lock; only ones older than a day are orphans
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < time.time() - 86400:
                    _rmtree(leftover)
                    removed.append(leftover)
            continue
        key = leftover.name.split("-")[1] if leftover.name.count("-") >= 2 else ""
        lock = filelock.FileLock(str(layout.locks / f"env-{key}.lock"))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            continue  # a build of that key is running right now
        try:
            freed += _own_bytes(leftover)
            _rmtree(leftover)
            removed.append(leftover)
        finally:
            lock.release()
    infos = list_envs(home=home)
    now = time.time()
    doomed = [i for i in infos if not i.valid]
    if older_than_days is not None:
        doomed += [i for i in infos if i.valid and (i.last_use or 0) < now - older_than_days * 86400]
    keep = [i for i in infos if i not in doomed]
    if max_size_gb is not None:
        keep.sort(key=lambda i: i.last_use or 0)
        total = sum(i.own_bytes for i in keep)
        while keep and total > max_size_gb * 1e9:
            victim = keep.pop(0)
            doomed.append(victim)
            total -= victim.own_bytes
    for info in doomed:
        with contextlib.suppress(EnvNotBuiltError, OSError):
            remove_env(info.key, home=home)
            removed.append(info.path)
            freed += info.own_bytes
    return PruneReport(tuple(removed), freed)
