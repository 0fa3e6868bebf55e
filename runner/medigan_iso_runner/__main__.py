"""Run one medigan model inside its own env and serve it to the host over a frame pipe.

This is the program ``medigan_iso.runner_process`` starts; it owns loading the model package, calling its
generate function and streaming the results. It imports nothing from medigan_iso, only the stdlib, msgpack
and numpy, and is written for Python >= 3.7 (TensorFlow 1.15 models need 3.7; ruff checks this directory
with target py37). Frame format: ``medigan_iso_runner.protocol``.

Contract
--------
argv
    ``<env python> -I -m medigan_iso_runner`` (no arguments; ``-I`` keeps PYTHONPATH, user site and the cwd
    off ``sys.path``).
env
    ``MEDIGAN_ISO_RUNNER_PARENT_PID`` (optional): the host's pid. After arming PR_SET_PDEATHSIG (SIGKILL,
    Linux) the runner exits with code 0 if its parent is no longer that pid (the host died before the signal
    was armed). When
    absent (a launcher such as bwrap sits between host and runner) the runner only checks that it was not
    re-parented to init; ``1`` means the runner's parent is the init of a sandbox's pid namespace.
    ``MEDIGAN_ISO_RUNNER_PDEATHSIG=0`` skips PR_SET_PDEATHSIG (the host sets it when it
    spawns from a non-main thread: the signal fires when the spawning *thread* exits); a watchdog thread
    still exits the runner within a second of being re-parented. ``MEDIGAN_ISO_SHM``
    (``fd:slots:slot_size:threshold:wait:release_fd``, optional) names an inherited sealed memfd of
    ``slots`` slots for big batches and the read end of the host's release pipe (see ``_SharedWriter``);
    the runner maps the memfd, closes its fd and removes the variable
    before model code runs, and says ``shared_memory: true`` in its hello. Everything else in the
    environment is the host's allow-list.
fds
    0: frames from the host; 1: frames to the host; 2: free-form log text. Before any model code runs the
    runner dups fd 0 and fd 1 to private close-on-exec descriptors for the protocol, then points fd 0 at
    /dev/null and fd 1 at fd 2, so ``print()``, tqdm, C-level writes and ``os.system("echo")`` from model code
    end up in the log instead of corrupting frames. A reader thread owns the input (it records cancels and
    exits the process on EOF); a writer thread owns the output, fed through a one-slot queue with
    snapshots of each batch, so the model computes batch k+1 while batch k is written and at most two
    batches are held.
frames (runner -> host unless marked)
    ``hello`` {protocol, seeding, python, implementation, executable, numpy, msgpack, packages, sandbox, pid}
        first; ``sandbox`` is :func:`sandbox_report`, the confinement seen from inside; ``seeding`` names
        the seeding scheme (``protocol.SEEDING_SCHEME``);
    host ``load`` {protocol, package_root, package_name, model_file, generate_function, custom_defaults}
        -> ``ready`` {module, generate_function, load_s} or ``error``;
    host ``generate`` {request, n, batch_size, batch_offset, seed, kwargs, save_images, output_path};
        kwargs is a sample tree (``protocol.pack_samples``), so arrays such as ``input_latent_vector`` travel
        in the payload; ``batch_offset`` (default 0) is the global index of the request's first batch
        -> per batch: ``batch`` {request, index, requested, count, samples} (arrays in the payload; ``index``
        is the global batch index), or with save_images ``progress`` {request, index, done, total, files,
        names} (``names``: the files that batch wrote); ``log`` {level, message} for warnings (e.g. a batch
        shorter than asked); finally ``done`` {request, requested, produced, shortfall,
        cancelled, files} or ``error`` {request, phase, type, message, traceback}. The runner stays
        loaded after a model error.
    host ``cancel`` {request}: stop that request before its next batch (the batch in flight still arrives);
        ``done`` then says ``cancelled: true``.
    host ``shutdown``: exit with code 0.
    A ``batch`` of at least ``threshold`` bytes that fits a free slot carries ``shm`` [slot, offset,
    nbytes] and no payload: its arrays' bytes are in that slot, which stays the host's until the host
    writes the slot's number (one byte) to the release pipe. A host ``release`` frame is read and ignored.
exit codes
    0 after ``shutdown`` and whenever the host is gone (stdin EOF, a write to a closed pipe, the parent
    died); 2 when the host sent a malformed frame or a different protocol version.
    Any other code or signal comes from model code (``os._exit``, a segfault).

Generation follows medigan: the entry's ``custom`` defaults, overridden by the caller's kwargs, then the
four base args forced (``model_file``, ``num_samples``, ``output_path``, ``save_images``). The package is
imported from ``<package_root>/__init__.py`` as the private module ``_medigan_iso_model_<package_name>``
(non-word characters become ``_``) with the root as its search location, so relative imports work and no
shared ``models`` namespace exists. The model is called once per batch of ``batch_size`` (the last batch
smaller, never empty). A list or tuple return is a batch of samples; an ndarray return is split along its
first axis; None counts as zero samples; extra samples beyond those asked are dropped with a warning. A model
that returns fewer samples than asked is not called again for them: what it returned is streamed and the
shortfall reported.
With ``save_images``, each batch runs the model's own saving into ``<output_path>/batch_<n>`` and its files
are moved to ``<output_path>/batch_<n>_<file>`` (medigan's naming; ``n`` is the global batch index).

Determinism contract
--------------------
A sample's bytes depend only on (catalogue entry, package sha256, env lock, seed, batch size, sample
index): not on how a job is split into requests, on other models running, on the sandbox policy, or on the
machine when the model is deterministic on CPU. To that end the runner seeds every batch, not every
request: before calling the model for global batch ``k`` (``k = batch_offset + i`` for the request's i-th
batch) it seeds ``random``, ``numpy.random`` (with the seed modulo 2**32), torch and TensorFlow with
``protocol.batch_seed(seed, k)``. Sample ``j`` of batch ``k`` is the job's sample ``k * batch_size + j``,
so generating samples 40-79 alone (``batch_offset=4``, batch size 10) gives the bytes of samples 40-79 of
one 0-199 request with the same seed and batch size. torch and TensorFlow are imported right after the
model package loads when the env has them, so a model that imports them lazily is seeded from its first
batch on. The host always sends a seed (it draws one when the caller gave none, and records it); a
``generate`` without a seed leaves the generators alone.
"""

