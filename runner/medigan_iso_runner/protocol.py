"""Wire protocol shared by the host and the runner: framing, array payloads, sample structures.

This module owns the byte format of every frame that crosses the runner's pipes, and nothing else: no
processes, no timeouts, no model code. It runs on both sides (Python >= 3.7, stdlib + msgpack + numpy) and
imports nothing from medigan_iso. On the host it is a security boundary: :func:`read_frame` and
:func:`unpack_samples` raise only :class:`ProtocolError` on malformed input, never another exception, and
never read more than the caps allow. Nothing is ever pickled or unpickled.

Frame layout (all integers big-endian)::

    magic  b"MDGN"          4 bytes
    header_len  uint32      length of the msgpack header map
    payload_len uint64      length of the raw payload that follows the header
    header      msgpack map {"kind": <str>, ...}; "arrays": [[dtype_str, [dim, ...]], ...] when a payload
    payload     the C-contiguous bytes of every array in "arrays", concatenated in order

payload_len must equal the sum of prod(shape) * itemsize over "arrays". The header and the payload are
received with one ``readinto`` loop into one preallocated buffer (no intermediate bytes object; the payload
starts 64-byte aligned) and the arrays are views of it (an array whose offset breaks its dtype's alignment
is copied out). Arrays travel one per sample component
(a batch of 32 RGB images is 32 arrays of ndim 3), so ``MAX_NDIM = 4`` is enough for H x W x C x D volumes
and a batch never needs a 5-d array.

Sample structures (the model's return values) travel as a msgpack tree in the header's "samples" key:
None, bool, int, float, str and bytes as themselves; a list as a msgpack array; a tuple as ``{"t": [...]}``;
a dict with str keys as ``{"d": {...}}``; the i-th ndarray as ``{"a": i}`` and the i-th numpy scalar as
``{"s": i}`` (a 0-d array). Array references must appear in order (0, 1, 2, ...) and each exactly once.

PROTOCOL_VERSION is part of every env key: bump it whenever frames change incompatibly.
"""

import contextlib
import hashlib
import io
import os
import struct
import threading
import weakref
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

import msgpack
import numpy as np

__all__ = [
    "ALLOWED_DTYPES",
    "DEFAULT_LIMITS",
    "HOST_KINDS",
    "MAGIC",
    "MAX_ARRAYS",
    "MAX_DEPTH",
    "MAX_HEADER_BYTES",
    "MAX_NDIM",
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "RUNNER_KINDS",
    "SEEDING_SCHEME",
    "SEED_LIMIT",
    "Frame",
    "Limits",
    "ProtocolError",
    "ShapeCache",
    "SharedSlots",
    "batch_seed",
    "bytes_reader",
    "encode_frame",
    "frame_samples",
    "pack_samples",
    "read_frame",
    "shift_refs",
    "unpack_samples",
    "wire_array",
    "wire_specs",
    "write_frame",
]

PROTOCOL_VERSION = 1

# Determinism: batch k (its global index, counted from the first batch of the whole job, not of one
# request) is seeded with batch_seed(seed, k), so a sample's bytes do not depend on how a job is split into
# requests. The scheme's name travels in the runner's hello and in every manifest line.
SEEDING_SCHEME = "sha256-seed-batch-v1"
SEED_LIMIT = 2**63  # seeds are ints in [0, SEED_LIMIT)
_SEED_DOMAIN = b"medigan-iso batch seed v1\x00"

MAGIC = b"MDGN"
_PREFIX = struct.Struct(">4sIQ")
PREFIX_BYTES = _PREFIX.size

MAX_HEADER_BYTES = 4 * 1024 * 1024  # msgpack header map: kinds, kwargs, tracebacks, sample trees
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024 * 1024  # one batch of raw array bytes
MAX_NDIM = 4  # per array; see the module docstring
MAX_ARRAYS = 65536  # arrays in one frame
MAX_DEPTH = 32  # nesting of sample trees and header values

RUNNER_KINDS = frozenset({"hello", "ready", "batch", "progress", "log", "error", "done"})
HOST_KINDS = frozenset({"load", "generate", "cancel", "shutdown", "release"})
_KINDS = RUNNER_KINDS | HOST_KINDS


