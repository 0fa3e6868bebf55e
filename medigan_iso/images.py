"""Writing generated samples to disk as PNG or .npy files, as batches arrive.

Owns the file naming of ``medigan-iso generate`` and the documented conversion to 8-bit PNG. It writes
only inside the output directory it is given, never follows a symlink there, never overwrites a file and
never leaves a half-written one (each file is written to a hidden temp name, then hard-linked into place).

Conversion to uint8 for PNG (``--format npy`` keeps the exact arrays):
- uint8 as is; bool as 0/255;
- other integer types: kept when every value fits 0..255, else min-max scaled to 0..255 (a constant
  image out of range is clipped);
- floats: [0, 1] scaled by 255; [-1, 1] mapped by (x + 1) * 127.5; anything else clipped to 0..255;
- NaN becomes 0.
Shapes H×W and H×W×1 become grayscale, H×W×3 RGB, H×W×4 RGBA; 1×H×W / 3×H×W (channels first) are
transposed. Anything else (volumes, stacks) is written as .npy with a note in the returned record.

Samples: an array is ``sample_<i>.png``; a medigan tuple ``(image, mask, other, "label")`` writes
``sample_<i>.png``, ``sample_<i>_mask.png``, ``sample_<i>_other.png`` and the label into
``labels.csv``; a list of arrays writes ``sample_<i>_<k>.png``; None writes nothing.

After a model has run, its output directory is hostile (the model wrote there): :func:`read_regular_file`
opens a file without following a symlink and without blocking on a FIFO, and reads it only if it is a
regular file below a size cap; :func:`non_regular_entries` lists what else the model left there.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import errno
import hashlib
import io
import os
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medigan_iso.errors import OutputExistsError
from medigan_iso.manifest import ManifestWriter

__all__ = [
    "SampleWriter",
    "non_regular_entries",
    "prepare_output_dir",
    "read_regular_file",
    "to_uint8",
    "write_exclusive",
]

TUPLE_PART_SUFFIXES = ("", "_mask", "_other")
MAX_OUTPUT_FILE_BYTES = 2 * 1024**3  # read_regular_file's default cap


def read_regular_file(path: str | os.PathLike[str], *, max_bytes: int = MAX_OUTPUT_FILE_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file (not a symlink, FIFO, socket or device) <= max_bytes.

    Raises ValueError (naming what the entry is) otherwise; never blocks on a FIFO, never follows a link.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"refusing to read {path}: it is a symlink") from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"refusing to read {path}: it is a {_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise ValueError(f"refusing to read {path}: {st.st_size} bytes is above the cap of {max_bytes}")
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise ValueError(f"refusing to read {path}: it grew above the cap of {max_bytes} bytes")
        return data
    finally:
        os.close(fd)


def non_regular_entries(directory: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """Entries below ``directory`` that are not regular files or directories, with their kind (lstat only)."""
    found: list[tuple[Path, str]] = []
    stack = [Path(directory)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                stack.append(Path(entry.path))
            elif not stat.S_ISREG(mode):
                found.append((Path(entry.path), _kind(mode)))
    return sorted(found)


def prepare_output_dir(directory: str | os.PathLike[str]) -> Path:
    """Create ``directory`` (and parents) and return its resolved path; refuse it when it is a symlink.

    Checked before anything is created: a model that wrote into a parent output directory may have planted
    the link, and writing (or binding it writable in the sandbox) would land wherever it points.
    """
    path = Path(directory)
    if path.is_symlink():
        raise ValueError(f"refusing to use {path} as an output directory: it is a symlink")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve(strict=True)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def to_uint8(array: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Convert one image array to uint8 by the rules in this module's docstring."""
    arr = np.asarray(array)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size == 0 or (arr.min() >= 0 and arr.max() <= 255):
            return arr.astype(np.uint8)
        lo, hi = float(arr.min()), float(arr.max())
        if hi == lo:  # a constant image out of range: nothing to scale (ZeroDivisionError; issue 19)
            clipped: npt.NDArray[np.uint8] = np.clip(arr, 0, 255).astype(np.uint8)
            return clipped
        scaled = (arr.astype(np.float64) - lo) * (255.0 / (hi - lo))
        return np.rint(scaled).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        data = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if data.size == 0:
            return data.astype(np.uint8)
        lo, hi = float(data.min()), float(data.max())
        if lo >= 0.0 and hi <= 1.0:
            data = data * 255.0
        elif lo >= -1.0 and hi <= 1.0:
            data = (data + 1.0) * 127.5
        return np.rint(np.clip(data, 0.0, 255.0)).astype(np.uint8)
    raise TypeError(f"cannot convert an array of dtype {arr.dtype} to an image")


