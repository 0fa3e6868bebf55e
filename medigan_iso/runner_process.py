"""Spawn, talk to and shut down one runner subprocess: the only module that starts a runner.

A :class:`RunnerProcess` launches ``<env python> -I -m medigan_iso_runner`` (the runner's contract is the
docstring of ``medigan_iso_runner.__main__``), checks its hello, loads a model package and streams generated
batches back. It owns the subprocess lifecycle and the three clocks (spawn/load -> ready, inactivity between
frames, shutdown grace); it does not know about catalogues, packages or envs (the api layer passes an
interpreter and a package root). Protocol errors from ``medigan_iso_runner.protocol`` are translated to
:class:`medigan_iso.errors.ProtocolError` here, once.

Hygiene: the child gets an allow-listed environment (no secrets), a private HOME and TMPDIR that are
deleted on close, its own session and process group, pipes on fds 0-2 (never a tty)
and no other inherited fds.
``command_prefix`` is the seam for confinement (the sandbox prepends e.g. a bwrap argv; its
``PRIVATE_DIR_PLACEHOLDER`` is replaced with the runner's private directory). Prefixed runners spawned from a
thread other than the main thread are spawned from one long-lived thread, because a launcher's parent-death
signal follows the spawning thread. The runner exits on
stdin EOF, when re-parented (a watchdog) and, when spawned from the main thread, by PR_SET_PDEATHSIG, so it
never outlives the host. (PR_SET_PDEATHSIG fires when the spawning *thread* exits, so runners spawned from
other threads rely on the first two.)

Memory: one batch is held at a time; :meth:`RunnerProcess.generate` returns a lazy stream.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import logging
import mmap
import os
import queue
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from medigan_iso_runner import protocol

from medigan_iso.cgroups import RunnerCgroup
from medigan_iso.errors import (
    ModelError,
    ProtocolError,
    ResourceLimitError,
    RunnerCrashedError,
    RunnerError,
    RunnerStartError,
    RunnerTimeoutError,
)
from medigan_iso.sandbox import PRIVATE_DIR_PLACEHOLDER
from medigan_iso.untrusted import get_logger, neutralise

__all__ = [
    "RUNNER_INACTIVITY_TIMEOUT_S",
    "RUNNER_LOG_MAX_BYTES",
    "RUNNER_READY_TIMEOUT_S",
    "RUNNER_SHUTDOWN_GRACE_S",
    "SAMPLE_MEMORY_POLICIES",
    "SHM_MAX_SLOT_BYTES",
    "SHM_MIN_SLOT_BYTES",
    "SHM_SLOTS",
    "SHM_SLOT_BYTES",
    "SHM_SWITCH_ENV",
    "SHM_THRESHOLD_BYTES",
    "CappedLog",
    "GenerateStream",
    "RunnerProcess",
    "Sample",
    "draw_seed",
    "runner_environment",
    "thread_budget_env",
    "usable_cpus",
]

logger = get_logger(__name__)

RUNNER_READY_TIMEOUT_S = 300.0  # spawn -> hello, and load -> ready (model imports, weights)
RUNNER_INACTIVITY_TIMEOUT_S = 600.0  # between two frames of a generate stream; never a total timeout
RUNNER_SHUTDOWN_GRACE_S = 5.0  # shutdown frame -> SIGTERM; SIGTERM -> SIGKILL takes as long again
DEATH_CHECK_INTERVAL_S = 0.2  # how often a blocked read checks that the runner still lives
STDERR_RING_BYTES = 64 * 1024
RUNNER_LOG_MAX_BYTES = 10 * 1024 * 1024  # per runner log: the first and the last half are kept
STDERR_TAIL_LINES = 40
# Frames: only batch frames carry a payload; outside a generate request none may. A request's frames are
# capped by what it can legitimately produce (issue 16: a 4 GiB frame was accepted whatever was asked).
NO_PAYLOAD_LIMITS = protocol.Limits(max_payload_bytes=0)
DEFAULT_MAX_FRAME_BYTES = 1024**3  # per batch frame when the caller declares no sample size
# Batches smaller than this coalesce into one frame while the runner's writer is busy (issue 17: a frame
# cost ~120 us of fixed overhead, so 64 KiB samples streamed at 18 % of a raw pipe); never above the cap.
COALESCE_BYTES = 1024**2
MAX_LOGGED_FRAMES = 100  # log frames logged per runner; the rest are counted
MAX_KEPT_WARNINGS = 100  # log frames kept on a stream's ``warnings``
# Shared memory (issue 17): batches of at least SHM_THRESHOLD_BYTES that fit a slot travel through a
# sealed memfd of SHM_SLOTS slots instead of the pipe. The segment is sparse: only the pages a batch
# touches are ever allocated, so its size is address space, not memory. The caller sizes the slots
# (a Session from the model's declared image size and the batch size, see generation.shared_slot_bytes);
# SHM_SLOT_BYTES when it does not. A bigger batch takes the pipe, and the host logs it once per runner.
# MEDIGAN_ISO_SHM=0 (or RunnerProcess.start(shared_memory=False)) keeps every batch on the pipe.
SHM_SLOTS = 3
SHM_SLOT_BYTES = 64 * 1024**2
SHM_MIN_SLOT_BYTES = 4 * 1024**2
SHM_MAX_SLOT_BYTES = 1024**3
SAMPLE_MEMORY_POLICIES = ("copy", "view")
SHM_THRESHOLD_BYTES = 256 * 1024
SHM_SWITCH_ENV = "MEDIGAN_ISO_SHM"
PARENT_PID_ENV = "MEDIGAN_ISO_RUNNER_PARENT_PID"
PDEATHSIG_ENV = "MEDIGAN_ISO_RUNNER_PDEATHSIG"

# Passed through to the runner when set; everything else (tokens, proxies' passwords, cloud keys,
# LD_PRELOAD/LD_LIBRARY_PATH) stays out. PYTHON* variables would be ignored anyway: the runner runs with -I.
_ALLOWED_ENV = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "TF_CPP_MIN_LOG_LEVEL",
    "CUDA_VISIBLE_DEVICES",
)

# Thread pools sized from these at their first use (issue 17: every runner let OpenBLAS/OMP/MKL start a
# thread per core; the numpy demo used 2.3x the CPU for 1.2x less speed). torch sizes its intra-op pool from
# OMP_NUM_THREADS, TensorFlow from TF_NUM_INTRAOP_THREADS. Set in the runner's environment at spawn, so they
# hold before the runner imports numpy.
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
)


def thread_budget_env(threads: int) -> dict[str, str]:
    """The runner environment that caps BLAS, OpenMP, torch and TensorFlow pools at ``threads``."""
    if type(threads) is not int or threads < 1:
        raise ValueError(f"a thread budget must be an int >= 1, got {threads!r}")
    return {key: str(threads) for key in THREAD_ENV}


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_T = TypeVar("_T")

# The POSIX locale categories only: ssh's AcceptEnv LC_* lets clients smuggle arbitrary LC_-named variables
# (tokens included) into a session, so a prefix match would pass them on.
_LOCALE_ENV = (
    "LC_ALL",
    "LC_CTYPE",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_COLLATE",
    "LC_MONETARY",
    "LC_MESSAGES",
    "LC_PAPER",
    "LC_NAME",
    "LC_ADDRESS",
    "LC_TELEPHONE",
    "LC_MEASUREMENT",
    "LC_IDENTIFICATION",
)

Sample = Any
"""One generated sample: ndarray | tuple | list | dict | None | str | bytes | int | float | bool."""


def draw_seed() -> int:
    """A fresh seed for a request that gave none (recorded on the stream, so the output is reproducible)."""
    return secrets.randbelow(protocol.SEED_LIMIT)


def runner_environment(
    private_dir: Path,
    *,
    source: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """The runner's environment: the allow-list from ``source``, HOME/TMPDIR in ``private_dir``, overrides.

    An override whose value is None removes the variable.
    """
    source = os.environ if source is None else source
    env = {key: source[key] for key in _ALLOWED_ENV if key in source}
    env.update({key: source[key] for key in _LOCALE_ENV if key in source})
    env.setdefault("PATH", os.defpath)
    home = private_dir / "home"
    tmp = private_dir / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    env.update(HOME=str(home), TMPDIR=str(tmp))
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _shared_memory_default() -> bool:
    """Whether shared memory is on when the caller does not say: unless MEDIGAN_ISO_SHM is 0/false/no/off."""
    return os.environ.get(SHM_SWITCH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _shared_segment(size: int) -> int | None:
    """A sealed memfd of ``size`` bytes (it can neither shrink nor grow), or None where there is none."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None:
        return None
    try:
        fd: int = memfd_create("medigan-iso-shm", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError:
        return None
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    except OSError:
        os.close(fd)
        return None
    return fd


def _page_round(size: int) -> int:
    page = mmap.PAGESIZE
    return -(-size // page) * page


class CappedLog:
    """A log file that keeps the first and the last ``max_bytes / 2`` bytes of what is written to it.

    Issue 16, finding 3: a model wrote 2 GiB of stderr in 3 s into an unbounded log. The head goes straight
    into ``path``; past it, bytes go to ``path.tail`` which is rotated to ``path.tail.1`` whenever it holds
    half the budget, so disk use stays under 1.5 x ``max_bytes`` even if the host dies mid-run. :meth:`close`
    appends a marker with the count of dropped bytes and the last ``max_bytes / 2`` bytes to ``path``.
    """

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max(2, int(max_bytes))
        self._half = self.max_bytes // 2
        self._head = path.open("ab")
        self._written = self._head.tell()
        self._tail_path = path.with_name(path.name + ".tail")
        self._old_tail_path = path.with_name(path.name + ".tail.1")
        self._tail: Any = None
        self._tail_bytes = 0
        self.dropped = 0  # bytes written but not kept

    def write(self, data: bytes) -> None:
        room = self._half - self._written
        if room > 0:
            self._head.write(data[:room])
            self._head.flush()
            self._written += min(room, len(data))
            data = data[room:]
        while data:
            if self._tail is None:
                self._tail = self._tail_path.open("wb")
                self._tail_bytes = 0
            take = min(len(data), self._half - self._tail_bytes)
            self._tail.write(data[:take])
            self._tail.flush()
            self._tail_bytes += take
            data = data[take:]
            if self._tail_bytes >= self._half:
                self._tail.close()
                self._tail = None
                with contextlib.suppress(FileNotFoundError):
                    self.dropped += self._old_tail_path.stat().st_size
                self._tail_path.replace(self._old_tail_path)

    def close(self) -> None:
        if self._tail is not None:
            self._tail.close()
            self._tail = None
        pieces = b""
        for part in (self._old_tail_path, self._tail_path):
            with contextlib.suppress(FileNotFoundError):
                pieces += part.read_bytes()
                part.unlink()
        keep = pieces[-self._half :] if self._half else b""
        self.dropped += len(pieces) - len(keep)
        if self.dropped:
            self._head.write(f"\n[medigan-iso: {self.dropped} bytes of runner stderr dropped]\n".encode())
        self._head.write(keep)
        self._head.close()


class _StderrDrain:
    """Copies the runner's stderr to a capped log file and keeps the last bytes in a bounded ring."""

    def __init__(self, stream: Any, log_path: Path, *, max_log_bytes: int = RUNNER_LOG_MAX_BYTES) -> None:
        self._stream = stream
        self._log_path = log_path
        self._max_log_bytes = max_log_bytes
        self._ring: collections.deque[bytes] = collections.deque()
        self._ring_bytes = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="medigan-iso-runner-stderr", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self._stream.fileno()
        log = CappedLog(self._log_path, max_bytes=self._max_log_bytes)
        try:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                log.write(chunk)
                with self._lock:
                    self._ring.append(chunk)
                    self._ring_bytes += len(chunk)
                    while self._ring_bytes > STDERR_RING_BYTES and len(self._ring) > 1:
                        self._ring_bytes -= len(self._ring.popleft())
        finally:
            log.close()

    def tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        with self._lock:
            data = b"".join(self._ring)
        text = data.decode("utf-8", errors="surrogateescape")  # neutralise shows undecodable bytes as \xNN
        return "\n".join(text.split("\n")[-lines:])

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)


def _descendant_with_ns_pid(root: int, ns_pid: int, *, max_depth: int = 4) -> int | None:
    """The host pid of the descendant of ``root`` whose innermost pid (NSpid) is ``ns_pid``, if any."""
    parents: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):  # noqa: PTH208 - thousands of names, no Path objects
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:  # noqa: PTH123
                    stat = fh.read()
            except OSError:
                continue
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(name))
    level = [root]
    for _ in range(max_depth):
        level = [child for pid in level for child in parents.get(pid, [])]
        for pid in level:
            try:
                status = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:") and line.split()[-1] == str(ns_pid):
                    return pid
    return None