def _dtype_strings() -> FrozenSet[str]:
    names = []
    for code in ("b1", "i1", "u1"):
        names.append("|" + code)
    for code in ("i2", "i4", "i8", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"):
        names.append("<" + code)
        names.append(">" + code)
    return frozenset(names)


# Fixed-size numeric dtypes only: object, structured, string, datetime and void dtypes are refused.
# complex is allowed: it is plain numbers, and FFT-based models may return it.
ALLOWED_DTYPES = _dtype_strings()


class ProtocolError(Exception):
    """Raised when a frame is malformed, oversized or truncated; ``reason`` says which rule broke.

    ``eof`` is True when the stream ended inside a frame (the peer most likely died).
    """

    def __init__(self, reason: str, eof: bool = False) -> None:
        self.reason = reason
        self.eof = eof
        super().__init__(reason)


class Limits:
    """Caps the decoder enforces; the defaults are the module constants."""

    __slots__ = ("max_arrays", "max_depth", "max_header_bytes", "max_ndim", "max_payload_bytes")

    def __init__(
        self,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        max_ndim: int = MAX_NDIM,
        max_arrays: int = MAX_ARRAYS,
        max_depth: int = MAX_DEPTH,
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_payload_bytes = max_payload_bytes
        self.max_ndim = max_ndim
        self.max_arrays = max_arrays
        self.max_depth = max_depth


DEFAULT_LIMITS = Limits()


def batch_seed(seed: int, index: int) -> int:
    """The seed of global batch ``index`` of a job seeded with ``seed``, an int in [0, SEED_LIMIT).

    sha256 over a domain tag, ``seed`` and ``index`` (8 bytes each, big-endian); the first 8 bytes of the
    digest as a big-endian int, shifted right by one bit. Stable across Python and numpy versions.
    """
    if not (0 <= seed < SEED_LIMIT and 0 <= index < SEED_LIMIT):
        raise ValueError(f"seed and batch index must be in [0, 2**63), got seed={seed} index={index}")
    digest = hashlib.sha256(_SEED_DOMAIN + seed.to_bytes(8, "big") + index.to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class Frame:
    """One decoded frame: ``kind``, the whole ``header`` map and the payload ``arrays`` in order.

    ``shape`` is the validated structure the frame's header shares with earlier frames when it was read
    with a :class:`ShapeCache` (None otherwise); :func:`frame_samples` uses it.
    """

    __slots__ = ("arrays", "header", "kind", "shape")

    def __init__(
        self, kind: str, header: Dict[str, Any], arrays: List[np.ndarray], shape: "Optional[_Shape]" = None
    ) -> None:
        self.kind = kind
        self.header = header
        self.arrays = arrays
        self.shape = shape

    def __repr__(self) -> str:
        return f"Frame(kind={self.kind!r}, keys={sorted(self.header)!r}, arrays={len(self.arrays)})"


# --- encoding ---------------------------------------------------------------------------------------


def wire_array(array: np.ndarray) -> np.ndarray:
    """``array`` as it crosses the pipe (C-contiguous); ProtocolError for a dtype or ndim that cannot."""
    if array.dtype.str not in ALLOWED_DTYPES:
        raise ProtocolError(
            f"arrays of dtype {array.dtype} cannot cross the pipe "
            "(allowed: bool, int/uint 8-64, float16/32/64, complex64/128)"
        )
    if array.ndim > MAX_NDIM:
        raise ProtocolError(f"arrays with ndim {array.ndim} > {MAX_NDIM} cannot cross the pipe")
    # not np.ascontiguousarray: it turns 0-d arrays (numpy scalars) into 1-d ones
    return array if array.flags.c_contiguous else array.copy(order="C")


def wire_specs(arrays: Sequence[np.ndarray]) -> Tuple[List[np.ndarray], List[Any]]:
    """The arrays as they cross the pipe and their ``[dtype_str, shape]`` descriptors.

    A batch is mostly arrays of one dtype and shape: each (dtype, shape) is checked by :func:`wire_array`
    and described once per frame, and a later C-contiguous array of it reuses that (issue 17: 32 arrays
    cost 15 us more when each was checked and described again).
    """
    wire = []  # type: List[np.ndarray]
    specs = []  # type: List[Any]
    seen = {}  # type: Dict[Any, Any]
    for array in arrays:
        key = (array.dtype, array.shape)
        spec = seen.get(key)
        if spec is None or not array.flags.c_contiguous:
            array = wire_array(array)
            if spec is None:
                spec = seen[key] = [array.dtype.str, list(array.shape)]
        wire.append(array)
        specs.append(spec)
    return wire, specs


def encode_frame(header: Dict[str, Any], arrays: Sequence[np.ndarray] = (), inline: bool = True) -> List[Any]:
    """Return the buffers of one frame (prefix + header, then each array's bytes), ready for writev.

    ``header`` must hold "kind"; "arrays" is filled in from ``arrays``. ``inline=False``: the arrays' bytes
    travel in a shared-memory slot named by the header's "shm" (see :class:`SharedSlots`); the frame
    declares them but carries no payload.
    """
    if header.get("kind") not in _KINDS:
        raise ProtocolError("unknown frame kind {!r}".format(header.get("kind")))
    if len(arrays) > MAX_ARRAYS:
        raise ProtocolError(
            f"{len(arrays)} arrays in one frame exceed the cap of {MAX_ARRAYS}; use smaller batches"
        )
    wire, specs = wire_specs(arrays)
    if wire:
        header = dict(header)
        header["arrays"] = specs
    try:
        packed = msgpack.packb(header, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"header cannot be encoded: {exc}") from exc
    if len(packed) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(packed)} bytes exceeds {MAX_HEADER_BYTES}")
    payload_len = sum(a.nbytes for a in wire)
    if payload_len > MAX_PAYLOAD_BYTES:
        raise ProtocolError(
            f"payload of {payload_len} bytes exceeds {MAX_PAYLOAD_BYTES}; use smaller batches"
        )
    if not inline:
        return [_PREFIX.pack(MAGIC, len(packed), 0) + packed]
    buffers = [_PREFIX.pack(MAGIC, len(packed), payload_len) + packed]  # type: List[Any]
    for a in wire:
        if a.nbytes:
            buffers.append(a.reshape(-1).view(np.uint8).data)
    return buffers


def write_frame(
    write: Callable[[Any], Optional[int]], header: Dict[str, Any], arrays: Sequence[Any] = ()
) -> int:
    """Encode a frame and pass every buffer to ``write`` (a raw, possibly partial writer); return bytes sent.

    ``write`` is called until each buffer is fully written (``os.write`` and ``FileIO.write`` may write
    less than asked on a pipe).
    """
    total = 0
    for buf in encode_frame(header, arrays):
        view = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
        while view:
            written = write(view)
            if written is None:  # non-blocking writer with a full pipe
                continue
            view = view[written:]
            total += written
    return total


# --- decoding ---------------------------------------------------------------------------------------


def _read_exact(readinto: Callable[[memoryview], Optional[int]], view: memoryview, what: str) -> bool:
    """Fill ``view``; return False on EOF before the first byte, raise ProtocolError on a later EOF."""
    got = 0
    size = len(view)
    while got < size:
        n = readinto(view[got:])
        if not n:
            if got == 0:
                return False
            raise ProtocolError(f"stream ended inside the {what} ({got} of {size} bytes)", eof=True)
        got += n
    return True


def _read_body(readinto: Callable[[memoryview], Optional[int]], view: memoryview, header_len: int) -> None:
    """Fill ``view`` with a frame's header and payload; ProtocolError (eof) when the stream ends first."""
    got = 0
    size = len(view)
    while got < size:
        n = readinto(view[got:])
        if not n:
            if got == 0:
                raise ProtocolError("stream ended before the header", eof=True)
            if got < header_len:
                raise ProtocolError(f"stream ended inside the header ({got} of {header_len} bytes)", eof=True)
            raise ProtocolError(
                f"stream ended inside the payload ({got - header_len} of {size - header_len} bytes)", eof=True
            )
        got += n


_SCALARS = frozenset(
    {type(None), bool, int, float, str, bytes}
)  # what msgpack decodes to, nested types aside


def _check_plain(value: Any, depth: int, limits: Limits) -> None:
    """Refuse anything but msgpack's plain types (no Timestamp, no ext) and too-deep nesting."""
    if depth > limits.max_depth:
        raise ProtocolError(f"header nesting deeper than {limits.max_depth}")
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return
    if isinstance(value, list):
        for item in value:
            _check_plain(item, depth + 1, limits)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(f"header map keys must be str, got {type(key).__name__}")
            _check_plain(item, depth + 1, limits)
        return
    raise ProtocolError(f"header holds a value of type {type(value).__name__}")


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack ext type {code} is not allowed")


def _msgpack_options(limits: Limits) -> Dict[str, Any]:
    return dict(
        raw=False,
        strict_map_key=True,
        use_list=True,
        ext_hook=_refuse_ext,
        max_str_len=limits.max_header_bytes,
        max_bin_len=limits.max_header_bytes,
        max_array_len=limits.max_header_bytes,
        max_map_len=limits.max_header_bytes,
        max_ext_len=0,
    )


def _unpack_value(data: bytes, limits: Limits) -> Any:
    try:
        return msgpack.unpackb(data, **_msgpack_options(limits))
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises ValueError, FormatError, StackError, ExtraData, ...
        raise ProtocolError(f"header is not valid msgpack: {type(exc).__name__}: {exc}") from exc


def _check_kind(header: Dict[str, Any]) -> None:
    kind = header.get("kind")
    # isinstance first: a list or map "kind" is unhashable, and `in` on a frozenset raised TypeError
    # (found by tests/fuzz_atheris.py)
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ProtocolError(f"unknown frame kind {kind!r}")


def _unpack_header(data: bytes, limits: Limits) -> Dict[str, Any]:
    header = _unpack_value(data, limits)
    if not isinstance(header, dict):
        raise ProtocolError(f"header is a {type(header).__name__}, not a map")
    _check_plain(header, 0, limits)
    _check_kind(header)
    return header


def _array_specs(header: Dict[str, Any], limits: Limits) -> List[Tuple[np.dtype, Tuple[int, ...], int]]:
    specs = header.get("arrays", [])
    if not isinstance(specs, list):
        raise ProtocolError('"arrays" must be a list')
    if len(specs) > limits.max_arrays:
        raise ProtocolError(f"{len(specs)} arrays exceed the cap of {limits.max_arrays}")
    out = []
    for i, spec in enumerate(specs):
        if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str)):
            raise ProtocolError(f"array {i}: descriptor must be [dtype_str, shape]")
        dtype_str, shape = spec
        if dtype_str not in ALLOWED_DTYPES:
            raise ProtocolError(f"array {i}: dtype {dtype_str!r} is not allowed")
        if not isinstance(shape, list) or len(shape) > limits.max_ndim:
            raise ProtocolError(f"array {i}: shape must be a list of at most {limits.max_ndim} dims")
        for dim in shape:
            if type(dim) is not int or dim < 0:
                raise ProtocolError(f"array {i}: dims must be non-negative ints, got {dim!r}")
        dtype = np.dtype(dtype_str)
        count = 1
        for dim in shape:
            count *= dim
            if count * dtype.itemsize > limits.max_payload_bytes:
                raise ProtocolError(f"array {i}: shape {shape} exceeds the payload cap")
        out.append((dtype, tuple(shape), count * dtype.itemsize))
    return out