import contextlib
import ctypes
import importlib
import importlib.util
import os
import platform
import queue
import random
import re
import select
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

import msgpack
import numpy as np

from medigan_iso_runner import protocol

PR_SET_PDEATHSIG = 1
PARENT_PID_ENV = "MEDIGAN_ISO_RUNNER_PARENT_PID"
PDEATHSIG_ENV = "MEDIGAN_ISO_RUNNER_PDEATHSIG"
PARENT_POLL_S = 1.0
PIPE_BUFFER_BYTES = 1024 * 1024  # F_SETPIPE_SZ request: fewer wake-ups for MiB-sized frames
F_SETPIPE_SZ = 1031
REPORTED_PACKAGES = ("torch", "tensorflow", "tensorflow-cpu", "keras")
_DIST_INFO = re.compile(r"^([A-Za-z0-9_.]+)-([^-]+)\.dist-info$")
EXIT_OK = 0
EXIT_PROTOCOL = 2
SHM_ENV = "MEDIGAN_ISO_SHM"
SHM_VIEW_WAIT_S = 0.1  # views: how long a batch waits for a slot before it takes the pipe
READ_BUFFER_BYTES = 64 * 1024  # the reader's buffer for host frames
SNAPSHOT_POOL_SIZE = 2  # batch snapshots kept for reuse (one queued, one being written)
DIRECT_MAX_BUFFERS = (
    512  # a batch frame written by the model's thread has at most this many buffers (IOV_MAX)
)


