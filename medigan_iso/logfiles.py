"""Removing old log files: runner stderr logs and env build logs under the cache's ``logs`` folder.

This module owns the pruning policy (age, total size) and nothing else: logs are written by
:mod:`medigan_iso.runner_process` (capped per runner) and :mod:`medigan_iso.envs`. Issue 16, finding 3:
logs were never removed, so a model that fills a log each run filled the disk over time. Sessions call
:func:`auto_prune` when they start a runner; it does real work at most once per ``AUTO_PRUNE_INTERVAL_S``
(the mtime of a marker file, shared by every process using the same cache).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "AUTO_PRUNE_INTERVAL_S",
    "LOG_IN_USE_S",
    "LOG_MAX_AGE_S",
    "LOG_MAX_TOTAL_BYTES",
    "LogPruneReport",
    "auto_prune",
    "prune_logs",
]

LOG_MAX_AGE_S = 14 * 24 * 3600.0  # logs untouched this long are removed
LOG_MAX_TOTAL_BYTES = 256 * 1024 * 1024  # beyond this, the oldest logs go first
LOG_IN_USE_S = 3600.0  # a log written to within this is never removed (a runner may still write it)
AUTO_PRUNE_INTERVAL_S = 24 * 3600.0
MARKER_NAME = ".last-prune"
_PATTERNS = ("runner-*.log", "runner-*.log.tail", "runner-*.log.tail.1", "env-*.log")


@dataclass(frozen=True)
class LogPruneReport:
    removed: list[Path] = field(default_factory=list)
    freed_bytes: int = 0
    kept: int = 0
    kept_bytes: int = 0


def prune_logs(
    logs_dir: Path,
    *,
    max_age_s: float = LOG_MAX_AGE_S,
    max_total_bytes: int = LOG_MAX_TOTAL_BYTES,
    now: float | None = None,
    dry_run: bool = False,
) -> LogPruneReport:
    """Remove logs older than ``max_age_s``, then the oldest until the rest fit in ``max_total_bytes``.

    Logs modified within ``LOG_IN_USE_S`` are kept whatever their size. Never follows symlinks and never
    touches files that do not match the log names.
    """
    now = time.time() if now is None else now
    found: list[tuple[float, int, Path]] = []
    for pattern in _PATTERNS:
        for path in logs_dir.glob(pattern):
            with contextlib.suppress(OSError):
                st = path.lstat()
                if path.is_symlink() or not path.is_file():
                    continue
                found.append((st.st_mtime, st.st_size, path))
    found.sort()  # oldest first
    total = sum(size for _, size, _ in found)
    removed: list[Path] = []
    freed = 0
    for mtime, size, path in found:
        age = now - mtime
        if age < LOG_IN_USE_S:
            continue
        if age > max_age_s or total > max_total_bytes:
            if not dry_run:
                try:
                    path.unlink()
                except OSError:
                    continue
            removed.append(path)
            total -= size
            freed += size
    return LogPruneReport(
        removed=removed, freed_bytes=freed, kept=len(found) - len(removed), kept_bytes=total
    )


def auto_prune(logs_dir: Path, *, now: float | None = None) -> LogPruneReport | None:
    """Prune with the defaults unless that was done within ``AUTO_PRUNE_INTERVAL_S``; never raises."""
    now = time.time() if now is None else now
    marker = logs_dir / MARKER_NAME
    try:
        if now - marker.stat().st_mtime < AUTO_PRUNE_INTERVAL_S:
            return None
    except FileNotFoundError:
        pass
    except OSError:
        return None
    try:
        logs_dir.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return prune_logs(logs_dir, now=now)
    except OSError:
        return None