class SharedSlots:
    """The host's read-only view of a shared-memory segment: ``slots`` slots of ``slot_size`` bytes each.

    The host creates the segment (a sealed memfd: it can neither shrink nor grow, so a mapping never
    faults) and passes its fd to the runner, which writes a batch's array bytes into a slot it owns and
    sends a frame whose header holds ``"shm": [slot, offset, nbytes]`` and no payload. :meth:`take` checks
    the reference against the segment and the declared arrays and marks the slot held by the host. Every
    violation is a ProtocolError.

    Slots go back to the runner through ``release_fd``, the non-blocking write end of a pipe whose read end
    the runner drains when it needs a slot: one byte, the slot's number, per release. With
    ``views=False`` :meth:`take` copies the bytes out and the host calls :meth:`release`. With
    ``views=True`` it returns a read-only array over the slot itself (zero copy): the slot stays held
    until every array viewing it is garbage; the finalizer of the last one (whichever thread collects it)
    queues the slot and writes it if the pipe is free at once. A write never blocks and never raises: a
    full pipe (a runner that does not drain) keeps at most ``slots`` releases queued in memory, and
    :meth:`flush` retries them. The mapping lives as long as any view does, even after :meth:`close`.
    """

    def __init__(
        self, fd: int, slots: int, slot_size: int, views: bool = False, release_fd: Optional[int] = None
    ) -> None:
        import collections
        import mmap

        if not 0 < slots < 256:
            raise ValueError(f"{slots} slots: a release is one byte, so 1..255")
        self.slots = slots
        self.slot_size = slot_size
        self.views = views
        self.release_writes = 0  # slot numbers written to the release pipe
        self._held: Set[int] = set()
        self.released = collections.deque()  # type: Any  # slots given back, not yet written
        self._release_fd = release_fd
        self._release_lock = threading.Lock()
        self._map = mmap.mmap(fd, slots * slot_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        self._array = np.frombuffer(self._map, dtype=np.uint8)

    @property
    def held(self) -> int:
        """Slots the host holds: being copied out, or viewed by arrays still alive."""
        return len(self._held)

    def take(self, ref: Any, declared: int) -> np.ndarray:
        if not (isinstance(ref, list) and len(ref) == 3 and all(type(v) is int for v in ref)):
            raise ProtocolError('"shm" must be [slot, offset, nbytes] (ints)')
        slot, offset, nbytes = ref
        if not 0 <= slot < self.slots:
            raise ProtocolError(f"shared-memory slot {slot} outside 0..{self.slots - 1}")
        if slot in self._held:
            raise ProtocolError(f"shared-memory slot {slot} is not the runner's (not released yet)")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.slot_size:
            raise ProtocolError(
                f"shared-memory range {offset}+{nbytes} outside the slot of {self.slot_size} bytes"
            )
        if nbytes != declared:
            raise ProtocolError(f"shared-memory range of {nbytes} bytes != {declared} declared by the arrays")
        start = slot * self.slot_size + offset
        self._held.add(slot)
        if self.views:
            lease = _SlotLease(self._array, start, nbytes)
            weakref.finalize(lease, self._drop, slot)
            return np.asarray(lease)
        out = np.empty(nbytes, dtype=np.uint8)
        out[:] = self._array[start : start + nbytes]
        return out

    def _drop(self, slot: int) -> None:
        # may run in any thread, inside any allocation, at exit: no blocking call, no exception
        self._held.discard(slot)
        self._queue(slot)
        with contextlib.suppress(Exception):
            self.flush(blocking=False)

    def _queue(self, slot: int) -> None:
        # an honest runner has at most ``slots`` releases outstanding; more queued means the pipe is full
        # because the runner does not drain it, and that runner loses the extra ones
        if len(self.released) < self.slots:
            self.released.append(slot)

    def release(self, slot: int) -> None:
        """The host is done with ``slot`` (copied out): give it back to the runner."""
        self._held.discard(slot)
        self._queue(slot)
        self.flush()

    def flush(self, blocking: bool = True) -> None:
        """Write the queued releases that the pipe takes now; the rest stay queued. Never blocks on I/O.

        ``blocking=False`` (finalizers) skips the flush if another flush holds the lock, which may be this
        very thread, interrupted by a garbage collection.
        """
        if not self._release_lock.acquire(blocking):
            return
        try:
            while self.released and self._release_fd is not None:
                slot = self.released.popleft()
                try:
                    os.write(self._release_fd, bytes((slot,)))
                except BlockingIOError:  # full: the runner does not drain; try again later
                    self.released.appendleft(slot)
                    return
                except OSError:  # the runner is gone (EPIPE): nobody needs the slot any more
                    self.released.clear()
                    return
                self.release_writes += 1
        finally:
            self._release_lock.release()

    def close(self) -> None:
        with self._release_lock:  # no finalizer writes to the fd number once it is closed (and reused)
            if self._release_fd is not None:
                os.close(self._release_fd)
                self._release_fd = None
        self._array = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):  # a view is still alive; the mapping goes with the last one
            self._map.close()