class Channel:
    """The protocol fds: a reader thread (see Runner.read_loop) and a writer thread fed by a 1-slot outbox.

    The writer thread lets the model compute batch k+1 while batch k is still being copied into the pipe;
    the outbox's single slot bounds the runner's memory to two batches. Small batches (issue 17) coalesce
    while the writer is busy: a ``batch`` frame sent while a frame waits in the outbox or is being written
    is snapshotted into a pending frame, and later small batches join it, until it holds the request's
    ``coalesce_bytes`` (sent by the host on ``generate``; 0 or absent: never) or a frame of another kind is
    sent; the writer takes the pending frame as soon as it is free, so no batch waits for the next one. A
    coalesced frame carries ``batches``: the sample count of each batch it holds, in order.

    A batch sent while the writer is idle is written by the sending thread itself, without blocking (the
    out fd is non-blocking): what the pipe takes needs neither a snapshot nor a wake-up of the writer
    thread, and only the rest, if any, is snapshotted for the writer (issue 17: per-frame cost).
    """

    def __init__(self, in_fd: int, out_fd: int) -> None:
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.coalesce_bytes = 0  # of the current request: set by receive() from the generate frame
        # Buffered: the frames one host write carries are read with one
        # read(2), so the reader thread gives up and retakes the GIL once, not once per frame (issue 17).
        # This thread is the fd's only reader.
        self._reader = open(in_fd, "rb", buffering=READ_BUFFER_BYTES, closefd=False)  # noqa: SIM115
        self._cv = threading.Condition()
        self._outbox = None  # type: Optional[Any]
        self._pending = None  # type: Optional[_Pending]
        self._busy = False
        self._pool = []  # type: List[bytearray]
        self._poller = select.poll()
        self._poller.register(out_fd, select.POLLOUT)
        try:
            os.set_blocking(out_fd, False)
            self._direct = True
        except OSError:
            self._direct = False
        self.shm = _SharedWriter.from_env()
        threading.Thread(target=self._write_loop, name="medigan-iso-writer", daemon=True).start()

    def send(self, header: Dict[str, Any], arrays: Any = (), copy: bool = False) -> None:
        """Queue one frame. ``copy`` snapshots the arrays (the model may reuse its buffers next call)."""
        if copy and header.get("kind") == "batch" and self.shm is not None and arrays:
            wire, _ = protocol.wire_specs(arrays)
            nbytes = sum(a.nbytes for a in wire)
            slot = self.shm.acquire() if self.shm.threshold <= nbytes <= self.shm.slot_size else None
            if slot is not None:  # else the pipe: too small, too big, or (views) every slot held
                self.shm.fill(slot, wire)
                shm_header = dict(header)
                shm_header["shm"] = [slot, 0, nbytes]
                self._send_unshared(protocol.encode_frame(shm_header, wire, inline=False))
                return
        if copy and self._direct and header.get("kind") == "batch" and len(arrays) < DIRECT_MAX_BUFFERS:
            with self._cv:
                idle = self._pending is None and self._outbox is None and not self._busy
                if idle:
                    self._busy = True  # the writer thread stays off the pipe while this thread writes
            if idle:
                self._write_now(header, arrays)
                return
        if copy and header.get("kind") == "batch" and self.coalesce_bytes > 0:
            wire = [protocol.wire_array(a) for a in arrays]
            nbytes = sum(a.nbytes for a in wire)
            if nbytes < self.coalesce_bytes and isinstance(header.get("samples"), list):
                with self._cv:
                    if self._pending is not None or self._outbox is not None or self._busy:
                        pending = self._pending
                        if pending is not None and not pending.fits(nbytes):
                            self._pending = None  # detached first: the writer may take it while we wait
                            self._put_locked(pending.frame())
                            pending = None
                        if pending is None:
                            buffer = self._spare(self.coalesce_bytes)
                            self._pending = pending = _Pending(buffer, self.coalesce_bytes)
                        pending.add(header, wire)
                        self._cv.notify_all()
                        return
        buffers = protocol.encode_frame(header, arrays)
        snapshot = None
        if copy and len(buffers) > 1:
            total = sum(len(buf) for buf in buffers[1:])
            with self._cv:
                snapshot = self._spare(total)
            target = memoryview(snapshot)
            offset = 0
            for buf in buffers[1:]:
                target[offset : offset + len(buf)] = buf
                offset += len(buf)
            buffers = [buffers[0], target[:total]]
            target = None  # type: ignore[assignment]
        if snapshot is None:
            self._send_unshared(buffers)
            return
        with self._cv:
            pending, self._pending = self._pending, None
            if pending is not None:  # frames keep their order
                self._put_locked(pending.frame())
            self._put_locked((buffers, snapshot))

    def _send_unshared(self, buffers: List[Any]) -> None:
        """Send a frame whose buffers the model cannot change (a header, a shared-memory batch's header).

        When the writer thread is idle and nothing waits, this thread writes it itself: waking the writer
        cost a futex wake-up and two GIL handoffs per batch (issue 17). Otherwise it is queued behind the
        frames before it.
        """
        with self._cv:
            if self._outbox is not None or self._pending is not None or self._busy:
                pending, self._pending = self._pending, None
                if pending is not None:  # frames keep their order
                    self._put_locked(pending.frame())
                self._put_locked((buffers, None))
                return
            self._busy = True  # the writer thread stays off the pipe while this thread writes
        try:
            for buf in buffers:
                view = memoryview(buf)
                while view:
                    try:
                        view = view[os.write(self.out_fd, view) :]
                    except BlockingIOError:  # the out fd is non-blocking (see _write_now)
                        self._poller.poll()
        except OSError:  # the host closed its end: nobody is left to read our frames
            os._exit(EXIT_OK)
        finally:
            view = None  # type: ignore[assignment]
            with self._cv:
                self._busy = False
                # no notify, as in _write_now: every send and flush() runs on this thread, and the writer
                # waits for the outbox or a pending frame only; waking it cost a futex wake-up and a GIL
                # handoff per shared-memory batch (issue 17)

    def _write_now(self, header: Dict[str, Any], arrays: Any) -> None:
        """Write a frame from this thread as far as the pipe takes it; snapshot the rest for the writer."""
        rest = None
        try:
            buffers = protocol.encode_frame(header, arrays)
            try:
                written = os.writev(self.out_fd, buffers)
            except BlockingIOError:
                written = 0
            except OSError:  # the host closed its end: nobody is left to read our frames
                os._exit(EXIT_OK)
            total = sum(len(buf) for buf in buffers)
            if written < total:
                with self._cv:
                    snapshot = self._spare(total - written)
                target = memoryview(snapshot)
                offset = 0
                for buf in buffers:
                    size = len(buf)
                    if written >= size:
                        written -= size
                        continue
                    part = memoryview(buf)[written:] if written else buf
                    written = 0
                    target[offset : offset + len(part)] = part
                    offset += len(part)
                rest = ([target[:offset]], snapshot)
                target = part = None  # type: ignore[assignment]
            buffers = None  # type: ignore[assignment]
        finally:
            with self._cv:
                self._busy = False
                if rest is not None:
                    self._put_locked(rest)  # wakes the writer
                # else nobody waits: the writer waits for the outbox or a pending frame, flush() and
                # _put_locked() run on this thread. Not waking the writer saves a futex and a GIL handoff.

    def _put_locked(self, item: Any) -> None:
        while self._outbox is not None:
            self._cv.wait()
        self._outbox = item
        self._cv.notify_all()

    def _spare(self, size: int) -> bytearray:
        """A snapshot buffer from the pool (reused buffers are already paged in), at least ``size`` long."""
        while self._pool:
            spare = self._pool.pop()
            if len(spare) >= size:
                return spare
        return bytearray(size)

    def flush(self) -> None:
        with self._cv:
            while self._outbox is not None or self._pending is not None or self._busy:
                self._cv.wait()

    def _write_loop(self) -> None:
        out_fd = self.out_fd
        while True:
            with self._cv:
                while self._outbox is None and self._pending is None:
                    self._cv.wait()
                if self._outbox is not None:
                    buffers, snapshot = self._outbox
                    self._outbox = None
                else:
                    buffers, snapshot = self._pending.frame()  # type: ignore[union-attr]
                    self._pending = None
                self._busy = True
                self._cv.notify_all()
            try:
                for buf in buffers:
                    view = memoryview(buf)
                    while view:
                        try:
                            view = view[os.write(out_fd, view) :]
                        except BlockingIOError:  # the out fd is non-blocking (see _write_now)
                            self._poller.poll()
            except OSError:  # the host closed its end: nobody is left to read our frames
                os._exit(EXIT_OK)
            buffers = buf = view = None  # release the batch before waiting for the next one
            with self._cv:
                if snapshot is not None and len(self._pool) < SNAPSHOT_POOL_SIZE:
                    self._pool.append(snapshot)
                snapshot = None
                self._busy = False
                self._cv.notify_all()

    def receive(self) -> Optional[protocol.Frame]:
        frame = protocol.read_frame(self._reader.readinto)
        while frame is not None and frame.kind == "release":
            # slots come back on the release pipe (see _SharedWriter); a release frame frees nothing
            frame = protocol.read_frame(self._reader.readinto)
        if frame is not None and frame.kind == "generate":
            value = frame.header.get("coalesce_bytes")
            self.coalesce_bytes = value if type(value) is int and value > 0 else 0
        return frame


