"""Small helpers shared by the envs modules: file names inside an env, atomic writes, log tails."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medigan_iso.envs.index import redact
from medigan_iso.untrusted import get_logger

logger = get_logger(__name__)


STAMP_FORMAT = 1
KEY_LENGTH_HEX = 16  # 64 bits of sha256: the env directory name
STAMP_NAME = "medigan-iso-stamp.json"
LOCK_NAME = "medigan-iso-lock.txt"
USERS_NAME = "medigan-iso-models.json"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
LOG_TAIL_LINES = 30
BYTECODE_MARKER_PREFIX = ".medigan-iso-bytecode-"

ProgressFn = Callable[[str], None]


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
        text = redact(path.read_text(encoding="utf-8", errors="replace"))  # uv and pip hide them too
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