class _SlotLease:
    """Owns one slot's bytes for the arrays viewing them (their ``base``); keeps the mapping alive."""

    def __init__(self, array: np.ndarray, start: int, nbytes: int) -> None:
        self._array = array  # its buffer export keeps the mmap open
        self.__array_interface__ = {
            "version": 3,
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (array.ctypes.data + start, True),  # read-only
        }


# The header keys whose values describe a frame's structure rather than its content: the same for every frame
# of a request shape (a batch of the same samples, coalesced the same way).
_STRUCTURE_KEYS = ("arrays", "samples", "batches")
MAX_SHAPES = 64  # structures a ShapeCache keeps
MAX_SHAPE_BYTES = 256 * 1024  # msgpack bytes of all the structures a ShapeCache keeps


class _Shape:
    """One validated structure: the decoded structure values, array specs, payload layout, samples plan."""

    __slots__ = ("declared", "plan", "specs", "stacked", "values")

    def __init__(self, values: Dict[str, Any], limits: Limits) -> None:
        self.values = values
        self.specs = _array_specs(values, limits)
        self.declared = sum(nbytes for _, _, nbytes in self.specs)
        # Arrays of one dtype and shape back to back (a batch of like samples) become views of one reshaped
        # payload; an array whose offset would break its dtype's alignment rules that out.
        self.stacked = None  # type: Optional[Tuple[np.dtype, Tuple[int, ...], int]]
        if len(self.specs) > 1:
            dtype, dims, nbytes = self.specs[0]
            if (
                dims
                and nbytes
                and nbytes % dtype.alignment == 0
                and all(spec[0] == dtype and spec[1] == dims for spec in self.specs)
            ):
                self.stacked = (dtype, dims, len(self.specs))
        self.plan = None  # type: Optional[Tuple[int, bool, Any]]  # (max_depth, flat, validated tree)


