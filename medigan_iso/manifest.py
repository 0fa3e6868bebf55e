"""Provenance records of output folders: ``manifest.jsonl`` (one line per file) and ``run.json``.

This module owns the format of both files and writing them; it never runs a model and never prints.

``manifest.jsonl``
    One JSON object per line, one line per file written into the folder, appended (one ``write`` on an
    ``O_APPEND`` descriptor) right after the file landed, so the manifest of an interrupted run is still
    true for every file it names. Fields: ``path`` (relative, ``/``-separated), ``sha256``, ``size``,
    ``run_id``, ``model_id``, ``entry_sha256`` (of the catalogue entry as canonical JSON),
    ``package_sha256``, ``env_key``, ``lock_sha256``, ``dependencies_as_of``, ``python``, ``packages``
    (numpy, msgpack, torch, TensorFlow... from the runner's hello), ``runner_protocol``, ``seeding``,
    ``medigan_iso_version``, ``seed``, ``batch_size``, ``batch_index`` (global), ``sample_index`` (global,
    None for files a model saved itself or for labels.csv), ``kwargs``, ``sandbox_layers``, ``writer``
    (``"png"``, ``"npy"`` or ``"save_images"``), ``kind`` (``sample``, ``labels``, ``card``, ``grid``) and
    ``time`` (UTC). A later line for the same path wins.
``run.json``
    ``{"format": 1, "runs": [...]}``, one record per request that wrote into the folder, rewritten
    atomically (temp file + rename) when a request starts and when it ends: the request (model, seed,
    batch size and offset, sample count, kwargs, command), its ``status`` (``running``, ``complete``,
    ``interrupted``, ``failed``), what the env was made from (the catalogue entry, the lock text, the
    interpreter version) so that ``medigan-iso verify --regenerate`` can make the files again.

The folder is treated as hostile (a model may have written there): files are hashed without following
symlinks or blocking on FIFOs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "RUN_NAME",
    "ManifestWriter",
    "RunContext",
    "entry_sha256",
    "file_sha256",
    "jsonable",
    "read_manifest",
    "read_runs",
]

MANIFEST_NAME = "manifest.jsonl"
RUN_NAME = "run.json"
MANIFEST_FORMAT = 1
HASH_CHUNK_BYTES = 1 << 20


def entry_sha256(raw: Any) -> str:
    """sha256 of a catalogue entry as canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(jsonable(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def jsonable(value: Any) -> Any:
    """``value`` as JSON data: mappings and sequences as objects and lists, numpy scalars as numbers,
    arrays as ``{"ndarray": {"dtype", "shape", "sha256"}}`` (a fingerprint, not the data)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {
            "ndarray": {
                "dtype": data.dtype.str,
                "shape": list(data.shape),
                "sha256": hashlib.sha256(data.tobytes()).hexdigest(),
            }
        }
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def file_sha256(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(sha256 hex, size) of a regular file, read without following a symlink or blocking on a FIFO.

    Raises ValueError naming what the entry is when it is not a regular file; OSError when it is missing.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symlink") from exc
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path} is not a regular file")
        digest = hashlib.sha256()
        size = 0
        while chunk := os.read(fd, HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
        return digest.hexdigest(), size
    finally:
        os.close(fd)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class RunContext:
    """What every manifest line of one request repeats, and what run.json keeps to regenerate it.

    ``line_fields`` go into every manifest line; ``run_fields`` only into the request's run.json record
    (the whole catalogue entry, the lock text, the command).
    """

    line_fields: Mapping[str, Any]
    run_fields: Mapping[str, Any] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def batch_size(self) -> int:
        return int(self.line_fields["batch_size"])


class ManifestWriter:
    """Appends manifest lines for one request and keeps its run.json record current.

    Thread-safe. Use as a context manager: leaving normally marks the run ``complete``, leaving with
    KeyboardInterrupt ``interrupted``, with another exception ``failed``.
    """

    def __init__(self, directory: str | os.PathLike[str], context: RunContext) -> None:
        self.directory = Path(directory)
        self.context = context
        self.files = 0
        self._lock = threading.Lock()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._fd: int | None = os.open(self.directory / MANIFEST_NAME, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ValueError(
                    f"refusing to write {self.directory / MANIFEST_NAME}: it is a symlink"
                ) from exc
            raise
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            self._fd = None
            raise ValueError(f"refusing to write {self.directory / MANIFEST_NAME}: not a regular file")
        self._update_run(status="running", started=_now())

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.finish("complete")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("interrupted")
        else:
            self.finish("failed", error=f"{exc_type.__name__}: {exc}")

    def record(
        self,
        relpath: str,
        *,
        data: bytes | None = None,
        sample_index: int | None = None,
        batch_index: int | None = None,
        samples: tuple[int, int] | None = None,
        kind: str = "sample",
        sha256: tuple[str, int] | None = None,
    ) -> dict[str, Any]:
        """Append the line of a file that has landed in the folder; ``data`` are its bytes when known.

        ``kind`` is ``sample`` (generated output), ``labels`` (labels.csv), ``card`` (README.md) or ``grid``
        (a contact sheet): ``verify --regenerate`` makes only samples and labels again. ``sha256`` is
        ``(hex digest, size)`` when the caller hashed the file already (before moving it into place)."""
        if data is not None:
            digest, size = hashlib.sha256(data).hexdigest(), len(data)
        elif sha256 is not None:
            digest, size = sha256
        else:
            digest, size = file_sha256(self.directory / relpath)
        if batch_index is None and sample_index is not None:
            batch_index = sample_index // self.context.batch_size
        line = dict(self.context.line_fields)
        line.update(
            path=relpath,
            sha256=digest,
            size=size,
            run_id=self.context.run_id,
            batch_index=batch_index,
            sample_index=sample_index,
            kind=kind,
            time=_now(),
        )
        if samples is not None:
            line["samples"] = list(samples)
        encoded = (json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise ValueError("this manifest writer is finished")
            view = memoryview(encoded)
            while view:  # one write for a line of this size on a local file system; loop for safety
                view = view[os.write(self._fd, view) :]
            self.files += 1
        return line

    def finish(self, status: str, **extra: Any) -> None:
        """Close the manifest and mark the run ``status`` in run.json (idempotent)."""
        with self._lock:
            if self._fd is None:
                return
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        self._update_run(status=status, finished=_now(), files=self.files, **extra)

    def _update_run(self, **changes: Any) -> None:
        path = self.directory / RUN_NAME
        with self._lock:
            runs = read_runs(self.directory)
            for record in runs:
                if record.get("run_id") == self.context.run_id:
                    record.update(changes)
                    break
            else:
                record = {"run_id": self.context.run_id}
                record.update(self.context.line_fields)
                record.update(self.context.run_fields)
                record.update(changes)
                runs.append(record)
            text = json.dumps({"format": MANIFEST_FORMAT, "runs": runs}, indent=2, sort_keys=True) + "\n"
            tmp = path.with_name(f".{RUN_NAME}.{os.getpid()}.{threading.get_ident()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                tmp.replace(path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                raise


def read_runs(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The run records of ``directory/run.json`` ([] when there is none). ValueError when unreadable."""
    path = Path(directory) / RUN_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
        raise ValueError(f"{path} has no list of run records")
    return runs


def read_manifest(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The lines of ``directory/manifest.jsonl`` in order. A truncated last line (a run killed inside a
    write) is skipped; any other malformed line raises ValueError naming its number."""
    path = Path(directory) / MANIFEST_NAME
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            if number == len(lines):  # no newline after it: the write was cut short
                break
            raise ValueError(f"{path}, line {number}: not JSON ({exc})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            raise ValueError(f"{path}, line {number}: not a manifest record (no path)")
        if not isinstance(record.get("sha256"), str):
            raise ValueError(f"{path}, line {number}: not a manifest record (no sha256)")
        records.append(record)
    return records