def _png_layout(arr: npt.NDArray[Any]) -> npt.NDArray[Any] | None:
    """The array as H×W or H×W×C (C in 1, 3, 4) for PNG, or None when it is not an image."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3:
        if arr.shape[2] in (1, 3, 4):
            return arr[:, :, 0] if arr.shape[2] == 1 else arr
        if arr.shape[0] in (1, 3, 4):
            moved = np.moveaxis(arr, 0, -1)
            return moved[:, :, 0] if moved.shape[2] == 1 else moved
    return None


def write_exclusive(path: Path, data: bytes, *, before_link: Callable[[], object] | None = None) -> None:
    """Write ``data`` to ``path`` whole or not at all, never replacing an existing file.

    The bytes go to a hidden temp file first, which is then hard-linked to ``path`` (the link fails if
    ``path`` exists, symlink or not): an interrupt (Ctrl-C) never leaves a truncated image behind.
    ``before_link`` runs once the bytes are on disk and ``path`` was found free, just before the link: the
    manifest line goes there, so a killed run never leaves a file its manifest does not name (at worst the
    manifest's last line names a file that did not land).
    """
    tmp = _stage(path, data)
    _link_staged(tmp, path, before_link)


def _stage(path: Path, data: bytes) -> Path:
    """Write ``data`` whole to a new hidden temp file next to ``path`` and return its name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        _discard(tmp)
        raise
    os.close(fd)
    return tmp


def _link_staged(tmp: Path, path: Path, before_link: Callable[[], object] | None) -> None:
    """Link the staged ``tmp`` to ``path`` (see :func:`write_exclusive`) and remove ``tmp`` in any case."""
    try:
        if before_link is not None:
            if os.path.lexists(path):
                raise OutputExistsError(path)
            before_link()
        try:
            os.link(tmp, path, follow_symlinks=False)
        except FileExistsError as exc:
            raise OutputExistsError(path) from exc
    finally:
        _discard(tmp)


def _discard(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


_write_exclusive = write_exclusive


@dataclass(frozen=True)
class _Staged:
    """A file encoded and written to its hidden temp name on a pool thread, waiting to be linked."""

    path: Path
    tmp: Path
    digest: str
    size: int


@dataclass
class SampleWriter:
    """Writes samples into ``directory`` as they arrive; ``files`` lists every file written so far.

    With a ``manifest`` (a :class:`~medigan_iso.manifest.ManifestWriter`), each file's line is appended
    as the file lands (just before its link into place), with the sample index it was written under.

    ``workers`` > 0 encodes files (PNG compression, .npy) on a pool of that many threads, overlapping with
    the caller reading the next batch (issue 17: encoding on the caller's thread made ``generate -n 3000``
    1.65x slower than the same request without files). A pool thread also writes each file whole to its
    hidden temporary name and hashes it (file syscalls release the GIL: on the caller's thread each one
    waited for the GIL behind the encoders, the convoy that made the pool gain nothing). Files still land
    one by one in submission order, linked into place by the caller's thread after their manifest line,
    so ``files``, the manifest and the directory keep the serial writer's order and atomicity; at most
    ``4 x workers`` encoded files wait (in memory or as hidden ``*.part`` files, removed on failure).
    :meth:`close` (or :meth:`flush`) lands everything submitted; an encoding error is raised there or at
    a later write.
    """

    directory: Path
    fmt: str = "png"
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: int = 0
    manifest: ManifestWriter | None = None
    workers: int = 0
    _labels: list[tuple[int, str]] = field(default_factory=list)
    _index: int | None = None
    _pool: Any = None
    _staged: set[Path] = field(default_factory=set)
    _staged_lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: collections.deque[tuple[Future[_Staged], int | None]] = field(default_factory=collections.deque)

    def __post_init__(self) -> None:
        if self.fmt not in ("png", "npy"):
            raise ValueError(f"format must be 'png' or 'npy', got {self.fmt!r}")
        if type(self.workers) is not int or self.workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {self.workers!r}")
        prepare_output_dir(self.directory)
        self.directory = Path(self.directory)

    def write(self, index: int, sample: object) -> None:
        """Write one sample under number ``index``."""
        stem = f"sample_{index:05d}"
        self._index = index
        if sample is None:
            self.skipped += 1
        elif isinstance(sample, np.ndarray):
            self._write_array(stem, sample)
        elif isinstance(sample, tuple):
            arrays = [part for part in sample if isinstance(part, np.ndarray)]
            for part, suffix in zip(arrays, TUPLE_PART_SUFFIXES):
                self._write_array(stem + suffix, part)
            for extra_index, part in enumerate(arrays[len(TUPLE_PART_SUFFIXES) :], start=3):
                self._write_array(f"{stem}_{extra_index}", part)
            for part in sample:
                if isinstance(part, (str, int, float)) and not isinstance(part, bool):
                    self._labels.append((index, str(part)))
        elif isinstance(sample, list):
            for k, part in enumerate(sample):
                if isinstance(part, np.ndarray):
                    self._write_array(f"{stem}_{k}", part)
        else:
            self._labels.append((index, str(sample)))

    def write_batch(self, first_index: int, samples: Sequence[object]) -> None:
        for offset, sample in enumerate(samples):
            self.write(first_index + offset, sample)

    def flush(self) -> None:
        """Land every file submitted to the pool (in order)."""
        while self._pending:
            self._land_next()

    def close(self) -> None:
        """Land every pending file, stop the pool, write ``labels.csv`` when any sample carried a label."""
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._abandon_pending()
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
                with self._staged_lock:
                    for tmp in self._staged:  # encoded but never linked (an error or an interrupt)
                        _discard(tmp)
                    self._staged.clear()
        if not self._labels:
            return
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["sample", "label"])
        for index, label in self._labels:
            writer.writerow([f"sample_{index:05d}", label])
        path = self.directory / "labels.csv"
        self._land(path, buffer.getvalue().encode("utf-8"), None, kind="labels")  # _land lists it in files

    def _write_array(self, stem: str, array: npt.NDArray[Any]) -> None:
        image = _png_layout(array) if self.fmt == "png" else None
        if image is None and self.fmt == "png":
            self.notes.append(f"{stem}: shape {array.shape} is not an image; wrote .npy instead")
        if self.workers == 0:
            path, data = self._encode(stem, array, image)
            self._land(path, data, self._index)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="medigan-iso-writer")
        # the model's buffer may be reused after this batch: the pool gets its own copy of the pixels
        own = np.array(image if image is not None else array, copy=True)
        job = self._pool.submit(self._encode_and_stage, stem, own, own if image is not None else None)
        self._pending.append((job, self._index))
        while self._pending and (len(self._pending) > 4 * self.workers or self._pending[0][0].done()):
            self._land_next()

    def _encode(
        self, stem: str, array: npt.NDArray[Any], image: npt.NDArray[Any] | None
    ) -> tuple[Path, bytes]:
        buffer = io.BytesIO()
        if image is None:
            np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
            return self.directory / f"{stem}.npy", buffer.getvalue()
        from PIL import Image  # Pillow is imported only when PNGs are written

        Image.fromarray(to_uint8(image)).save(buffer, format="PNG")
        return self.directory / f"{stem}.png", buffer.getvalue()

    def _encode_and_stage(
        self, stem: str, array: npt.NDArray[Any], image: npt.NDArray[Any] | None
    ) -> _Staged:
        """On a pool thread: encode, write the bytes to a hidden temp file and hash them (not linked yet)."""
        path, data = self._encode(stem, array, image)
        digest = hashlib.sha256(data).hexdigest()
        tmp = _stage(path, data)
        with self._staged_lock:  # whatever interrupts the caller, close() finds and removes it
            self._staged.add(tmp)
        return _Staged(path, tmp, digest, len(data))

    def _land_next(self) -> None:
        future, index = self._pending.popleft()
        manifest = self.manifest
        try:
            staged = future.result()
            _link_staged(
                staged.tmp,
                staged.path,
                None
                if manifest is None
                else lambda: manifest.record(
                    staged.path.name, sha256=(staged.digest, staged.size), sample_index=index, kind="sample"
                ),
            )
        except BaseException:
            self._abandon_pending()  # this file's temp name stays in _staged too: close() removes it
            raise
        with self._staged_lock:
            self._staged.discard(staged.tmp)  # linked and its temp name removed by _link_staged
        self.files.append(staged.path)

    def _abandon_pending(self) -> None:
        """As the serial writer: nothing after the first failure lands (close() removes their temp files)."""
        for later, _ in self._pending:
            later.cancel()
        self._pending.clear()

    def _land(self, path: Path, data: bytes, index: int | None, *, kind: str = "sample") -> None:
        manifest = self.manifest
        write_exclusive(
            path,
            data,
            before_link=None
            if manifest is None
            else lambda: manifest.record(path.name, data=data, sample_index=index, kind=kind),
        )
        self.files.append(path)