class ShapeCache:
    """Header structures already validated, so a stream of like frames is checked once (issue 17).

    :func:`read_frame` with a cache decodes a header's scalar fields every frame but looks its structure (the
    values of "arrays", "samples" and "batches") up by their exact msgpack bytes and the limits they were
    checked under. Identical bytes decode to identical values, so a hit is exactly as valid as the frame
    that was checked in full; a structure that differs in any byte misses and is checked in full. Only
    structures that passed every check are stored, at most ``max_entries`` of them holding ``max_bytes``
    of msgpack in all (oldest out first). The decoded values in a hit frame's header are shared with the
    frames of the same shape: read them, do not change them. One reader at a time.
    """

    def __init__(self, max_entries: int = MAX_SHAPES, max_bytes: int = MAX_SHAPE_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._entries = {}  # type: Dict[Any, _Shape]
        self._sizes = {}  # type: Dict[Any, int]
        self._bytes = 0
        self._options = {}  # type: Dict[int, Dict[str, Any]]  # msgpack options per max_header_bytes

    def header(self, data: bytes, limits: Limits) -> Tuple[Dict[str, Any], Any]:
        """The header map (every value checked as plain) and the key of its structure for :meth:`shape`."""
        header = {}  # type: Dict[str, Any]
        raws = {}  # type: Dict[str, bytes]
        shallow = limits.max_depth < 1  # then even a scalar value is too deep (as _check_plain has it)
        options = self._options.get(limits.max_header_bytes)
        if options is None:
            options = self._options[limits.max_header_bytes] = _msgpack_options(limits)
        try:
            # read_size: by default msgpack allocates a 1 MiB buffer per Unpacker, and the churn made the next
            # frame's payload buffer a fresh, page-faulting mapping
            unpacker = msgpack.Unpacker(None, read_size=len(data), max_buffer_size=len(data), **options)
            unpacker.feed(data)
            try:
                count = unpacker.read_map_header()
            except ValueError:
                raise ProtocolError("header is not a map") from None
            for _ in range(count):
                key = unpacker.unpack()
                if type(key) is not str:
                    raise ProtocolError(f"header map keys must be str, got {type(key).__name__}")
                if key in header or key in raws:
                    raise ProtocolError(f"header repeats the key {key!r}")
                if key in _STRUCTURE_KEYS:
                    start = unpacker.tell()
                    unpacker.skip()
                    raws[key] = data[start : unpacker.tell()]
                else:
                    value = unpacker.unpack()
                    if shallow or type(value) not in _SCALARS:
                        _check_plain(value, 1, limits)
                    header[key] = value
            if unpacker.tell() != len(data):
                raise ProtocolError(f"header has {len(data) - unpacker.tell()} bytes after its map")
        except ProtocolError:
            raise
        except Exception as exc:  # msgpack raises ValueError, FormatError, StackError, OutOfData, ...
            raise ProtocolError(f"header is not valid msgpack: {type(exc).__name__}: {exc}") from exc
        _check_kind(header)
        key = (
            limits.max_arrays,
            limits.max_depth,
            limits.max_ndim,
            limits.max_payload_bytes,
            raws.get("arrays"),
            raws.get("samples"),
            raws.get("batches"),
        )
        shape = self._entries.get(key)
        if shape is None:
            self.misses += 1
            for name, raw in raws.items():
                value = _unpack_value(raw, limits)
                _check_plain(value, 1, limits)
                header[name] = value
        else:
            self.hits += 1
            header.update(shape.values)
        return header, key

    def shape(self, key: Any, header: Dict[str, Any], limits: Limits) -> _Shape:
        """The checked structure of a header from :meth:`header`: its array specs are checked on a miss."""
        shape = self._entries.get(key)
        if shape is None:
            shape = _Shape({name: header[name] for name in _STRUCTURE_KEYS if name in header}, limits)
            self._store(key, shape, sum(len(raw) for raw in key[4:] if raw is not None))
        return shape

    def _store(self, key: Any, shape: _Shape, size: int) -> None:
        if size > self.max_bytes:
            return
        while self._entries and (
            len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes
        ):
            oldest = next(iter(self._entries))
            del self._entries[oldest]
            self._bytes -= self._sizes.pop(oldest)
        self._entries[key] = shape
        self._sizes[key] = size
        self._bytes += size


def read_frame(
    readinto: Callable[[memoryview], Optional[int]],
    limits: Limits = DEFAULT_LIMITS,
    shm: Optional[SharedSlots] = None,
    cache: Optional[ShapeCache] = None,
) -> Optional[Frame]:
    """Read one frame with ``readinto`` (a raw reader: returns bytes read, 0 at EOF).

    Returns None on EOF at a frame boundary; raises ProtocolError (only) on anything malformed. The payload
    is read straight into freshly allocated arrays; nothing beyond the declared, capped sizes is read. A
    frame whose header holds "shm" takes its payload from ``shm`` (see :class:`SharedSlots`; without one it
    is a ProtocolError); the caller then releases the slot. With a ``cache`` the header's structure is
    checked once per shape (see :class:`ShapeCache`) and the frame's samples come from :func:`frame_samples`.
    """
    prefix = bytearray(PREFIX_BYTES)
    if not _read_exact(readinto, memoryview(prefix), "frame prefix"):
        return None
    magic, header_len, payload_len = _PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (is something else writing to the protocol pipe?)")
    if header_len == 0 or header_len > limits.max_header_bytes:
        raise ProtocolError(f"header length {header_len} outside 1..{limits.max_header_bytes}")
    if payload_len > limits.max_payload_bytes:
        raise ProtocolError(f"payload length {payload_len} exceeds {limits.max_payload_bytes}")
    payload = None
    if payload_len:
        # Header and payload in one readinto loop (issue 17: a read syscall less per frame), into one buffer
        # laid out so that the payload starts 64-byte aligned; both are within the caps checked above. The
        # header is checked once it is all there, as before.
        pad = -header_len % 64
        body = np.empty(pad + header_len + payload_len, dtype=np.uint8)
        _read_body(readinto, body.data[pad:], header_len)
        raw = body.data[pad : pad + header_len].tobytes()
        payload = body[pad + header_len :]
    else:
        buffer = bytearray(header_len)
        if not _read_exact(readinto, memoryview(buffer), "header"):
            raise ProtocolError("stream ended before the header", eof=True)
        raw = bytes(buffer)
    if cache is None:
        header = _unpack_header(raw, limits)
    else:
        header, key = cache.header(raw, limits)
    ref = header.get("shm")
    # checked before the arrays, as the pipe's payload length is checked at the prefix
    if isinstance(ref, list) and len(ref) == 3 and type(ref[2]) is int and ref[2] > limits.max_payload_bytes:
        raise ProtocolError(f"shared-memory payload length {ref[2]} exceeds {limits.max_payload_bytes}")
    shape = None
    if cache is None:
        specs = _array_specs(header, limits)
        declared = sum(nbytes for _, _, nbytes in specs)
    else:
        shape = cache.shape(key, header, limits)
        specs, declared = shape.specs, shape.declared
    if "shm" in header:
        if shm is None:
            raise ProtocolError("a shared-memory frame, but no shared memory was negotiated")
        if payload_len:
            raise ProtocolError("a shared-memory frame must carry no pipe payload")
        if declared > limits.max_payload_bytes:
            raise ProtocolError(
                f"shared-memory payload of {declared} bytes exceeds {limits.max_payload_bytes}"
            )
        return _views(header, specs, shm.take(header["shm"], declared), shape)
    if declared != payload_len:
        raise ProtocolError(f"payload length {payload_len} != {declared} declared by the arrays")
    arrays = []
    if not payload_len:
        for dtype, dims, _ in specs:
            arrays.append(np.empty(dims, dtype=dtype))
        return Frame(header["kind"], header, arrays, shape)
    # The payload came in with the header, in one readinto loop (issue 17: one read per array cost a syscall
    # and a wake-up each); the arrays are views of it. An array whose offset breaks its dtype's alignment is
    # copied out.
    return _views(header, specs, payload, shape)


def _views(
    header: Dict[str, Any],
    specs: List[Tuple[np.dtype, Tuple[int, ...], int]],
    payload: Any,
    shape: Optional[_Shape] = None,
) -> Frame:
    if shape is not None and shape.stacked is not None:
        dtype, dims, count = shape.stacked
        return Frame(header["kind"], header, list(payload.view(dtype).reshape((count, *dims))), shape)
    arrays = []
    offset = 0
    for dtype, dims, nbytes in specs:
        part = payload[offset : offset + nbytes]
        if offset % dtype.alignment:
            part = part.copy()
        arrays.append(part.view(dtype).reshape(dims))
        offset += nbytes
    return Frame(header["kind"], header, arrays, shape)


def bytes_reader(data: bytes) -> Callable[[memoryview], Optional[int]]:
    """A ``readinto`` over an in-memory byte string (tests, fuzzing)."""
    return io.BytesIO(data).readinto


# --- sample structures ------------------------------------------------------------------------------


# Packing and unpacking are classes, not nested recursive closures: a closure that calls itself is a
# reference cycle, and the cycle kept every array of a batch alive until the cyclic GC ran (tens of MB of
# host RSS while streaming).


class _Packer:
    def __init__(self) -> None:
        self.arrays = []  # type: List[np.ndarray]

    def walk(self, value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ProtocolError(f"sample structure nested deeper than {MAX_DEPTH}")
        if value is None or isinstance(value, (bool, str, bytes)):
            return value
        if isinstance(value, np.ndarray):
            self.arrays.append(value)
            return {"a": len(self.arrays) - 1}
        if isinstance(value, np.generic):
            self.arrays.append(np.asarray(value))
            return {"s": len(self.arrays) - 1}
        if isinstance(value, int):
            if not -(2**63) <= value < 2**64:
                raise ProtocolError(f"int {value} does not fit in 64 bits")
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, tuple):
            return {"t": [self.walk(v, depth + 1) for v in value]}
        if isinstance(value, list):
            return [self.walk(v, depth + 1) for v in value]
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ProtocolError(f"dict keys in samples must be str, got {type(key).__name__}")
                out[key] = self.walk(item, depth + 1)
            return {"d": out}
        # Tensors and other array-likes with __array__ (torch on CPU, PIL images) become ndarrays.
        if hasattr(value, "__array__"):
            self.arrays.append(np.asarray(value))
            return {"a": len(self.arrays) - 1}
        raise ProtocolError(f"a {type(value).__name__} cannot cross the pipe")


def pack_samples(samples: Any) -> Tuple[Any, List[np.ndarray]]:
    """Turn a model's return value into (msgpack-able tree, arrays); see the module docstring."""
    if type(samples) is list and all(type(sample) is np.ndarray for sample in samples):
        # the usual batch, a list of plain arrays: the tree the walk builds, without the walk
        return [{"a": i} for i in range(len(samples))], list(samples)
    packer = _Packer()
    tree = packer.walk(samples, 0)
    return tree, packer.arrays


class _Unpacker:
    def __init__(self, arrays: Sequence[np.ndarray], limits: Limits) -> None:
        self.arrays = arrays
        self.limits = limits
        self.next_ref = 0

    def take(self, ref: Any, kind: str) -> Any:
        if type(ref) is not int or ref != self.next_ref or ref >= len(self.arrays):
            raise ProtocolError(f"array reference {ref!r} out of order (expected {self.next_ref})")
        self.next_ref += 1
        array = self.arrays[ref]
        if kind == "s":
            if array.ndim != 0:
                raise ProtocolError(f"scalar reference {ref} points at a {array.ndim}-d array")
            return array[()]
        return array

    def walk(self, node: Any, depth: int) -> Any:
        if depth > self.limits.max_depth:
            raise ProtocolError(f"sample tree nested deeper than {self.limits.max_depth}")
        if node is None or isinstance(node, (bool, int, float, str, bytes)):
            return node
        if isinstance(node, list):
            return [self.walk(v, depth + 1) for v in node]
        if isinstance(node, dict) and len(node) == 1:
            (tag, body) = next(iter(node.items()))
            if tag in ("a", "s"):
                return self.take(body, tag)
            if tag == "t" and isinstance(body, list):
                return tuple(self.walk(v, depth + 1) for v in body)
            if tag == "d" and isinstance(body, dict):
                return {k: self.walk(v, depth + 1) for k, v in body.items()}
        raise ProtocolError(f"malformed sample node {_short(node)}")


def shift_refs(tree: Any, offset: int, depth: int = 0) -> Any:
    """``tree`` (a :func:`pack_samples` tree) with every array reference moved by ``offset``.

    The runner uses it to merge the trees of several batches into one frame.
    """
    if depth > MAX_DEPTH:
        raise ProtocolError(f"sample structure nested deeper than {MAX_DEPTH}")
    if isinstance(tree, list):
        return [shift_refs(v, offset, depth + 1) for v in tree]
    if isinstance(tree, dict) and len(tree) == 1:
        ((tag, body),) = tree.items()
        if tag in ("a", "s"):
            return {tag: body + offset}
        if tag == "t":
            return {"t": [shift_refs(v, offset, depth + 1) for v in body]}
        if tag == "d":
            return {"d": {k: shift_refs(v, offset, depth + 1) for k, v in body.items()}}
    return tree


def unpack_samples(tree: Any, arrays: Sequence[np.ndarray], limits: Limits = DEFAULT_LIMITS) -> Any:
    """Rebuild the structure :func:`pack_samples` encoded; raise ProtocolError if the tree is malformed."""
    unpacker = _Unpacker(arrays, limits)
    result = unpacker.walk(tree, 0)
    if unpacker.next_ref != len(arrays):
        raise ProtocolError(f"{len(arrays)} arrays sent but {unpacker.next_ref} referenced")
    return result


def frame_samples(frame: Frame, limits: Limits = DEFAULT_LIMITS) -> Any:
    """``unpack_samples`` of a frame's "samples" and arrays; checked once per shape when the frame has one.

    The first frame of a shape (see :class:`ShapeCache`) is unpacked with every check; its tree is then
    kept as that shape's plan, and later frames of the shape are built from the plan without re-checking
    (their tree is the same bytes and their arrays have the same specs).
    """
    shape = frame.shape
    if shape is None:
        return unpack_samples(frame.header.get("samples"), frame.arrays, limits)
    plan = shape.plan
    if plan is None or plan[0] != limits.max_depth:
        tree = frame.header.get("samples")
        result = unpack_samples(tree, frame.arrays, limits)
        flat = (
            isinstance(tree, list)
            and len(tree) == len(frame.arrays)
            and all(type(node) is dict and node.get("a") == i for i, node in enumerate(tree))
        )
        shape.plan = (limits.max_depth, flat, tree)
        return result
    if plan[1]:
        return list(frame.arrays)
    return _build(plan[2], frame.arrays)


def _build(node: Any, arrays: Sequence[np.ndarray]) -> Any:
    """A checked sample tree rebuilt around ``arrays`` (see :func:`frame_samples`)."""
    if type(node) is list:
        return [_build(v, arrays) for v in node]
    if type(node) is dict:
        ((tag, body),) = node.items()
        if tag == "a":
            return arrays[body]
        if tag == "s":
            return arrays[body][()]
        if tag == "t":
            return tuple(_build(v, arrays) for v in body)
        return {k: _build(v, arrays) for k, v in body.items()}
    return node


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