class _SharedWriter:
    """The runner's side of the host's shared-memory segment (issue 17): slots it may fill, in a ring.

    The host passes the segment's fd, its layout and the read end of a release pipe in MEDIGAN_ISO_SHM
    ("fd:slots:slot_size:threshold:wait:release_fd"). A batch of at least ``threshold`` bytes that fits a
    slot is copied into a free slot and its frame names the slot instead of carrying the bytes; the slot
    is free again once the host has written its number (one byte) to the release pipe. Only the model's
    thread reads that pipe, without blocking, when it needs a slot: a release wakes no thread of the
    runner (releases sent as frames woke the reader thread, which took the GIL from the model's thread).
    With ``wait`` 1 (the host copies every slot out at once) a batch waits for a free slot. With 0 (the
    host hands out views, which the caller may keep as long as it likes) a batch waits at most
    SHM_VIEW_WAIT_S for one, then takes the pipe, and so do later batches without waiting until a slot
    comes back: the runner never waits long on a caller holding its views. EOF on the release pipe means
    the host is gone: the runner exits with code 0, as on a write to a closed frame pipe.
    """

    def __init__(
        self, fd: int, slots: int, slot_size: int, threshold: int, wait: int, release_fd: int
    ) -> None:
        import mmap

        if not (0 < slots < 256 and slot_size > 0 and threshold >= 0 and wait in (0, 1)):
            raise ValueError(f"bad layout: {slots} slots of {slot_size} bytes, threshold {threshold}")
        if release_fd < 0 or release_fd == fd:
            raise ValueError(f"bad release fd {release_fd}")
        self.slots = slots
        self.slot_size = slot_size
        self.threshold = threshold
        self.wait = bool(wait)
        os.set_blocking(release_fd, False)
        os.set_inheritable(release_fd, False)  # model subprocesses do not get it
        self._release_fd = release_fd
        self._release_poll = select.poll()
        self._release_poll.register(release_fd, select.POLLIN)
        self._map = mmap.mmap(
            fd, slots * slot_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
        os.close(fd)  # the mapping stays; model code never sees the fd
        self._view = memoryview(self._map)
        self._free = list(range(slots))
        self._starved = False  # views: no slot came back within SHM_VIEW_WAIT_S; cleared by a release

    @classmethod
    def from_env(cls) -> "Optional[_SharedWriter]":
        value = os.environ.pop(SHM_ENV, "")
        if not value:
            return None
        parts = value.split(":")
        try:
            fields = [int(part) for part in parts]
            if len(fields) != 6:
                raise ValueError(f"{SHM_ENV} has {len(fields)} fields, not 6")
            return cls(*fields)
        except (ValueError, TypeError, OSError) as exc:  # e.g. an address-space limit too small for the map
            log(f"shared memory unavailable, using the pipe: {exc}")
            fds = set()
            for part in parts[0:1] + parts[5:6]:  # the memfd and the release pipe, if they are numbers
                with contextlib.suppress(ValueError):
                    fds.add(int(part))
            for fd in fds:
                if fd > 2:  # never the std fds the protocol still uses
                    with contextlib.suppress(OSError):
                        os.close(fd)
            return None

    def _drain(self) -> None:
        """Take every slot number the host has written so far, without blocking; garbage is ignored."""
        while True:
            try:
                data = os.read(self._release_fd, 256)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError:  # not a pipe any more (model code closed it): the pipe transport is left
                self._free = []
                self._starved = True
                self.wait = False
                return
            if not data:  # the host closed its end: nobody is left to read our frames
                os._exit(EXIT_OK)
            for slot in data:
                if slot < self.slots and slot not in self._free:
                    self._free.append(slot)
                    self._starved = False

    def acquire(self) -> Optional[int]:
        """A free slot, or None (views: every slot held); called by the model's thread only."""
        self._drain()
        if not self._free and (self.wait or not self._starved):
            # views: a slot usually comes back within a frame or two; if none does, the caller holds
            # them all, and later batches take the pipe at once until one comes back
            deadline = None if self.wait else time.monotonic() + SHM_VIEW_WAIT_S
            while not self._free and (self.wait or not self._starved):
                if deadline is None:
                    self._release_poll.poll()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self._starved = True
                        break
                    self._release_poll.poll(int(remaining * 1000) + 1)
                self._drain()
        return self._free.pop(0) if self._free else None

    def fill(self, slot: int, wire: List[np.ndarray]) -> None:
        offset = slot * self.slot_size
        for a in wire:
            size = a.nbytes
            if not size:
                continue
            try:  # a memoryview copy: a third of the per-array cost of a numpy slice assignment
                self._view[offset : offset + size] = a.data.cast("B")
            except (TypeError, ValueError):  # a format memoryview cannot cast on this Python
                self._view[offset : offset + size] = a.reshape(-1).view(np.uint8)
            offset += size


class _Pending:
    """Small batch frames merged into one, their arrays snapshotted back to back into one buffer."""

    def __init__(self, buffer: bytearray, limit: int) -> None:
        self.buffer = buffer
        self.limit = min(limit, len(buffer))
        self.used = 0
        self.header = None  # type: Optional[Dict[str, Any]]
        self.samples = []  # type: List[Any]
        self.counts = []  # type: List[int]
        self.arrays = []  # type: List[np.ndarray]

    def fits(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.limit

    def add(self, header: Dict[str, Any], wire: List[np.ndarray]) -> None:
        tree = header.get("samples")
        shifted = protocol.shift_refs(tree, len(self.arrays)) if self.arrays else tree
        for a in wire:
            size = a.nbytes
            view = np.frombuffer(self.buffer, dtype=np.uint8, count=size, offset=self.used)
            view[:] = a.reshape(-1).view(np.uint8)
            self.arrays.append(view.view(a.dtype).reshape(a.shape))
            self.used += size
        if self.header is None:
            self.header = dict(header)
        else:
            self.header["requested"] = self.header.get("requested", 0) + header.get("requested", 0)
            self.header["count"] = self.header.get("count", 0) + header.get("count", 0)
        self.samples.extend(shifted)
        self.counts.append(len(tree))

    def frame(self) -> Any:
        header = dict(self.header or {})
        header["samples"] = self.samples
        if len(self.counts) > 1:
            header["batches"] = self.counts
        buffers = protocol.encode_frame(header, self.arrays)
        self.arrays = []
        if len(buffers) > 1:
            buffers = [buffers[0], memoryview(self.buffer)[: self.used]]
        return buffers, self.buffer


def guard_fds() -> Channel:
    """Move the protocol off fd 0/1 before any model code can write there."""
    in_fd = os.dup(0)  # os.dup returns non-inheritable fds: model subprocesses never see the protocol
    out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    try:
        import fcntl

        fcntl.fcntl(out_fd, F_SETPIPE_SZ, PIPE_BUFFER_BYTES)
    except (ImportError, OSError):  # not a pipe, not Linux, or above /proc/sys/fs/pipe-max-size
        pass
    return Channel(in_fd, out_fd)


def log(message: str) -> None:
    """One line to stderr (the host's log). Never raises: with the host gone, stderr is a broken pipe, and
    the exits that follow a log line must still happen."""
    try:
        sys.stderr.write(f"medigan_iso_runner: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def arm_parent_death_signal() -> None:
    """Die with the host: PR_SET_PDEATHSIG on Linux, a parent watchdog, and a check closing the fork race.

    PR_SET_PDEATHSIG fires when the *thread* that forked us exits, so the host disables it (env
    ``MEDIGAN_ISO_RUNNER_PDEATHSIG=0``) when it spawns from a thread other than its main thread. The
    watchdog thread notices re-parenting within ``PARENT_POLL_S`` in every case; stdin EOF is the third way.
    """
    if sys.platform.startswith("linux") and os.environ.get(PDEATHSIG_ENV, "1") != "0":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    expected = os.environ.get(PARENT_PID_ENV)
    parent = os.getppid()
    # Under bubblewrap the host says "1": the runner's parent is the sandbox's init (pid 1 of its own pid
    # namespace), which dies with bwrap and takes the namespace with it.
    if (expected and expected.isdigit() and int(expected) != parent) or (parent == 1 and expected != "1"):
        log("the host died before the runner started; exiting")
        os._exit(EXIT_OK)
    threading.Thread(target=_watch_parent, args=(parent,), name="medigan-iso-parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            log("the host is gone; exiting")
            os._exit(EXIT_OK)


def package_versions() -> Dict[str, str]:
    """Versions of the frameworks installed in this env, read from dist-info directory names.

    Listing sys.path is ~1 ms; importlib.metadata would add ~25 ms to every spawn.
    """
    wanted = {name.replace("-", "_"): name for name in REPORTED_PACKAGES}
    found = {}  # type: Dict[str, str]
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")  # noqa: PTH208 - names only, no Path objects
        except OSError:
            continue
        for name in names:
            match = _DIST_INFO.match(name)
            if match and match.group(1).lower() in wanted:
                found.setdefault(wanted[match.group(1).lower()], match.group(2))
    return found


NAMESPACES = ("mnt", "net", "pid", "user", "ipc", "uts")
RLIMITS = ("RLIMIT_CORE", "RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC")


def sandbox_report() -> Dict[str, Any]:
    """The confinement this process is under, read from inside (the host compares it with what it asked).

    ``seccomp``/``no_new_privs`` from /proc/self/status; ``namespaces`` as /proc/self/ns link targets (the
    host compares them with its own); ``landlock_abi`` from the version query and ``landlock_enforced``
    from a probe: a Landlock domain that grants nothing on ``/`` itself refuses to open it.
    """
    report = {"seccomp": None, "no_new_privs": None}  # type: Dict[str, Any]
    try:
        with open("/proc/self/status") as status:  # noqa: PTH123 - no Path objects in the hot path
            for line in status:
                key, _, value = line.partition(":")
                if key == "Seccomp":
                    report["seccomp"] = int(value)
                elif key == "NoNewPrivs":
                    report["no_new_privs"] = int(value)
    except (OSError, ValueError):
        pass
    namespaces = {}  # type: Dict[str, str]
    for name in NAMESPACES:
        with contextlib.suppress(OSError):
            namespaces[name] = os.readlink("/proc/self/ns/" + name)
    report["namespaces"] = namespaces
    # a root host's runner switches to an unprivileged uid (RLIMIT_NPROC does not bind for uid 0)
    report["uid"] = os.getuid()
    report["euid"] = os.geteuid()
    report["gid"] = os.getgid()
    abi = 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        abi = max(int(libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_uint32(1))), 0)
    except (OSError, AttributeError):
        pass
    report["landlock_abi"] = abi
    enforced = False
    if abi:
        try:
            os.close(os.open("/", os.O_RDONLY | os.O_DIRECTORY))
        except PermissionError:
            enforced = True
        except OSError:
            pass
    report["landlock_enforced"] = enforced
    limits = {}  # type: Dict[str, List[int]]
    try:
        import resource

        for name in RLIMITS:
            limits[name] = list(resource.getrlimit(getattr(resource, name)))
    except (ImportError, AttributeError, OSError, ValueError):
        pass
    report["rlimits"] = limits
    return report


def hello_header() -> Dict[str, Any]:
    return {
        "kind": "hello",
        "protocol": protocol.PROTOCOL_VERSION,
        "seeding": protocol.SEEDING_SCHEME,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "numpy": np.__version__,
        "msgpack": ".".join(str(part) for part in msgpack.version),
        "packages": package_versions(),
        "sandbox": sandbox_report(),
        "pid": os.getpid(),
    }


ERROR_TYPE_MAX_CHARS = 1024
ERROR_MESSAGE_MAX_CHARS = 64 * 1024
ERROR_TRACEBACK_MAX_CHARS = 256 * 1024


def wire_text(value: Any, max_chars: int) -> str:
    """``value`` as a str msgpack can encode (lone surrogates become ``\\udcff``), at most ``max_chars`` long.

    An error frame must always be sendable: a message that is not UTF-8 or larger than the header cap once
    crashed the runner instead of reaching the host as a ModelError (issue 16).
    """
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        text = f"<unprintable {type(value).__name__}>"
    if not isinstance(text, str):
        text = "<unprintable>"
    dropped = len(text) - max_chars
    if dropped > 0:
        text = text[:max_chars]
    text = str.__str__(text).encode("utf-8", "backslashreplace").decode("utf-8")
    if dropped > 0:
        text += f"...[+{dropped} chars]"
    return text


def error_header(exc: BaseException, phase: str, request: Optional[int] = None) -> Dict[str, Any]:
    kind = type(exc)
    try:
        module, qualname = str(kind.__module__), str(kind.__qualname__)
        name = qualname if module in ("builtins", "__main__") else module + "." + qualname
    except Exception:
        name = "<unnamed exception type>"
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {wire_text(name, ERROR_TYPE_MAX_CHARS)}>"
    try:
        trace = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    except Exception:
        trace = "<traceback unavailable>"
    return {
        "kind": "error",
        "request": request,
        "phase": phase,
        "type": wire_text(name, ERROR_TYPE_MAX_CHARS),
        "message": wire_text(message, ERROR_MESSAGE_MAX_CHARS),
        "traceback": wire_text(trace, ERROR_TRACEBACK_MAX_CHARS),
    }


class Model:
    """A loaded model package: its module, generate function, model file and custom defaults."""

    def __init__(self, header: Dict[str, Any]) -> None:
        root = header["package_root"]
        package_name = str(header.get("package_name") or "model")
        init_file = str(Path(root) / "__init__.py")
        if not Path(init_file).is_file():
            raise FileNotFoundError(f"model package {root} has no __init__.py")
        # A private module name: package_name may be "ProGAN-4ch" or "00023", and models must not meet each
        # other (or a user module) in a shared `models` namespace.
        safe = re.sub(r"\W", "_", package_name)
        module_name = f"_medigan_iso_model_{safe}"
        spec = importlib.util.spec_from_file_location(
            module_name, init_file, submodule_search_locations=[root]
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot build an import spec for {init_file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        function_name = str(header.get("generate_function") or "generate")
        function = getattr(module, function_name, None)
        if not callable(function):
            raise AttributeError(f"model package {root} has no callable {function_name!r}")
        self.module_name = module_name
        self.function_name = function_name
        self.function = function
        self.model_file = str(header["model_file"])
        self.custom_defaults = dict(header.get("custom_defaults") or {})


SEEDED_FRAMEWORKS = ("torch", "tensorflow")


def preload_frameworks() -> None:
    """Import torch and TensorFlow when the env has them, so :func:`seed_everything` seeds them from the
    first batch on even when the model imports them lazily inside its generate function."""
    for name in SEEDED_FRAMEWORKS:
        if name in sys.modules:
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            try:
                importlib.import_module(name)
            except Exception as exc:  # the model may still work without it; say so in the log
                log(f"importing {name} to seed it failed: {exc!r}")


# torch.manual_seed(s) seeds the CPU generator and, for each accelerator (CUDA/ROCm, MPS, XPU, MTIA, a
# privateuse1 backend), seeds it or, while it is not initialised, queues a seed that is applied when it is.
# Queuing formats the Python stack each time: 65-200 us a batch, more from a deeper stack. On a build with
# none of those accelerators the queued seeds can never be applied, so seeding the CPU generator alone
# leaves every generator in the state torch.manual_seed leaves it in (issue 17). The shortcut is taken only
# when torch.manual_seed is torch's own and refers to nothing outside these names; anything else (a newer
# torch seeding another backend, a model that wraps torch.manual_seed) gets torch.manual_seed itself.
_TORCH_MANUAL_SEED_NAMES = frozenset(
    {
        "int",
        "torch",
        "torch.cuda",
        "cuda",
        "torch.mps",
        "mps",
        "torch.xpu",
        "xpu",
        "torch.mtia",
        "mtia",
        "_is_in_bad_fork",
        "manual_seed",
        "manual_seed_all",
        "_seed_custom_device",
        "_manual_seed_impl",
        "default_generator",
    }
)
_torch_cpu_seeders = {}  # type: Dict[int, Any]


def _torch_cpu_seeder(torch: Any) -> Any:
    """torch's own manual_seed when this build has no accelerator it seeds, else None (once per module)."""
    key = id(torch)
    if key in _torch_cpu_seeders:
        return _torch_cpu_seeders[key]
    seeder = None
    try:
        random_module = sys.modules.get("torch.random")
        manual_seed = getattr(random_module, "manual_seed", None)
        names = set()  # type: set
        for function in (manual_seed, getattr(random_module, "_manual_seed_impl", None)):
            code = getattr(function, "__code__", None)
            if code is not None:
                names.update(code.co_names)
        version = getattr(torch, "version", None)
        if (
            manual_seed is not None
            and names <= _TORCH_MANUAL_SEED_NAMES
            and getattr(version, "cuda", None) is None
            and getattr(version, "hip", None) is None
            and getattr(version, "xpu", None) is None
            and not getattr(torch._C, "_has_mps", False)
            and not getattr(torch._C, "_has_xpu", False)
            and callable(getattr(torch.default_generator, "manual_seed", None))
        ):
            seeder = manual_seed
    except Exception:  # an unusual build: torch.manual_seed it is
        seeder = None
    _torch_cpu_seeders[key] = seeder
    return seeder


def seed_torch(torch: Any, seed: int) -> None:
    """``torch.manual_seed(seed)``, without its accelerator seeding on a build that has no accelerator."""
    seeder = _torch_cpu_seeder(torch)
    if seeder is not None and torch.manual_seed is seeder:
        c = torch._C
        # MTIA hooks and privateuse1 backends can be registered at run time: checked every time
        mtia_built = getattr(c, "_mtia_isBuilt", None)
        backend_name = getattr(c, "_get_privateuse1_backend_name", None)
        if not (mtia_built is not None and mtia_built()) and not (
            backend_name is not None and hasattr(torch, backend_name())
        ):
            torch.default_generator.manual_seed(int(seed))
            return
    torch.manual_seed(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "manual_seed"):
        seed_torch(torch, seed)
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "random") and hasattr(tf.random, "set_seed"):
        tf.random.set_seed(seed)


def as_sample_list(result: Any) -> List[Any]:
    if result is None:
        return []
    if isinstance(result, list):
        return result
    if isinstance(result, np.ndarray) and result.ndim >= 1:
        return list(result)
    if isinstance(result, tuple):
        return list(result)
    raise TypeError(f"generate returned a {type(result).__name__}; expected a list of samples")


class Runner:
    """The main loop: handshake, then load/generate/shutdown frames from the reader thread's queue."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.inbox = queue.Queue()  # type: queue.Queue
        self.cancelled = set()  # type: set
        self.lock = threading.Lock()
        self.model = None  # type: Optional[Model]

    def read_loop(self) -> None:
        """Reader thread: queue work, record cancels, exit the process when the host is gone."""
        while True:
            try:
                frame = self.channel.receive()
            except protocol.ProtocolError as exc:
                log(f"bad frame from the host: {exc.reason}")
                os._exit(EXIT_PROTOCOL)
            if frame is None:  # stdin EOF: nobody is left to read our frames
                os._exit(EXIT_OK)
            if frame.kind == "cancel":
                with self.lock:
                    self.cancelled.add(frame.header.get("request"))
                continue
            self.inbox.put(frame)
            if frame.kind == "shutdown":
                return

    def is_cancelled(self, request: Any) -> bool:
        with self.lock:
            return request in self.cancelled

    def serve(self) -> int:
        hello = hello_header()
        hello["shared_memory"] = (
            self.channel.shm is not None
        )  # the host sends "shm" frames' slots back only then
        self.channel.send(hello)
        threading.Thread(target=self.read_loop, name="medigan-iso-reader", daemon=True).start()
        while True:
            frame = self.inbox.get()
            if frame.kind == "shutdown":
                return EXIT_OK
            if frame.kind == "load":
                self.handle_load(frame.header)
            elif frame.kind == "generate":
                self.handle_generate(frame.header, frame.arrays)
            else:
                log(f"unexpected {frame.kind} frame from the host")
                return EXIT_PROTOCOL

    def handle_load(self, header: Dict[str, Any]) -> None:
        if header.get("protocol") != protocol.PROTOCOL_VERSION:
            log(f"host speaks protocol {header.get('protocol')!r}, runner {protocol.PROTOCOL_VERSION}")
            os._exit(EXIT_PROTOCOL)
        started = time.monotonic()
        try:
            self.model = Model(header)
            preload_frameworks()
        except BaseException as exc:
            self.model = None
            self.channel.send(error_header(exc, "load"))
            return
        self.channel.send(
            {
                "kind": "ready",
                "module": self.model.module_name,
                "generate_function": self.model.function_name,
                "load_s": time.monotonic() - started,
            }
        )

    def warn(self, message: str) -> None:
        log(message)
        self.channel.send({"kind": "log", "level": "warning", "message": message})

    def handle_generate(self, header: Dict[str, Any], arrays: List[Any]) -> None:
        request = header.get("request")
        try:
            self.run_generate(header, arrays, request)
        except protocol.ProtocolError as exc:
            self.channel.send(error_header(exc, "encode", request))
        except BaseException as exc:
            self.channel.send(error_header(exc, "generate", request))
        finally:
            with self.lock:
                self.cancelled.discard(request)

    def run_generate(self, header: Dict[str, Any], arrays: List[Any], request: Any) -> None:
        model = self.model
        if model is None:
            raise RuntimeError("generate before a successful load")
        n = int(header["n"])
        batch_size = int(header["batch_size"])
        batch_offset = int(header.get("batch_offset") or 0)
        if n < 0 or batch_size < 1 or batch_offset < 0:
            raise ValueError(
                f"n and batch_offset must be >= 0 and batch_size >= 1, "
                f"got n={n} batch_size={batch_size} batch_offset={batch_offset}"
            )
        save_images = bool(header.get("save_images"))
        output_path = header.get("output_path")
        if save_images and not output_path:
            raise ValueError("save_images needs an output_path")
        kwargs = dict(model.custom_defaults)
        caller = protocol.unpack_samples(header.get("kwargs"), arrays) if "kwargs" in header else None
        if caller is not None and not isinstance(caller, dict):
            raise TypeError(f"kwargs must be a dict, got {type(caller).__name__}")
        kwargs.update(caller or {})
        seed = header.get("seed")
        seed = None if seed is None else int(seed)
        produced = 0
        files = 0
        index = batch_offset
        remaining = n
        cancelled = False
        while remaining > 0:
            if self.is_cancelled(request):
                cancelled = True
                break
            asked = min(batch_size, remaining)
            remaining -= asked
            call = dict(kwargs)
            call.update(model_file=model.model_file, num_samples=asked, save_images=save_images)
            if seed is not None:
                seed_everything(protocol.batch_seed(seed, index))
            if save_images:
                names = self.save_batch(model, call, str(output_path), index)
                files += len(names)
                self.channel.send(
                    {
                        "kind": "progress",
                        "request": request,
                        "index": index,
                        "done": n - remaining,
                        "total": n,
                        "files": len(names),
                        "names": names,
                    }
                )
            else:
                call["output_path"] = output_path
                samples = as_sample_list(model.function(**call))
                if len(samples) > asked:
                    self.warn(
                        f"batch {index}: model returned {len(samples)} samples for {asked} asked; "
                        "extra ones dropped"
                    )
                    samples = samples[:asked]
                elif len(samples) < asked:
                    self.warn(f"batch {index}: model returned {len(samples)} of {asked} samples asked")
                tree, arrays = protocol.pack_samples(samples)
                self.channel.send(
                    {
                        "kind": "batch",
                        "request": request,
                        "index": index,
                        "requested": asked,
                        "count": len(samples),
                        "samples": tree,
                    },
                    arrays,
                    copy=True,
                )
                produced += len(samples)
                del samples, tree, arrays
            index += 1
        asked_total = n - remaining
        self.channel.send(
            {
                "kind": "done",
                "request": request,
                "requested": n,
                "produced": asked_total if save_images else produced,
                "shortfall": 0 if save_images or cancelled else asked_total - produced,
                "cancelled": cancelled,
                "files": files,
            }
        )

    def save_batch(self, model: Model, call: Dict[str, Any], output_path: str, index: int) -> List[str]:
        """medigan's save_images: the model writes into batch_<n>/, files move to batch_<n>_<file>.

        Returns the new names (relative to ``output_path``), in sorted order."""
        out_dir = Path(output_path)
        batch_dir = out_dir / f"batch_{index}"
        batch_dir.mkdir(parents=True, exist_ok=True)
        call["output_path"] = str(batch_dir)
        model.function(**call)
        names = []  # type: List[str]
        for entry in sorted(batch_dir.iterdir()):
            name = f"batch_{index}_{entry.name}"
            entry.rename(out_dir / name)
            names.append(name)
        batch_dir.rmdir()
        return names


def main() -> int:
    channel = guard_fds()
    arm_parent_death_signal()
    code = Runner(channel).serve()
    channel.flush()
    return code


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: model threads (non-daemon) must not keep the runner alive after shutdown.
    os._exit(code)