class _SpawnerThread:
    """A daemon thread that lives as long as the process and runs spawn functions handed to it."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[tuple[bool, Any]]]]
        self._jobs = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="medigan-iso-spawner", daemon=True).start()

    def _loop(self) -> None:
        while True:
            job, reply = self._jobs.get()
            try:
                reply.put((True, job()))
            except BaseException as exc:  # handed back to the caller's thread
                reply.put((False, exc))

    def run(self, job: Callable[[], _T]) -> _T:
        reply: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._jobs.put((job, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]


@functools.cache
def _spawner() -> _SpawnerThread:
    return _SpawnerThread()


class RunnerProcess:
    """One live runner subprocess. Build it with :meth:`start`; use it as a context manager."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        *,
        private_dir: Path,
        log_path: Path,
        drain: _StderrDrain,
        ready_timeout_s: float,
        inactivity_timeout_s: float,
        shutdown_grace_s: float,
        model_id: str | None,
    ) -> None:
        self._popen = popen
        self._private_dir = private_dir
        self.log_path = log_path
        self._drain = drain
        self.ready_timeout_s = ready_timeout_s
        self.inactivity_timeout_s = inactivity_timeout_s
        self.shutdown_grace_s = shutdown_grace_s
        self.model_id = model_id
        assert popen.stdout is not None and popen.stdin is not None
        self._out_fd = popen.stdout.fileno()
        self._in_fd = popen.stdin.fileno()
        os.set_blocking(self._out_fd, False)
        self._poller = select.poll()
        self._poller.register(self._out_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self._read_timeout_s = ready_timeout_s
        self._read_phase = "ready"
        self._read_deadline = time.monotonic() + ready_timeout_s
        self._frame_limits = NO_PAYLOAD_LIMITS
        # header structures already validated: a stream of like batches is checked once per shape (issue 17)
        self._shapes = protocol.ShapeCache()
        self._log_frames = 0
        self._request = 0
        # A weak reference: a stream the caller drops must be collectable so its __del__ can mark the runner.
        self._active_ref: weakref.ref[GenerateStream] | None = None
        self._closed = False
        self._stop_reason: str | None = None
        self.hello: dict[str, Any] = {}
        self._via_launcher = False
        self._cgroup: RunnerCgroup | None = None
        self._pids_refused = 0  # the cgroup's pids.events "max" count already reported
        self.loaded: dict[str, Any] | None = None
        self._shm: protocol.SharedSlots | None = None
        self._shm_fd: int | None = None
        self._shm_slot_bytes = SHM_SLOT_BYTES
        self.sample_memory = "copy"
        self.shared_frames = 0  # frames whose arrays came through shared memory
        self.oversized_batch_bytes = 0  # the largest batch too big for a slot (it took the pipe)
        self._release_fd: int | None = None  # the release pipe's write end until the runner takes it up

    # --- lifecycle ------------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        python: str | os.PathLike[str],
        *,
        log_path: str | os.PathLike[str],
        ready_timeout_s: float = RUNNER_READY_TIMEOUT_S,
        inactivity_timeout_s: float = RUNNER_INACTIVITY_TIMEOUT_S,
        shutdown_grace_s: float = RUNNER_SHUTDOWN_GRACE_S,
        command_prefix: Sequence[str] = (),
        env_overrides: Mapping[str, str | None] | None = None,
        model_id: str | None = None,
        max_log_bytes: int = RUNNER_LOG_MAX_BYTES,
        cgroup: RunnerCgroup | None = None,
        threads: int | None = None,
        shared_memory: bool | None = None,
        shm_slot_bytes: int | None = None,
        sample_memory: str = "copy",
    ) -> RunnerProcess:
        """Spawn a runner with ``python`` and wait (``ready_timeout_s``) for its hello.

        ``threads`` caps the runner's BLAS/OpenMP/torch/TensorFlow thread pools (:func:`thread_budget_env`);
        None leaves them to the environment. ``env_overrides`` win over it.

        With ``cgroup`` the runner joins that group before anything else runs; the runner owns the group
        from then on (its limits become ResourceLimitError, closing kills everything in it and removes it).
        ``shared_memory`` (default: on unless MEDIGAN_ISO_SHM=0) passes a shared-memory segment for big
        batches: SHM_SLOTS slots of ``shm_slot_bytes`` each (default SHM_SLOT_BYTES; clamped to
        SHM_MIN_SLOT_BYTES..SHM_MAX_SLOT_BYTES); a bigger batch, and every batch of a runner that does not
        take the segment up, takes the pipe. ``hello["shared_memory"]`` says what is in use (None: the pipe).
        ``sample_memory`` is ``"copy"`` (arrays are the host's own) or ``"view"``: arrays are read-only
        (writes raise ValueError), and those of shared-memory frames are views of the slot itself, which
        goes back to the runner only when every array viewing it is garbage; they stay valid after close.
        A runner whose slots are all held waits at most 0.1 s, then sends through the pipe: held views
        never stall it.
        Raises RunnerStartError (cannot exec, wrong protocol), RunnerCrashedError, RunnerTimeoutError.
        """
        log = Path(log_path)
        log.parent.mkdir(parents=True, exist_ok=True)
        private_dir = Path(tempfile.mkdtemp(prefix="medigan-iso-runner-"))
        overrides: dict[str, str | None] = {}
        if not command_prefix:
            overrides[PARENT_PID_ENV] = str(os.getpid())
        # PR_SET_PDEATHSIG fires when the spawning *thread* exits: only arm it from the main thread.
        overrides[PDEATHSIG_ENV] = "1" if threading.current_thread() is threading.main_thread() else "0"
        if threads is not None:
            overrides.update(thread_budget_env(threads))
        if sample_memory not in SAMPLE_MEMORY_POLICIES:
            raise ValueError(f"sample_memory must be one of {SAMPLE_MEMORY_POLICIES}, got {sample_memory!r}")
        if shared_memory is None:
            shared_memory = _shared_memory_default()
        slot_bytes = _page_round(
            min(
                max(SHM_SLOT_BYTES if shm_slot_bytes is None else shm_slot_bytes, SHM_MIN_SLOT_BYTES),
                SHM_MAX_SLOT_BYTES,
            )
        )
        shm_fd = _shared_segment(SHM_SLOTS * slot_bytes) if shared_memory else None
        # Slots go back through a pipe of their own, which the runner's model thread drains only when it
        # needs a slot: a release on the frame pipe woke the runner's reader thread (issue 17).
        release_pipe: tuple[int, int] | None = None
        if shm_fd is not None:
            try:
                release_pipe = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(release_pipe[1], False)  # a full pipe never blocks the host
            except OSError:
                if release_pipe is not None:
                    os.close(release_pipe[0])
                    os.close(release_pipe[1])
                    release_pipe = None
                os.close(shm_fd)
                shm_fd = None
        passed: tuple[int, ...] = ()
        if shm_fd is not None and release_pipe is not None:
            wait = int(sample_memory == "copy")  # views: a runner finding every slot held uses the pipe
            overrides[SHM_SWITCH_ENV] = (
                f"{shm_fd}:{SHM_SLOTS}:{slot_bytes}:{SHM_THRESHOLD_BYTES}:{wait}:{release_pipe[0]}"
            )
            passed = (shm_fd, release_pipe[0])  # inherited through a launcher (bwrap) too
        overrides.update(env_overrides or {})
        env = runner_environment(private_dir, overrides=overrides)
        prefix = [part.replace(PRIVATE_DIR_PLACEHOLDER, str(private_dir)) for part in command_prefix]
        argv = [*prefix, os.fspath(python), "-I", "-m", "medigan_iso_runner"]
        if cgroup is not None:
            argv = [*cgroup.join_prefix(), *argv]

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=private_dir,
                close_fds=True,
                pass_fds=passed,
                start_new_session=True,
                bufsize=0,
            )

        try:
            if command_prefix and threading.current_thread() is not threading.main_thread():
                # A launcher's own parent-death signal (bwrap --die-with-parent) follows the spawning
                # *thread*: spawn from a thread that lives as long as this process, not from a worker.
                popen = _spawner().run(spawn)
            else:
                popen = spawn()
        except OSError as exc:
            shutil.rmtree(private_dir, ignore_errors=True)
            if shm_fd is not None:
                os.close(shm_fd)
            if release_pipe is not None:
                os.close(release_pipe[0])
                os.close(release_pipe[1])
            if cgroup is not None:
                cgroup.remove()
            raise RunnerStartError(
                f"cannot start the runner {argv[0]}: {exc}",
                remedy="check that the model env exists (`medigan-iso env list`) and rebuild it if not",
            ) from exc
        if release_pipe is not None:
            os.close(release_pipe[0])  # the runner's end
        assert popen.stderr is not None
        runner = cls(
            popen,
            private_dir=private_dir,
            log_path=log,
            drain=_StderrDrain(popen.stderr, log, max_log_bytes=max_log_bytes),
            ready_timeout_s=ready_timeout_s,
            inactivity_timeout_s=inactivity_timeout_s,
            shutdown_grace_s=shutdown_grace_s,
            model_id=model_id,
        )
        runner._cgroup = cgroup
        runner._via_launcher = bool(command_prefix)
        runner._shm_fd = shm_fd
        runner._release_fd = None if release_pipe is None else release_pipe[1]
        runner._shm_slot_bytes = slot_bytes
        runner.sample_memory = sample_memory
        try:
            runner._handshake()
        except RunnerCrashedError as exc:
            runner._kill()
            raise RunnerStartError(
                f"the runner {argv[-4]} exited before its hello: {exc.message}",
                remedy="the env may lack medigan_iso_runner, msgpack or numpy; rebuild it "
                "(`medigan-iso env build MODEL --rebuild`)",
            ) from exc
        except BaseException:
            runner._kill()
            raise
        return runner

    def _handshake(self) -> None:
        frame = self._receive(timeout_s=self.ready_timeout_s, phase="ready")
        if frame.kind != "hello":
            raise RunnerStartError(f"runner sent {frame.kind!r} before hello")
        version = frame.header.get("protocol")
        if version != protocol.PROTOCOL_VERSION:
            raise RunnerStartError(
                f"runner speaks protocol {version!r}, this host speaks {protocol.PROTOCOL_VERSION}",
                remedy="the env holds an old runner; rebuild it (`medigan-iso env build MODEL --rebuild`)",
            )
        self.hello = dict(frame.header)
        self.hello.pop("kind", None)
        taken_up = self.hello.get("shared_memory") is True  # an older runner ignores the segment
        if self._shm_fd is not None:
            if taken_up:
                try:
                    self._shm = protocol.SharedSlots(
                        self._shm_fd,
                        SHM_SLOTS,
                        self._shm_slot_bytes,
                        views=self.sample_memory == "view",
                        release_fd=self._release_fd,
                    )
                    self._release_fd = None  # the slots own (and close) it now
                except (OSError, ValueError) as exc:
                    raise RunnerStartError(
                        f"cannot map the runner's shared memory: {exc}",
                        remedy=f"set {SHM_SWITCH_ENV}=0 to keep every batch on the pipe",
                    ) from exc
            os.close(self._shm_fd)
            self._shm_fd = None
        if self._release_fd is not None:
            os.close(self._release_fd)
            self._release_fd = None
        self.hello["shared_memory"] = self.shared_memory  # what the host uses, not the runner's bool
        reported = self.hello.get("pid")
        if isinstance(reported, int) and reported != self._popen.pid:
            # In a sandbox's pid namespace the runner knows only its inner pid: report the one this host
            # can signal and wait for, found among the launcher's descendants.
            self.hello["sandbox_pid"] = reported
            self.hello["pid"] = _descendant_with_ns_pid(self._popen.pid, reported)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def held_slots(self) -> int:
        """Shared-memory slots the host holds (with ``sample_memory="view"``: viewed by live arrays)."""
        return 0 if self._shm is None else self._shm.held

    @property
    def shared_memory(self) -> dict[str, Any] | None:
        """The shared-memory transport in use and its counters now; None when every batch takes the pipe.

        ``segment_bytes`` (``slots`` x ``slot_bytes``) is address space: only pages a batch touched are
        memory. ``threshold_bytes`` is the smallest batch it carries, ``samples`` the policy (``"copy"`` or
        ``"view"``), ``frames`` the frames it carried, ``held_slots`` the slots the host holds (views
        alive), ``oversized_batch_bytes`` the largest batch too big for a slot (it took the pipe; 0: none).
        """
        if self._shm is None:
            return None
        return {
            "slots": SHM_SLOTS,
            "slot_bytes": self._shm_slot_bytes,
            "segment_bytes": SHM_SLOTS * self._shm_slot_bytes,
            "threshold_bytes": SHM_THRESHOLD_BYTES,
            "samples": self.sample_memory,
            "frames": self.shared_frames,
            "held_slots": self.held_slots,
            "oversized_batch_bytes": self.oversized_batch_bytes,
        }

    @property
    def release_writes(self) -> int:
        """Slots given back to the runner so far, one byte each on the release pipe (no frame)."""
        return 0 if self._shm is None else self._shm.release_writes

    def _send_releases(self) -> None:
        """Retry the releases the pipe did not take at once (its finalizers write them when they can)."""
        shm = self._shm
        if shm is not None and shm.released and not self._closed and not self._broken:
            shm.flush()

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        """The last lines the runner wrote to stderr (also in :attr:`log_path`)."""
        return self._drain.tail(lines)

    def is_alive(self) -> bool:
        return not self._closed and self._exit_status() is None

    def __enter__(self) -> RunnerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Shut down: shutdown frame (or stdin EOF when busy), grace, SIGTERM to the group, grace, SIGKILL."""
        if self._closed:
            return
        self._closed = True
        if self._active is not None:
            # The runner is busy with a request: stdin EOF (below) stops it at once, a shutdown frame
            # would wait for the whole request.
            self._active._abandon()
            self._stop("it was closed during a generate request")
        if self._exit_status() is None and not self._broken:
            with contextlib.suppress(OSError, RunnerError):
                self._send({"kind": "shutdown"})
            self._wait_exit(self.shutdown_grace_s)
        if self._exit_status() is None:
            with contextlib.suppress(OSError):
                assert self._popen.stdin is not None
                self._popen.stdin.close()  # stdin EOF makes the runner's reader thread exit the process
            self._wait_exit(self.shutdown_grace_s)
        if self._exit_status() is None:
            self._signal_group(signal.SIGTERM)
            self._wait_exit(self.shutdown_grace_s)
        self._kill()

    def _kill(self) -> None:
        """SIGKILL the whole process group (stray grandchildren too), reap, release fds and the temp dir."""
        self._closed = True
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=5)
        for stream in (self._popen.stdin, self._popen.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        if self._cgroup is not None:
            # everything the model started, setsid daemons included (issue 16, finding 4)
            self._cgroup.kill()
            self._cgroup.remove()
        self._drain.join(1.0)
        with contextlib.suppress(OSError):
            assert self._popen.stderr is not None
            self._popen.stderr.close()
        shutil.rmtree(self._private_dir, ignore_errors=True)
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        if self._shm_fd is not None:
            os.close(self._shm_fd)
            self._shm_fd = None
        if self._release_fd is not None:
            os.close(self._release_fd)
            self._release_fd = None

    def _signal_group(self, sig: signal.Signals) -> None:
        # Only while the leader is unreaped (running or zombie) is its pid guaranteed to still name our group.
        if self._popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def _exit_status(self) -> int | None:
        """The runner's wait status if it has exited, without reaping it (so killpg stays safe)."""
        if self._popen.returncode is not None:
            return self._popen.returncode
        try:
            info = os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self._popen.poll()
        if info is None:
            return None
        return -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status

    def _wait_exit(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._exit_status() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    # --- frames ---------------------------------------------------------------------------------------

    def _crashed(self) -> RunnerCrashedError | ResourceLimitError:
        """Reap a dead runner (after killing its group) and describe how it died."""
        self._stop("it crashed")
        if self._cgroup is not None and self._cgroup.oom_killed():
            limit = self._cgroup.limits.memory_bytes
            self._signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=1)
            return ResourceLimitError(
                "memory",
                f"the kernel killed it at its cgroup memory limit of {(limit or 0) / 2**30:.2f} GiB "
                f"(see {self.log_path})",
                model_id=self.model_id,
            )
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=1)
        self._drain.join(1.0)
        code = self._popen.returncode
        signal_name = None
        if code is not None and code < 0:
            try:
                signal_name = signal.Signals(-code).name
            except ValueError:
                signal_name = f"signal {-code}"
        elif self._via_launcher and code is not None and 128 < code < 128 + signal.NSIG:
            # A launcher (bwrap's init) reports a runner killed by a signal as exit code 128 + signal.
            with contextlib.suppress(ValueError):
                signal_name = signal.Signals(code - 128).name
        return RunnerCrashedError(
            returncode=code,
            signal_name=signal_name,
            stderr_tail=self._drain.tail(),
            log_path=self.log_path,
            model_id=self.model_id,
        )

    def _readinto(self, view: memoryview) -> int:
        """Read what the pipe holds; wait under the current clock, noticing a dead runner within a second.

        The fd is non-blocking: a read is tried first and poll() only runs when the pipe is empty, which
        saves a syscall per chunk on MiB-sized frames.
        """
        while True:
            try:
                n = os.readv(self._out_fd, [view])
            except BlockingIOError:
                pass
            else:
                if n == 0:  # EOF: the runner (and anything holding its pipe) is gone
                    self._wait_exit(1.0)
                    raise self._crashed()
                return n
            now = time.monotonic()
            # The clock runs per frame, not per read: a model trickling one byte at a time used to restart
            # it forever (issue 16). A whole frame must arrive within the timeout.
            remaining = self._read_deadline - now
            if remaining <= 0:
                self._stop("a clock ran out")
                raise RunnerTimeoutError(
                    self._read_phase, self._read_timeout_s, stderr_tail=self._drain.tail()
                )
            self._send_releases()
            ready = self._poller.poll(int(min(remaining, DEATH_CHECK_INTERVAL_S) * 1000) + 1)
            if not ready and self._exit_status() is not None:
                raise self._crashed()

    def _receive(self, *, timeout_s: float, phase: str) -> protocol.Frame:
        if self._broken or self._closed:
            raise self._stopped_error()
        self._read_timeout_s = timeout_s
        self._read_phase = phase
        self._read_deadline = time.monotonic() + timeout_s
        self._send_releases()
        try:
            frame = protocol.read_frame(self._readinto, self._frame_limits, self._shm, self._shapes)
        except protocol.ProtocolError as exc:
            if exc.eof or self._exit_status() is not None:
                self._wait_exit(1.0)
                raise self._crashed() from exc
            self._stop("it sent a malformed frame")
            raise ProtocolError(
                f"malformed frame from the runner: {exc.reason}",
                remedy=f"the runner or model wrote to the protocol pipe; see the runner log {self.log_path}",
            ) from exc
        if frame is None:
            self._wait_exit(1.0)
            raise self._crashed()
        if frame.kind not in protocol.RUNNER_KINDS:
            self._stop("it sent a malformed frame")
            raise ProtocolError(f"runner sent a host-only {frame.kind!r} frame")
        if self._shm is not None and "shm" in frame.header:
            self.shared_frames += 1
            if not self._shm.views:  # the bytes are copied out: the runner may fill the slot again
                self._shm.release(frame.header["shm"][0])
        elif frame.kind == "batch" and self._shm is not None and frame.arrays:
            self._note_piped_batch(sum(a.nbytes for a in frame.arrays))
        if self.sample_memory == "view":
            for array in frame.arrays:
                array.flags.writeable = False
        if frame.kind == "log":
            self._log_frames += 1
            if self._log_frames <= MAX_LOGGED_FRAMES:
                level = logging.WARNING if frame.header.get("level") == "warning" else logging.INFO
                logger.log(level, "runner %s: %s", self.pid, frame.header.get("message"))
            elif self._log_frames == MAX_LOGGED_FRAMES + 1:
                logger.warning(
                    "runner %s: more log frames than %d; not logging the rest", self.pid, MAX_LOGGED_FRAMES
                )
        return frame

    def _note_piped_batch(self, nbytes: int) -> None:
        """A batch too big for a slot took the pipe: say so once per runner (the Session sizes the next)."""
        if nbytes <= self._shm_slot_bytes or nbytes <= self.oversized_batch_bytes:
            return
        first = not self.oversized_batch_bytes
        self.oversized_batch_bytes = nbytes
        if first:
            logger.warning(
                "runner %s (%s): a batch of %.1f MiB is larger than its shared-memory slots of %.1f MiB and "
                "went through the pipe (slower); a runner started for this batch size gets bigger slots "
                "(Session.release(model) restarts it)",
                self.pid,
                neutralise(self.model_id or "no model id", max_chars=80),
                nbytes / 2**20,
                self._shm_slot_bytes / 2**20,
            )

    def _send(self, header: dict[str, Any], arrays: Sequence[Any] = ()) -> None:
        try:
            protocol.write_frame(lambda view: os.write(self._in_fd, view), header, arrays)
        except protocol.ProtocolError as exc:
            raise TypeError(f"cannot send a {header.get('kind')} frame to the runner: {exc.reason}") from exc
        except BrokenPipeError as exc:
            self._wait_exit(1.0)
            raise self._crashed() from exc

    def _model_error(self, header: Mapping[str, Any]) -> ModelError | ResourceLimitError:
        refused = self._cgroup.pids_refused() if self._cgroup is not None else 0
        if refused > self._pids_refused:
            # a fork or thread was refused by pids.max: the group is full of the model's processes, so
            # this runner cannot be trusted to work again
            self._pids_refused = refused
            self._stop("it hit its process limit")
            limit = self._cgroup.limits.pids if self._cgroup is not None else None
            return ResourceLimitError(
                "processes",
                f"the model started more than {limit} processes/threads and then raised "
                f"{neutralise(header.get('type', 'Exception'), max_chars=200)}",
                model_id=self.model_id,
            )
        return ModelError(
            str(header.get("type", "Exception")),
            str(header.get("message", "")),
            str(header.get("traceback", "")),
            model_id=self.model_id,
        )

    # --- operations -----------------------------------------------------------------------------------

    def load(
        self,
        package_root: str | os.PathLike[str],
        *,
        model_file: str | os.PathLike[str],
        package_name: str,
        generate_function: str = "generate",
        custom_defaults: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Import the model package in the runner; return the ready header (module, load_s).

        Raises ModelError when the package's import raises or has no such generate function.
        """
        self._check_idle()
        self._send(
            {
                "kind": "load",
                "protocol": protocol.PROTOCOL_VERSION,
                "package_root": os.fspath(package_root),
                "package_name": package_name,
                "model_file": os.fspath(model_file),
                "generate_function": generate_function,
                "custom_defaults": dict(custom_defaults or {}),
            }
        )
        while True:
            frame = self._receive(timeout_s=self.ready_timeout_s, phase="ready")
            if frame.kind == "ready":
                self.loaded = dict(frame.header)
                return self.loaded
            if frame.kind == "error":
                raise self._model_error(frame.header)
            if frame.kind != "log":
                self._stop("it sent a malformed frame")
                raise ProtocolError(f"runner sent {frame.kind!r} while loading")

    def generate(
        self,
        n: int,
        *,
        batch_size: int,
        seed: int | None = None,
        batch_offset: int = 0,
        kwargs: Mapping[str, Any] | None = None,
        save_images: bool = False,
        output_path: str | os.PathLike[str] | None = None,
        max_sample_bytes: int | None = None,
    ) -> GenerateStream:
        """Start generating ``n`` samples in batches; iterate the stream for one list of samples per batch.

        Batch ``i`` of the request is the job's global batch ``batch_offset + i``, seeded with
        ``protocol.batch_seed(seed, batch_offset + i)`` (the runner's determinism contract). Without a seed
        one is drawn; ``stream.seed`` records it. With ``save_images`` the model writes files into
        ``output_path`` (medigan naming) and the stream yields nothing; read ``stream.files`` (a count) and
        ``stream.saved`` (per batch: global index and file names) afterwards. Closing the stream early
        cancels the request. ``max_sample_bytes`` bounds the array bytes of one sample: a batch frame may
        carry at most ``batch_size`` times that and the request ``n`` times that (ResourceLimitError /
        ProtocolError beyond); without it a batch frame is capped at ``DEFAULT_MAX_FRAME_BYTES``.
        """
        if n < 0 or batch_size < 1 or batch_offset < 0:
            raise ValueError(
                f"need n >= 0, batch_size >= 1 and batch_offset >= 0, "
                f"got n={n} batch_size={batch_size} batch_offset={batch_offset}"
            )
        if seed is None:
            seed = draw_seed()
        if not 0 <= seed < protocol.SEED_LIMIT:
            raise ValueError(f"seed must be in [0, 2**63), got {seed}")
        if save_images and output_path is None:
            raise ValueError("save_images=True needs an output_path")
        self._check_idle()
        if self.loaded is None:
            raise RunnerError("generate called before load", remedy="call load(package_root, ...) first")
        self._send_releases()
        try:
            kwargs_tree, kwargs_arrays = protocol.pack_samples(dict(kwargs or {}))
        except protocol.ProtocolError as exc:
            raise TypeError(f"model kwargs cannot be sent to the runner: {exc.reason}") from exc
        if max_sample_bytes is not None and max_sample_bytes > 0:
            frame_cap = min(batch_size * max_sample_bytes, protocol.MAX_PAYLOAD_BYTES)
            total_cap: int | None = n * max_sample_bytes
        else:
            frame_cap, total_cap = DEFAULT_MAX_FRAME_BYTES, None
        self._request += 1
        self._send(
            {
                "kind": "generate",
                "coalesce_bytes": min(COALESCE_BYTES, frame_cap),
                "request": self._request,
                "n": n,
                "batch_size": batch_size,
                "batch_offset": batch_offset,
                "seed": seed,
                "kwargs": kwargs_tree,
                "save_images": save_images,
                "output_path": None if output_path is None else os.fspath(output_path),
            },
            kwargs_arrays,
        )
        stream = GenerateStream(
            self,
            self._request,
            n,
            seed=seed,
            batch_size=batch_size,
            batch_offset=batch_offset,
            total_bytes_cap=total_cap,
        )
        self._frame_limits = protocol.Limits(max_payload_bytes=frame_cap)
        self._active = stream
        return stream

    def cancel(self) -> None:
        """Ask the runner to stop the current generate request after the batch in flight."""
        if self._active is not None:
            self._active.cancel()

    @property
    def _active(self) -> GenerateStream | None:
        return None if self._active_ref is None else self._active_ref()

    @_active.setter
    def _active(self, stream: GenerateStream | None) -> None:
        self._active_ref = None if stream is None else weakref.ref(stream)

    @property
    def _broken(self) -> bool:
        return self._stop_reason is not None

    def _stop(self, reason: str) -> None:
        """Mark the runner unusable; the first reason is the one reported."""
        if self._stop_reason is None:
            self._stop_reason = reason

    def _stopped_error(self) -> RunnerError:
        reason = self._stop_reason or "it was closed"
        return RunnerError(f"this runner has stopped: {reason}", remedy="start a new RunnerProcess")

    def _check_idle(self) -> None:
        if self._closed or self._broken:
            raise self._stopped_error()
        if self._active is not None:
            raise RunnerError(
                "a generate stream of this runner is still open", remedy="exhaust or close() it first"
            )


def _count_field(runner: RunnerProcess, header: Mapping[str, Any], key: str) -> int:
    """A non-negative int field of a runner frame; anything else is a protocol error, not a TypeError."""
    value = header.get(key, 0)
    if type(value) is not int or value < 0:
        runner._stop("it sent a malformed frame")
        raise ProtocolError(f"runner frame field {key!r} must be a non-negative int, got {value!r:.80}")
    return value


class GenerateStream(Iterator[list[Sample]]):
    """The batches of one generate request, read lazily (one batch in host memory at a time).

    ``seed``, ``batch_size`` and ``batch_offset`` are the request's (the seed drawn when none was given);
    ``batch_index`` is the global index of the batch last returned. After exhaustion: ``produced``
    (samples received), ``shortfall`` (asked but not returned by the model), ``cancelled``, ``files`` (files
    written with save_images), ``saved`` (with save_images: ``(global batch index, file names)`` per
    batch, also passed to ``on_saved`` as each batch lands), ``warnings`` (the runner's log frames).
    A frame may carry several small batches (the runner coalesces them while its writer is busy); they are
    yielded one list per batch all the same, and ``frames`` counts the frames.
    """

    def __init__(
        self,
        runner: RunnerProcess,
        request: int,
        requested: int,
        *,
        seed: int | None = None,
        batch_size: int | None = None,
        batch_offset: int = 0,
        total_bytes_cap: int | None = None,
    ) -> None:
        self._runner = runner
        self.request = request
        self.requested = requested
        self.max_batches = -(-requested // batch_size) if batch_size else None
        self.total_bytes_cap = total_bytes_cap
        self.bytes_received = 0
        self.batches = 0
        self.frames = 0  # batch frames: fewer than batches when small batches were coalesced
        self.dropped_warnings = 0
        self.seed = seed
        self.batch_size = batch_size
        self.batch_offset = batch_offset
        self.batch_index: int | None = None
        self.saved: list[tuple[int, list[str]]] = []
        # Called with (global batch index, file names) as each save_images batch lands (the manifest).
        self.on_saved: Callable[[int, list[str]], None] | None = None
        self.produced = 0
        self.shortfall = 0
        self.files = 0
        self.cancelled = False
        self.finished = False
        self.warnings: list[str] = []
        self._cancel_sent = False
        # (global index, samples) of the batches of a coalesced frame not yet returned
        self._ready: collections.deque[tuple[int | None, list[Sample]]] = collections.deque()

    @property
    def runner_hello(self) -> dict[str, Any]:
        """The hello of the runner serving this request (versions, seeding scheme, sandbox layers)."""
        return dict(self._runner.hello)

    def __iter__(self) -> GenerateStream:
        return self

    def __next__(self) -> list[Sample]:
        if self._ready:
            self.batch_index, samples = self._ready.popleft()
            return samples
        runner = self._runner
        while not self.finished:
            try:
                frame = runner._receive(timeout_s=runner.inactivity_timeout_s, phase="inactivity")
            except BaseException:
                self._finish()
                raise
            header = frame.header
            if frame.kind != "log" and header.get("request") != self.request:
                self._finish()
                runner._stop("it sent a malformed frame")
                raise ProtocolError(f"runner answered request {header.get('request')!r}, not {self.request}")
            if frame.kind == "batch":
                self.frames += 1
                self.batches += 1
                # a frame read through the shape cache knows its payload size (its arrays' specs)
                shape = frame.shape
                if shape is not None:
                    self.bytes_received += shape.declared
                else:
                    self.bytes_received += sum(a.nbytes for a in frame.arrays)
                self._check_caps()
                try:
                    samples = protocol.frame_samples(frame)
                except protocol.ProtocolError as exc:
                    self._finish()
                    runner._stop("it sent a malformed frame")
                    raise ProtocolError(f"malformed batch from the runner: {exc.reason}") from exc
                if not isinstance(samples, list):
                    self._finish()
                    runner._stop("it sent a malformed frame")
                    raise ProtocolError("a batch frame must carry a list of samples")
                counts = self._batch_counts(header, len(samples))
                if len(counts) > 1:
                    self.batches += len(counts) - 1
                    self._check_caps()
                self.produced += len(samples)
                if self.produced > self.requested:
                    self._finish()
                    runner._stop("it sent a malformed frame")
                    raise ProtocolError(
                        f"the runner sent {self.produced} samples for a request of {self.requested}"
                    )
                if self._cancel_sent:
                    continue
                self.batch_index = first = _int_field(header, "index")
                if len(counts) > 1:
                    start = 0
                    for offset, count in enumerate(counts):
                        index = None if first is None else first + offset
                        self._ready.append((index, samples[start : start + count]))
                        start += count
                    self.batch_index, samples = self._ready.popleft()
                return samples
            if frame.kind == "progress":
                self.files += _count_field(runner, header, "files")
                names = header.get("names")
                index = _int_field(header, "index")
                if isinstance(names, list) and index is not None:
                    saved = [str(name) for name in names]
                    self.saved.append((index, saved))
                    if self.on_saved is not None:
                        self.on_saved(index, saved)
            elif frame.kind == "log":
                if len(self.warnings) < MAX_KEPT_WARNINGS:
                    self.warnings.append(neutralise(header.get("message", "")))
                else:
                    self.dropped_warnings += 1
            elif frame.kind == "done":
                self.shortfall = _count_field(runner, header, "shortfall")
                self.cancelled = bool(header.get("cancelled"))
                self._finish()
            elif frame.kind == "error":
                self._finish()
                raise runner._model_error(header)
            else:
                self._finish()
                runner._stop("it sent a malformed frame")
                raise ProtocolError(f"runner sent {frame.kind!r} during generate")
        raise StopIteration

    def _batch_counts(self, header: Mapping[str, Any], total: int) -> list[int]:
        """The sample count of each batch a frame holds: ``batches`` of a coalesced frame, else one batch."""
        counts = header.get("batches")
        if counts is None:
            return [total]
        if (
            type(counts) is not list
            or not counts
            or any(type(c) is not int or c < 0 for c in counts)
            or sum(counts) != total
        ):
            self._finish()
            self._runner._stop("it sent a malformed frame")
            raise ProtocolError(
                f"a coalesced batch frame's counts {counts!r:.80} do not add up to its {total} samples"
            )
        return counts

    def _check_caps(self) -> None:
        runner = self._runner
        if self.max_batches is not None and self.batches > self.max_batches:
            self._finish()
            runner._stop("it sent a malformed frame")
            raise ProtocolError(
                f"the runner sent {self.batches} batch frames for a request of at most {self.max_batches}"
            )
        if self.total_bytes_cap is not None and self.bytes_received > self.total_bytes_cap:
            self._finish()
            runner._stop("it sent more output than the request allows")
            raise ResourceLimitError(
                "output",
                f"the model sent {self.bytes_received} bytes for {self.requested} samples, more than the "
                f"{self.total_bytes_cap} bytes its declared image size allows",
                model_id=runner.model_id,
                remedy="check the model's image_size in the catalogue; a model that returns larger samples "
                "than it declares is refused",
            )

    def _finish(self) -> None:
        self.finished = True
        if self._runner._active is self:
            self._runner._active = None
            self._runner._frame_limits = NO_PAYLOAD_LIMITS

    def cancel(self) -> None:
        """Ask the runner to stop; batches still in flight are read and dropped by the next iteration."""
        if self.finished or self._cancel_sent:
            return
        self._cancel_sent = True
        self._runner._send({"kind": "cancel", "request": self.request})

    def close(self) -> None:
        """Cancel and drain to the runner's ``done`` so the runner stays usable for the next request."""
        if self.finished:
            return
        try:
            self.cancel()
            for _ in self:
                pass
        except RunnerError:
            self._finish()
            raise

    def _abandon(self) -> None:
        self._finish()

    def __enter__(self) -> GenerateStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # An abandoned, unfinished stream leaves frames in the pipe: the runner cannot be reused. (During
        # __del__ the runner's weak reference still points here, or is already cleared by the cyclic GC.)
        ref = self._runner._active_ref
        if not self.finished and ref is not None and ref() in (self, None):
            self._runner._stop("a generate stream was dropped before it finished")
            self._runner._active = None


def _int_field(header: Mapping[str, Any], key: str) -> int | None:
    value = header.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
