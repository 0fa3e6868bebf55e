"""The store of envs: stamps, who used an env, listing, removal and pruning."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from medigan_iso.envs._common import (
    KEY_LENGTH_HEX,
    LOCK_NAME,
    OLD_PREFIX,
    STAMP_FORMAT,
    STAMP_NAME,
    TMP_PREFIX,
    USERS_NAME,
    _own_bytes,
    _read_json,
    _rmtree,
    _sha256_text,
    _write_atomic,
)
from medigan_iso.errors import (
    EnvNotBuiltError,
)
from medigan_iso.paths import CacheLayout, cache_layout
from medigan_iso.untrusted import get_logger

logger = get_logger(__name__)


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
    as_of: str = "latest"  # the dependencies' as-of date (ISO) or "latest"
    as_of_source: str = ""  # where that date came from


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
    as_of: str | None = None  # ISO date or "latest"; None for envs stamped before as-of dates existed
    as_of_source: str | None = None  # where that date came from (the stamp's)


@dataclass(frozen=True)
class PruneReport:
    removed: tuple[Path, ...]
    freed_bytes: int


# --- index settings --------------------------------------------------------------------------------


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
    with filelock.FileLock(str(layout.env_users_lock(key))):
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
    old_date = (old.get("as_of") or {}).get("date", "latest")
    new_date = (new.get("as_of") or {}).get("date", "latest")
    if old_date != new_date:
        changes.append(f"dependencies as of {old_date} -> {new_date}")
    return changes


def _names_file(layout: CacheLayout, name: str) -> Path:
    return layout.env_name_record(_sha256_text(name)[:KEY_LENGTH_HEX])


# --- building --------------------------------------------------------------------------------------


def _model_env(env_dir: Path, key: str, stamp: Mapping[str, Any], layout: CacheLayout) -> ModelEnv:
    return ModelEnv(
        key=key,
        path=env_dir,
        python=env_dir / "bin" / "python",
        lock_path=env_dir / LOCK_NAME,
        log_path=layout.env_log(key),
        python_version=str(stamp["interpreter"]["version"]),
        builder=str(stamp["builder"]),
        as_of=str((stamp.get("as_of") or {}).get("date", "latest")),
        as_of_source=str((stamp.get("as_of") or {}).get("source", "")),
    )


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
                last_use=float(last) if isinstance(last, (int, float)) else None,
                models=tuple(sorted(models)),
                builder=stamp.get("builder") if stamp else None,
                python_version=stamp["interpreter"]["version"] if stamp else None,
                as_of=(stamp.get("as_of") or {}).get("date", "latest") if stamp else None,
                as_of_source=(stamp.get("as_of") or {}).get("source") if stamp else None,
            )
        )
    return infos


def remove_env(key: str, *, home: str | os.PathLike[str] | None = None) -> Path:
    """Delete the env ``key`` (under its build lock). Returns the removed path."""
    layout = cache_layout(home)
    env_dir = layout.env_dir(key)
    if not key or key.startswith(".") or "/" in key or not env_dir.is_dir():
        raise EnvNotBuiltError(key)
    layout.locks.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(layout.env_lock(key))):
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
    areas = [layout.envs] + ([layout.build_area] if layout.build_area.is_dir() else [])
    for leftover in sorted(p for area in areas for p in area.iterdir()):
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
        lock = filelock.FileLock(str(layout.env_lock(key)))
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
