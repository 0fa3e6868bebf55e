"""Generating samples: where the catalogue, packages, envs and runners meet.

Owns :class:`Session` (one warm runner per model, respawned after a crash with backoff, given up after
repeated crashes) and the one-shot :func:`generate` / :func:`stream`. It never imports model code: every
sample arrives over a runner's pipe. It spawns runners only through :mod:`medigan_iso.runner_process`,
builds envs only through :mod:`medigan_iso.envs`, and fetches packages only through
:mod:`medigan_iso.packages`. It never prints.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from medigan_iso_runner.protocol import SEED_LIMIT

from medigan_iso.catalogue import Catalogue, ConfigSource, ModelEntry, load_catalogue
from medigan_iso.cgroups import RunnerCgroup
from medigan_iso.envs import ModelEnv, ensure_env
from medigan_iso.envs.asof import planned_as_of
from medigan_iso.errors import (
    EnvError,
    EnvNotBuiltError,
    ProtocolError,
    ResourceLimitError,
    RunnerCrashedError,
    RunnerError,
    RunnerStartError,
    RunnerTimeoutError,
    SandboxError,
)
from medigan_iso.images import non_regular_entries, prepare_output_dir
from medigan_iso.logfiles import auto_prune
from medigan_iso.manifest import ManifestWriter, RunContext, entry_sha256, file_sha256, jsonable
from medigan_iso.packages import ModelPackage, ensure_package
from medigan_iso.paths import BUNDLE_ENV, cache_layout
from medigan_iso.runner_process import (
    RUNNER_INACTIVITY_TIMEOUT_S,
    RUNNER_READY_TIMEOUT_S,
    SAMPLE_MEMORY_POLICIES,
    THREAD_ENV,
    GenerateStream,
    RunnerProcess,
    Sample,
    draw_seed,
    usable_cpus,
)
from medigan_iso.sandbox import (
    CGROUP_REMEDY,
    HostSupport,
    SandboxConfig,
    plan_launch,
    probe_host,
    resolve_policy,
    stricter,
    verify_hello,
)
from medigan_iso.untrusted import get_logger, neutralise

__all__ = [
    "BUILD_POLICY_ENV",
    "DEFAULT_BATCH_SIZE",
    "Batches",
    "PreparedModel",
    "Samples",
    "Session",
    "generate",
    "stream",
]

logger = get_logger(__name__)
_RUNNER_SERIAL = itertools.count(1)  # names runner logs apart (CacheLayout.runner_log)

DEFAULT_BATCH_SIZE = 32  # medigan saves in batches of 32; also bounds host memory per batch
RESPAWN_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)  # wait before the k-th respawn after consecutive crashes
MAX_CONSECUTIVE_CRASHES = 3  # a Session stops respawning a model's runner after this many crashes in a row
# Build policy (CONTRACTS.md item 3): "never" means no env is ever built at run time; anything else (unset,
# "auto") builds a model's env on first use. A deployment says it once, here, instead of in every call.
BUILD_POLICY_ENV = "MEDIGAN_ISO_BUILD"
BUILD_POLICIES = ("auto", "never")


def build_allowed_by_environment() -> bool:
    """Whether ``$MEDIGAN_ISO_BUILD`` allows building envs at run time (unset or ``auto``: yes)."""
    value = os.environ.get(BUILD_POLICY_ENV, "").strip().lower()
    if value in ("", "auto"):
        return True
    if value == "never":
        return False
    raise EnvError(
        f"{BUILD_POLICY_ENV}={value[:40]!r} is not a build policy",
        remedy=f"set {BUILD_POLICY_ENV} to one of {', '.join(BUILD_POLICIES)}, or unset it",
    )


@dataclass(frozen=True)
class PreparedModel:
    """What a model needs before a runner can load it: its entry, extracted package and built env."""

    entry: ModelEntry
    package: ModelPackage
    env: ModelEnv


class Samples(list[Sample]):
    """The samples of one :meth:`Session.generate` request: a list, plus how to make it again.

    ``seed`` is the request's seed (drawn when the caller gave none), ``batch_size`` and ``batch_offset``
    its batch layout: sample ``i`` of this list is the job's sample ``batch_offset * batch_size + i``
    (when the model returned every sample asked).
    """

    model_id: str
    seed: int
    batch_size: int
    batch_offset: int


class Batches(Iterator[list[Sample]]):
    """The batches of one :meth:`Session.stream` request, one list of samples each.

    ``seed`` (drawn when the caller gave none), ``batch_size`` and ``batch_offset`` are known before the
    first batch; ``batch_index`` is the global index of the batch last returned (None before the first).
    After the last batch ``shortfall`` is the count of samples the model did not return. :meth:`close`
    cancels the request and keeps the runner warm.
    """

    def __init__(
        self,
        *,
        model_id: str,
        num_samples: int,
        seed: int,
        batch_size: int,
        batch_offset: int,
    ) -> None:
        self._batches: Iterator[list[Sample]] = iter(())
        # Shared with the generator that runs the request: a holder, not a reference back to self, so that
        # dropping this object (``break`` in a for loop) closes the generator at once (no reference cycle
        # waiting for the garbage collector while the model's runner stays locked).
        self._holder: list[GenerateStream] = []
        self._context: Callable[[GenerateStream, str, Sequence[str] | None], RunContext] | None = None
        self.model_id = model_id
        self.num_samples = num_samples
        self.seed = seed
        self.batch_size = batch_size
        self.batch_offset = batch_offset

    @property
    def _request(self) -> GenerateStream | None:
        return self._holder[0] if self._holder else None

    @property
    def batch_index(self) -> int | None:
        return None if self._request is None else self._request.batch_index

    @property
    def shortfall(self) -> int:
        return 0 if self._request is None else self._request.shortfall

    @property
    def runner_warnings(self) -> list[str]:
        return [] if self._request is None else list(self._request.warnings)

    def run_context(self, *, writer: str, command: Sequence[str] | None = None) -> RunContext:
        """The provenance of this request for a :class:`~medigan_iso.manifest.ManifestWriter`: model,
        entry, package, env, runner versions, seed and batch layout. Available once the request started
        (after the first batch, or after the stream ended)."""
        request = self._request
        if request is None or self._context is None:
            raise RuntimeError("run_context() needs a started request: call it after the first batch")
        return self._context(request, writer, command)

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> list[Sample]:
        return next(self._batches)

    def close(self) -> None:
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Batches:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass
class _Slot:
    """One model's warm runner inside a Session; ``lock`` serialises requests to that runner."""

    prepared: PreparedModel
    lock: threading.Lock = field(default_factory=threading.Lock)
    runner: RunnerProcess | None = None
    output_dir: Path | None = None  # the writable directory the runner's sandbox was given
    consecutive_crashes: int = 0
    last_failure: BaseException | None = None
    largest_batch: int = 0  # the largest batch_size asked of this model: its next runner's slots fit it
    oversized_batch_bytes: int = 0  # the largest batch that was too big for a runner's shared-memory slot


PROGRESS_ENV = "MEDIGAN_ISO_PROGRESS"  # "1" forces the progress bar on, "0" off; unset: when interactive
PROGRESS_MIN_SAMPLES = 64  # shorter requests show no bar


def _interactive() -> bool:
    """A Jupyter kernel (stderr is not a terminal there, but the page shows a bar) or a terminal."""
    shell = sys.modules.get("IPython")
    if shell is not None and "ipykernel" in sys.modules:
        get_ipython = getattr(shell, "get_ipython", None)
        if get_ipython is not None and get_ipython() is not None:
            return True
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def _progress_bar(total: int, description: str) -> Any:
    """A tqdm.auto bar (a widget in notebooks, text in terminals) for long interactive requests, else None.

    Off when not interactive (pipes, CI, logs) and when tqdm is not installed (extra ``notebook``).
    """
    wanted = os.environ.get(PROGRESS_ENV, "").strip()
    if wanted == "0" or (wanted != "1" and (total < PROGRESS_MIN_SAMPLES or not _interactive())):
        return None
    import warnings

    with warnings.catch_warnings():  # tqdm.auto warns when ipywidgets is missing, then draws text
        warnings.simplefilter("ignore")
        try:
            from tqdm import tqdm as text_bar
            from tqdm.auto import tqdm
        except ImportError:
            return None
        try:
            return tqdm(total=total, desc=description, unit="sample", leave=False)
        except ImportError:  # older tqdm in a kernel without ipywidgets: no widget, text then
            return text_bar(total=total, desc=description, unit="sample", leave=False)


class Session:
    """Keeps one warm runner per model so repeated calls do not reload weights.

    Thread-safe: different models run concurrently (each in its own runner), requests to one model are
    served one at a time. Use it as a context manager; :meth:`close` stops every runner.

    ``install_dependencies`` allows building a model's env when none exists (otherwise
    :class:`~medigan_iso.errors.EnvNotBuiltError` names the command that builds it). None (the default)
    reads ``$MEDIGAN_ISO_BUILD``: unset or ``auto`` builds on first use, ``never`` never builds at run
    time. ``config`` takes catalogue sources (as :func:`~medigan_iso.catalogue.load_catalogue`) or a
    loaded Catalogue.

    ``sandbox`` is a policy (``"off" | "auto" | "require"``) or a :class:`~medigan_iso.sandbox.SandboxConfig`;
    None reads ``$MEDIGAN_ISO_SANDBOX`` (default ``auto``). A catalogue entry's ``execution.sandbox.policy``
    can only make it stricter. A sandboxed runner can write only to the output directory it was started
    with; :meth:`save` into another directory restarts it.

    ``strict`` is the strict supply-chain mode: the catalogue is validated strictly, every package must pin
    ``package_sha256`` and envs install hash-pinned wheels only (no sdist build script runs).

    ``as_of`` (``YYYY-MM-DD`` or ``"latest"``) overrides every model's dependencies-as-of date (see
    :mod:`medigan_iso.envs.asof`); None uses each entry's own.

    ``threads`` is each runner's BLAS/OpenMP/torch/TensorFlow thread budget, set in its environment before
    it imports numpy. None (the default): the CPUs divided among the warm runners (counting the new one)
    when it starts, unless the caller's environment sets one of ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
    ... (then the environment decides). ``threads=0`` sets no budget: each runner's pools size themselves
    (one thread per core, as before budgets existed; ``benchmarks/bench_threads.py`` compares the two). A
    catalogue entry's ``execution.resources.threads`` wins over both.

    ``shared_memory``: big batches (256 KiB and more) cross from the runner through a shared-memory segment
    instead of the pipe. None (the default): on where the host has memfd, unless ``$MEDIGAN_ISO_SHM`` is
    ``0``; False: every batch takes the pipe. Each runner gets 3 slots sized when it starts from the model's
    declared ``image_size`` (16 bytes per pixel: up to 4 float32 channels) times the largest batch size
    asked so far, at least 4 MiB and at most 1 GiB each (64 MiB without a declared size). The segment is
    address space; only pages a batch touched are memory. A batch bigger than a slot takes the pipe and is
    logged once per runner; the model's next runner (after :meth:`release`) gets slots that fit it.
    ``runner_info(model)["shared_memory"]`` shows the slots and counters (None: pipe only).

    ``sample_memory``: ``"copy"`` (the default) hands out arrays of the caller's own. ``"view"`` hands out
    read-only arrays (writing raises ValueError; ``np.array(a)`` makes a writable copy); those that came
    through shared memory are views of the slot itself, with no copy. A slot goes back to the runner when
    every array viewing it is garbage; a runner whose slots are all held waits at most 0.1 s for one, then
    sends through the pipe (and goes on doing so without waiting until a slot comes back), so holding views
    never stalls a request. Views stay valid after the Session closes. Read-only means read-only for you:
    the runner maps the segment writable, so a model could still change the bytes of a view it handed out.
    Keep ``"copy"`` (the default, and what the CLI uses) when you hash or compare samples in memory.
    """

    def __init__(
        self,
        *,
        config: Catalogue | ConfigSource | Sequence[ConfigSource] | None = None,
        home: str | os.PathLike[str] | None = None,
        offline: bool | None = None,
        install_dependencies: bool | None = None,
        index_url: str | None = None,
        find_links: Sequence[str] = (),
        ready_timeout_s: float = RUNNER_READY_TIMEOUT_S,
        inactivity_timeout_s: float = RUNNER_INACTIVITY_TIMEOUT_S,
        max_consecutive_crashes: int = MAX_CONSECUTIVE_CRASHES,
        sandbox: str | SandboxConfig | None = None,
        strict: bool = False,
        as_of: str | None = None,
        threads: int | None = None,
        shared_memory: bool | None = None,
        sample_memory: str = "copy",
    ) -> None:
        if threads is not None and (type(threads) is not int or threads < 0):
            raise ValueError(
                f"threads must be an int >= 1, 0 (no budget) or None (the default budget), got {threads!r}"
            )
        if shared_memory not in (None, True, False):
            raise ValueError(f"shared_memory must be True, False or None, got {shared_memory!r}")
        if sample_memory not in SAMPLE_MEMORY_POLICIES:
            raise ValueError(f"sample_memory must be one of {SAMPLE_MEMORY_POLICIES}, got {sample_memory!r}")
        self._threads = threads
        self._shared_memory = shared_memory
        self._sample_memory = sample_memory
        self._sandbox = resolve_policy(sandbox)
        self._as_of = as_of
        self._strict = strict
        self._support: HostSupport | None = None
        self._gaps_warned = False
        self._config = None if isinstance(config, Catalogue) else config
        self._home = None if home is None else Path(home)
        self._offline = offline
        self._install_dependencies = (
            build_allowed_by_environment() if install_dependencies is None else install_dependencies
        )
        self._build_reason = (
            f"{BUILD_POLICY_ENV}=never" if install_dependencies is None else "install_dependencies=False"
        )
        self._index_url = index_url
        self._find_links = tuple(find_links)
        self._ready_timeout_s = ready_timeout_s
        self._inactivity_timeout_s = inactivity_timeout_s
        self._max_consecutive_crashes = max_consecutive_crashes
        self._lock = threading.Lock()
        self._catalogue: Catalogue | None = config if isinstance(config, Catalogue) else None
        self._slots: dict[str, _Slot] = {}
        self._prepare_locks: dict[str, threading.Lock] = {}
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------------------------

    def __enter__(self) -> Session:
        return self

    def __repr__(self) -> str:
        """What a notebook shows for a Session: open or closed, warm runners (model and pid), sandbox."""
        with self._lock:
            warm = [
                f"{neutralise(model_id, max_chars=80)} (pid {slot.runner.pid})"
                for model_id, slot in self._slots.items()
                if slot.runner is not None and slot.runner.is_alive()
            ]
        state = "closed" if self._closed else "open"
        runners = ", ".join(warm) if warm else "none"
        return f"<medigan_iso.Session {state}; warm runners: {runners}; sandbox: {self._sandbox.policy}>"

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (a closed Session refuses new requests)."""
        return self._closed

    def close(self) -> None:
        """Stop every runner (shutdown frame, grace, SIGTERM, SIGKILL). The Session cannot be reused."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            slots = list(self._slots.values())
        # Without taking slot locks: a suspended stream may hold one (Ctrl-C in a consumer loop), and
        # closing its runner is what ends that stream.
        for slot in slots:
            self._drop_runner(slot)

    # --- preparation ----------------------------------------------------------------------------------

    @property
    def catalogue(self) -> Catalogue:
        with self._lock:
            if self._catalogue is None:
                if os.environ.get(BUNDLE_ENV, "").strip():  # an air-gap bundle to install once
                    from medigan_iso.bundle import install_from_environment

                    install_from_environment(self._home)
                self._catalogue = load_catalogue(
                    self._config, home=self._home, offline=self._offline, strict=self._strict
                )
            return self._catalogue

    def resolve(self, model_id: str | int) -> ModelEntry:
        """The catalogue entry for ``model_id`` (medigan's id resolution)."""
        return self.catalogue.resolve(model_id)

    def prepare(self, model_id: str | int, *, install_dependencies: bool | None = None) -> PreparedModel:
        """Fetch and verify the package and build (or reuse) the env of ``model_id``; start nothing.

        ``install_dependencies`` overrides the Session's setting for this model's env.
        """
        return self._slot(model_id, install_dependencies=install_dependencies).prepared

    def _slot(self, model_id: str | int, *, install_dependencies: bool | None = None) -> _Slot:
        entry = self.resolve(model_id)
        with self._lock:
            self._check_open()
            slot = self._slots.get(entry.model_id)
            if slot is not None:
                return slot
            prepare_lock = self._prepare_locks.setdefault(entry.model_id, threading.Lock())
        with prepare_lock:
            with self._lock:
                slot = self._slots.get(entry.model_id)
            if slot is not None:
                return slot
            package = ensure_package(
                entry, home=self._home, offline=self._offline, require_hashes=self._strict
            )
            build = self._install_dependencies if install_dependencies is None else install_dependencies
            try:
                env = ensure_env(
                    entry,
                    home=self._home,
                    build=build,
                    index_url=self._index_url,
                    find_links=self._find_links,
                    offline=self._offline,
                    strict=self._strict,
                    # the same date as `medigan-iso env build` and `info`: Session(as_of=) first, then
                    # the entry's own, then the newest file of the package just fetched
                    as_of=self._as_of,
                    package_date=package.newest_file_date,
                )
            except EnvNotBuiltError as exc:
                reason = self._build_reason if install_dependencies is None else "install_dependencies=False"
                raise EnvNotBuiltError(exc.model_id, reason=reason) from exc
            slot = _Slot(PreparedModel(entry=entry, package=package, env=env))
            with self._lock:
                self._check_open()
                self._slots[entry.model_id] = slot
            return slot

    def _check_open(self) -> None:
        if self._closed:
            raise RunnerError("this Session is closed", remedy="open a new Session")

    # --- runners --------------------------------------------------------------------------------------

    def _warm_runner(self, slot: _Slot, *, output_dir: Path | None = None) -> RunnerProcess:
        """The slot's live runner, spawning (with backoff after crashes) and loading one when needed.

        A runner confined to another output directory than ``output_dir`` is replaced. Call with
        ``slot.lock`` held.
        """
        usable = output_dir is None or output_dir == slot.output_dir or self._sandbox.policy == "off"
        if slot.runner is not None and slot.runner.is_alive() and usable:
            return slot.runner
        if slot.runner is not None:
            slot.runner.close()
            slot.runner = None
        model_id = slot.prepared.entry.model_id
        if slot.consecutive_crashes >= self._max_consecutive_crashes:
            raise RunnerError(
                f"the runner for model {model_id} failed {slot.consecutive_crashes} times in a row; "
                f"not restarting it (last failure: {slot.last_failure})",
                remedy="read the runner log named above; open a new Session to try again",
            )
        if slot.consecutive_crashes:
            backoff = RESPAWN_BACKOFF_S[min(slot.consecutive_crashes, len(RESPAWN_BACKOFF_S)) - 1]
            logger.warning("respawning the runner for %s in %.1f s", model_id, backoff)
            time.sleep(backoff)
        runner = self._spawn(slot.prepared, output_dir=output_dir, shm_slot_bytes=_slot_bytes(slot))
        slot.output_dir = output_dir
        try:
            package = slot.prepared.package
            runner.load(
                package.root,
                model_file=package.model_file,
                package_name=package.package_name,
                generate_function=slot.prepared.entry.generate_function,
                custom_defaults=package.custom_defaults,
            )
        except BaseException:
            runner.close()
            raise
        slot.runner = runner
        return runner

    def _spawn(
        self, prepared: PreparedModel, *, output_dir: Path | None = None, shm_slot_bytes: int | None = None
    ) -> RunnerProcess:
        self._check_open()
        config = stricter(self._sandbox, prepared.entry.sandbox)
        if config.policy != "off" and self._support is None:
            self._support = probe_host(bwrap=config.bwrap)
        plan = plan_launch(
            config,
            python=prepared.env.python,
            package_root=prepared.package.root,
            output_dir=output_dir,
            support=self._support,
            model_id=prepared.entry.model_id,
            resources=prepared.entry.resources,
        )
        if plan.gaps and not self._gaps_warned:
            self._gaps_warned = True  # once per Session: the first spawn (issue 16)
            logger.warning(
                "sandbox (%s) leaves these protections missing on this machine: %s; see `medigan-iso doctor`",
                plan.policy,
                "; ".join(plan.gaps),
            )
        cgroup = None
        if plan.cgroup is not None and self._support is not None:
            try:
                cgroup = RunnerCgroup.create(self._support.cgroups, plan.cgroup, label="runner")
            except OSError as exc:
                if plan.policy == "require":
                    raise SandboxError(
                        "rlimits", f"cannot create the runner's cgroup: {exc}", remedy=CGROUP_REMEDY
                    ) from exc
                logger.warning("cannot create a cgroup for %s: %s", prepared.entry.model_id, exc)
        layout = cache_layout(self._home).ensure()
        auto_prune(layout.logs)  # issue 16: old logs go, at most once a day per cache
        log_path = layout.runner_log(
            prepared.entry.model_id,
            started=time.strftime("%Y%m%d-%H%M%S"),
            pid=os.getpid(),
            serial=next(_RUNNER_SERIAL),
        )
        threads = self._thread_budget(prepared.entry)
        runner = RunnerProcess.start(
            prepared.env.python,
            threads=threads,
            log_path=log_path,
            ready_timeout_s=self._ready_timeout_s,
            inactivity_timeout_s=self._inactivity_timeout_s,
            model_id=prepared.entry.model_id,
            command_prefix=plan.command_prefix,
            env_overrides=plan.env_overrides,
            cgroup=cgroup,
            shared_memory=self._shared_memory,
            shm_slot_bytes=shm_slot_bytes,
            sample_memory=self._sample_memory,
        )
        try:
            verify_hello(plan, runner.hello, model_id=prepared.entry.model_id)
        except BaseException:
            runner.close()
            raise
        runner.hello["sandbox_layers"] = list(plan.layers)
        runner.hello["thread_budget"] = threads
        return runner

    def _thread_budget(self, entry: ModelEntry) -> int | None:
        """The new runner's thread budget: the entry's, the Session's, or the CPUs over the warm runners."""
        wanted = entry.resources.get("threads")
        if type(wanted) is int and wanted > 0:
            return wanted
        if self._threads == 0:
            return None  # no budget: the runner's pools size themselves (the caller's environment passes on)
        if self._threads is not None:
            return self._threads
        if any(key in os.environ for key in THREAD_ENV):
            return None  # the caller's environment decides (runner_environment passes it on)
        with self._lock:
            slots = list(self._slots.values())
        warm = sum(1 for slot in slots if slot.runner is not None and slot.runner.is_alive())
        return max(1, usable_cpus() // (warm + 1))

    def release(self, model_id: str | int) -> bool:
        """Stop the warm runner of ``model_id`` (after its current request); the next call respawns it.

        Keeps the model prepared (package, env) and does not count as a crash. Returns whether a runner
        was running.
        """
        entry = self.resolve(model_id)
        with self._lock:
            slot = self._slots.get(entry.model_id)
        if slot is None:
            return False
        with slot.lock:
            running = slot.runner is not None and slot.runner.is_alive()
            self._drop_runner(slot)
            return running

    def dependencies_as_of(self, model_id: str | int) -> str:
        """The as-of date of ``model_id``'s dependencies and where it came from, as this Session builds it:
        the prepared env's, else what a build would use now (nothing is fetched or built to find out).

        The same text as ``medigan-iso info`` and ``env build`` (an invalid date raises ValueError).
        """
        entry = self.resolve(model_id)
        with self._lock:
            slot = self._slots.get(entry.model_id)
        if slot is not None:
            env = slot.prepared.env
            return f"{env.as_of} (from {env.as_of_source})" if env.as_of_source else env.as_of
        return planned_as_of(entry, override=self._as_of, home=self._home).describe()

    def status(self, model_id: str | int) -> dict[str, Any]:
        """What this Session knows of ``model_id`` now, without preparing or starting anything.

        ``state`` is ``"not started"`` (nothing prepared in this Session), ``"prepared"`` (package and env
        ready, no runner), ``"warm"`` (a live runner), ``"stopped"`` (its runner died or was dropped) or
        ``"given up"`` (too many consecutive failures). ``last_failure`` is the last failure's text, raw:
        it may hold model output, so neutralise it before showing it.
        """
        entry = self.resolve(model_id)
        with self._lock:
            slot = self._slots.get(entry.model_id)
        if slot is None:
            return {"model_id": entry.model_id, "state": "not started", "env": None, "runner": None}
        runner = slot.runner
        alive = runner is not None and runner.is_alive()
        if slot.consecutive_crashes >= self._max_consecutive_crashes:
            state = "given up"
        elif alive:
            state = "warm"
        else:
            state = "stopped" if slot.consecutive_crashes else "prepared"
        env = slot.prepared.env
        return {
            "model_id": entry.model_id,
            "state": state,
            "env": {
                "key": env.key,
                "python_version": env.python_version,
                "builder": env.builder,
                "path": str(env.path),
            },
            "package_root": str(slot.prepared.package.root),
            "runner": dict(runner.hello) if alive and runner is not None else None,
            "consecutive_crashes": slot.consecutive_crashes,
            "last_failure": None if slot.last_failure is None else str(slot.last_failure),
        }

    def runner_info(self, model_id: str | int) -> dict[str, Any]:
        """The warm runner's hello (python, package versions, pid), starting the runner if needed.

        ``shared_memory`` is the transport's slots and counters now (see :class:`Session`), or None.
        """
        slot = self._slot(model_id)
        with slot.lock:
            runner = self._warm_runner(slot)
            return dict(runner.hello, shared_memory=runner.shared_memory)

    # --- generation -----------------------------------------------------------------------------------

    def stream(
        self,
        model_id: str | int,
        num_samples: int,
        *,
        batch_size: int | None = None,
        seed: int | None = None,
        batch_offset: int = 0,
        output_path: str | os.PathLike[str] | None = None,
        **model_kwargs: Any,
    ) -> Batches:
        """Yield the samples of ``model_id`` one batch at a time; host memory holds one batch.

        Batch ``i`` is the job's global batch ``batch_offset + i``, seeded from (``seed``, that index), so
        a job split into requests at batch boundaries gives the same samples as one request (see the
        runner's determinism contract). Without ``seed`` one is drawn: read it from the returned
        :class:`Batches`. The model is prepared (package, env) before this returns; closing the iterator
        early cancels the request and keeps the runner warm.
        """
        _check_counts(num_samples, batch_size)
        seed = _check_seed(seed)
        batch_offset = _check_offset(batch_offset)
        slot = self._slot(model_id)
        size = batch_size or DEFAULT_BATCH_SIZE
        batches = Batches(
            model_id=slot.prepared.entry.model_id,
            num_samples=num_samples,
            seed=seed,
            batch_size=size,
            batch_offset=batch_offset,
        )
        batches._batches = self._iterate(
            slot,
            num_samples,
            batch_size=size,
            seed=seed,
            batch_offset=batch_offset,
            output_path=output_path,
            kwargs=model_kwargs,
            holder=batches._holder,
        )
        kwargs_copy = dict(model_kwargs)
        batches._context = lambda request, writer, command: self._run_context(
            slot, request, num_samples=num_samples, kwargs=kwargs_copy, writer=writer, command=command
        )
        return batches

    def _run_context(
        self,
        slot: _Slot,
        request: GenerateStream,
        *,
        num_samples: int,
        kwargs: Mapping[str, Any],
        writer: str,
        command: Sequence[str] | None,
    ) -> RunContext:
        """Everything a manifest line and run.json record say about one request (see manifest)."""
        prepared = slot.prepared
        entry, package, env = prepared.entry, prepared.package, prepared.env
        hello = request.runner_hello
        try:
            lock: str | None = env.lock_path.read_text(encoding="utf-8")
        except OSError:
            lock = None
        packages = {"numpy": hello.get("numpy"), "msgpack": hello.get("msgpack")}
        reported = hello.get("packages")
        if isinstance(reported, Mapping):
            packages.update({str(k): str(v) for k, v in reported.items()})
        line = {
            "model_id": entry.model_id,
            "entry_sha256": entry_sha256(entry.raw),
            "package_sha256": package.sha256,
            "env_key": env.key,
            "lock_sha256": None if lock is None else hashlib.sha256(lock.encode("utf-8")).hexdigest(),
            "dependencies_as_of": None if env.as_of in ("", "latest") else env.as_of,
            "python": hello.get("python"),
            "packages": packages,
            "runner_protocol": hello.get("protocol"),
            "seeding": hello.get("seeding"),
            "medigan_iso_version": _own_version(),
            "seed": request.seed,
            "batch_size": request.batch_size,
            "kwargs": jsonable(kwargs),
            "sandbox_layers": list(hello.get("sandbox_layers") or ()),
            "writer": writer,
        }
        run = {
            "num_samples": num_samples,
            "batch_offset": request.batch_offset,
            "command": None if command is None else [str(part) for part in command],
            "entry": jsonable(entry.raw),
            "entry_source": entry.source,
            "catalogue_dir": None if entry.catalogue_dir is None else str(entry.catalogue_dir),
            "is_bundled": entry.is_bundled,
            "lock": lock,
            "interpreter": env.python_version,
            "builder": env.builder,
            "regenerable": not _holds_arrays(kwargs),
        }
        return RunContext(line, run)

    def _iterate(
        self,
        slot: _Slot,
        num_samples: int,
        *,
        batch_size: int,
        seed: int,
        batch_offset: int,
        output_path: str | os.PathLike[str] | None,
        kwargs: Mapping[str, Any],
        holder: list[GenerateStream],
    ) -> Iterator[list[Sample]]:
        with self._request(
            slot,
            num_samples,
            batch_size=batch_size,
            seed=seed,
            batch_offset=batch_offset,
            kwargs=kwargs,
            output_path=output_path,
        ) as request:
            holder.append(request)
            yield from request

    def generate(
        self,
        model_id: str | int,
        num_samples: int,
        *,
        batch_size: int | None = None,
        seed: int | None = None,
        batch_offset: int = 0,
        output_path: str | os.PathLike[str] | None = None,
        **model_kwargs: Any,
    ) -> Samples:
        """Return ``num_samples`` samples of ``model_id`` as a list (arrays or medigan tuples).

        The list is a :class:`Samples`: its ``seed`` (drawn when none was given), ``batch_size`` and
        ``batch_offset`` regenerate the same samples. ``batch_offset`` as in :meth:`stream`.
        """
        batches = self.stream(
            model_id,
            num_samples,
            batch_size=batch_size,
            seed=seed,
            batch_offset=batch_offset,
            output_path=output_path,
            **model_kwargs,
        )
        samples = Samples()
        bar = _progress_bar(num_samples, f"{neutralise(model_id, max_chars=40)}")
        try:
            for batch in batches:
                samples.extend(batch)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        samples.model_id = batches.model_id
        samples.seed = batches.seed
        samples.batch_size = batches.batch_size
        samples.batch_offset = batches.batch_offset
        return samples

    def save(
        self,
        model_id: str | int,
        num_samples: int,
        output_path: str | os.PathLike[str],
        *,
        batch_size: int | None = None,
        seed: int | None = None,
        batch_offset: int = 0,
        **model_kwargs: Any,
    ) -> int:
        """Run the model's own saving code into ``output_path`` (medigan's ``save_images=True``).

        Files are named as medigan names them (``batch_<n>_<file>``); returns how many files the runner
        reported written. The model writes into ``<output_path>/.medigan-iso-staging``; as each batch
        lands the host hashes its files, appends their manifest lines, then moves them into
        ``output_path``, so a killed run never leaves a file in ``output_path`` its manifest does not name.
        """
        _check_counts(num_samples, batch_size)
        seed = _check_seed(seed)
        batch_offset = _check_offset(batch_offset)
        out = prepare_output_dir(output_path)
        staging = prepare_output_dir(out / STAGING_DIR_NAME)
        slot = self._slot(model_id)
        with self._request(
            slot,
            num_samples,
            batch_size=batch_size,
            seed=seed,
            batch_offset=batch_offset,
            kwargs=model_kwargs,
            output_path=staging,
            save_images=True,
        ) as request:
            context = self._run_context(
                slot,
                request,
                num_samples=num_samples,
                kwargs=model_kwargs,
                writer="save_images",
                command=None,
            )
            with ManifestWriter(out, context) as manifest:
                request.on_saved = functools.partial(
                    _land_saved, manifest, staging, out, int(request.batch_size or 1)
                )
                for _ in request:
                    pass
            _empty_staging(staging, out)
            if not staging.exists():
                # A sandboxed runner sees the staging folder through a bind mount of the removed inode:
                # the next save (which makes a new one) needs a new runner.
                slot.output_dir = None
            odd = non_regular_entries(out)
            if odd:
                # The output directory is hostile after a run: report, never follow or open these.
                logger.warning(
                    "model %s left %d entries that are not regular files in %s (not followed): %s",
                    slot.prepared.entry.model_id,
                    len(odd),
                    out,
                    ", ".join(f"{path.name} ({kind})" for path, kind in odd[:10]),
                )
            return request.files

    @contextlib.contextmanager
    def _request(
        self,
        slot: _Slot,
        num_samples: int,
        *,
        batch_size: int | None,
        seed: int | None,
        kwargs: Mapping[str, Any],
        output_path: str | os.PathLike[str] | None,
        batch_offset: int = 0,
        save_images: bool = False,
    ) -> Iterator[GenerateStream]:
        """One generate request on the slot's warm runner, with crash bookkeeping for respawns.

        Leaving early (the consumer stops iterating) cancels the request and drains it, so the runner stays
        warm; any other exception (KeyboardInterrupt included) stops the runner instead of waiting for it.
        """
        with slot.lock:
            slot.largest_batch = max(slot.largest_batch, batch_size or DEFAULT_BATCH_SIZE)
            try:
                writable = Path(output_path) if save_images and output_path is not None else None
                runner = self._warm_runner(slot, output_dir=writable)
                # remembered for the next runner of this model, whichever way this request ends
                note = functools.partial(_note_oversized, slot, runner)
                request = runner.generate(
                    num_samples,
                    batch_size=batch_size or DEFAULT_BATCH_SIZE,
                    seed=seed,
                    batch_offset=batch_offset,
                    kwargs=kwargs,
                    save_images=save_images,
                    output_path=output_path,
                    max_sample_bytes=max_sample_bytes(slot.prepared.entry),
                )
                try:
                    try:
                        yield request
                    except GeneratorExit:
                        request.close()
                        raise
                    request.close()
                finally:
                    note()
            except (
                RunnerCrashedError,
                RunnerStartError,
                RunnerTimeoutError,
                ProtocolError,
                ResourceLimitError,
            ) as exc:
                # The runner is gone, never came up, or cannot be trusted: drop it; the next call
                # respawns with backoff, and repeated failures stop the respawning.
                slot.consecutive_crashes += 1
                slot.last_failure = exc
                self._drop_runner(slot)
                raise
            except (Exception, KeyboardInterrupt) as exc:
                if not isinstance(exc, RunnerError):
                    self._drop_runner(slot)
                raise
            slot.consecutive_crashes = 0
            slot.last_failure = None

    @staticmethod
    def _drop_runner(slot: _Slot) -> None:
        if slot.runner is not None:
            slot.runner.close()
            slot.runner = None


SAMPLE_BYTES_MARGIN = 32  # x (channels <= 4) x float64 x parts of a tuple sample: generous on purpose
MIN_SAMPLE_BYTES = 64 * 1024**2
UNKNOWN_SAMPLE_BYTES = 512 * 1024**2


SHM_BYTES_PER_PIXEL = 16  # a declared pixel: up to 4 float32 channels (or an image and its mask)


def _declared_pixels(entry: ModelEntry) -> int | None:
    """The product of the entry's declared ``image_size``, or None when it declares no usable one."""
    execution = entry.raw.get("execution") or {}
    size = execution.get("image_size") if isinstance(execution, Mapping) else None
    dims = [d for d in size if isinstance(d, int) and not isinstance(d, bool) and d > 0] if size else []
    if not dims or len(dims) != len(size or ()):
        return None
    pixels = 1
    for d in dims:
        pixels *= d
    return pixels


def shared_slot_bytes(entry: ModelEntry, batch_size: int) -> int | None:
    """The shared-memory slot a runner of ``entry`` gets for batches of ``batch_size`` (issue 17).

    Its declared ``image_size`` times SHM_BYTES_PER_PIXEL times the batch size; RunnerProcess clamps it to
    SHM_MIN_SLOT_BYTES..SHM_MAX_SLOT_BYTES. None (no declared size): RunnerProcess's SHM_SLOT_BYTES.
    """
    pixels = _declared_pixels(entry)
    return None if pixels is None else pixels * SHM_BYTES_PER_PIXEL * max(1, batch_size)


def _slot_bytes(slot: _Slot) -> int | None:
    """The slot size for the next runner of ``slot``: its largest batch so far, or one that overflowed."""
    wanted = shared_slot_bytes(slot.prepared.entry, slot.largest_batch or DEFAULT_BATCH_SIZE)
    if slot.oversized_batch_bytes:
        wanted = max(wanted or 0, slot.oversized_batch_bytes)
    return wanted


def _note_oversized(slot: _Slot, runner: RunnerProcess) -> None:
    slot.oversized_batch_bytes = max(slot.oversized_batch_bytes, runner.oversized_batch_bytes)


def max_sample_bytes(entry: ModelEntry) -> int:
    """What one sample of ``entry`` may weigh on the pipe: its declared ``image_size`` with a wide margin.

    Issue 16: frames and total bytes per request are capped by what the request can legitimately produce.
    An entry without a usable ``image_size`` gets ``UNKNOWN_SAMPLE_BYTES``.
    """
    pixels = _declared_pixels(entry)
    if pixels is None:
        return UNKNOWN_SAMPLE_BYTES
    return max(MIN_SAMPLE_BYTES, pixels * 4 * 8 * SAMPLE_BYTES_MARGIN)


def _check_counts(num_samples: int, batch_size: int | None) -> None:
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative int, got {num_samples!r}")
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _own_version() -> str:
    """medigan_iso's version from its distribution metadata (this module cannot import the package root)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medigan-iso")
    except PackageNotFoundError:
        return "unknown"


def _holds_arrays(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_holds_arrays(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_arrays(v) for v in value)
    return hasattr(value, "__array__") and not isinstance(value, (int, float, bool, str))


STAGING_DIR_NAME = ".medigan-iso-staging"  # inside a Session.save folder: where the model writes


def _land_saved(
    manifest: ManifestWriter, staging: Path, out: Path, batch_size: int, index: int, names: list[str]
) -> None:
    """Land the files one save_images batch wrote: hash each, append its manifest line, then move it from
    ``staging`` into ``out`` (walking directories a model saved). Line before move: a run killed in between
    leaves its last line naming a file that did not land, never a landed file without a line."""
    first = index * batch_size
    for name in names:
        if "/" in name or name in ("", ".", "..") or not name.startswith(f"batch_{index}_"):
            logger.warning("ignoring a file name the runner reported that it cannot have written: %r", name)
            continue
        stack = [name]
        while stack:
            relpath = stack.pop()
            source = staging / relpath
            try:
                mode = os.lstat(source).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                (out / relpath).mkdir(exist_ok=True)
                stack.extend(sorted((f"{relpath}/{child.name}" for child in source.iterdir()), reverse=True))
            elif stat.S_ISREG(mode):
                digest, size = file_sha256(source)
                manifest.record(
                    relpath, sha256=(digest, size), batch_index=index, samples=(first, first + batch_size)
                )
                source.replace(out / relpath)


def _empty_staging(staging: Path, out: Path) -> None:
    """Move what the model left in the staging folder outside its batches into ``out`` (as medigan would have
    it, unrecorded: verify names it), then remove the staging folder."""
    for entry in sorted(staging.iterdir()) if staging.is_dir() else []:
        target = out / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            _empty_staging(entry, target)  # a batch directory whose files already landed
            continue
        if os.path.lexists(target):
            logger.warning("leaving %s in %s: %s exists", entry.name, staging, target)
            continue
        entry.rename(target)
    with contextlib.suppress(OSError):
        staging.rmdir()


def _check_seed(seed: int | None) -> int:
    """``seed`` checked, or a freshly drawn one (every request is seeded, so every output can be redone)."""
    if seed is None:
        return draw_seed()
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return seed


def _check_offset(batch_offset: int) -> int:
    if not isinstance(batch_offset, int) or isinstance(batch_offset, bool) or batch_offset < 0:
        raise ValueError(f"batch_offset must be a non-negative int, got {batch_offset!r}")
    return batch_offset


def generate(
    model_id: str | int,
    num_samples: int,
    *,
    batch_size: int | None = None,
    seed: int | None = None,
    batch_offset: int = 0,
    output_path: str | os.PathLike[str] | None = None,
    config: ConfigSource | Sequence[ConfigSource] | None = None,
    sandbox: str | SandboxConfig | None = None,
    **model_kwargs: Any,
) -> Samples:
    """Generate ``num_samples`` samples with ``model_id`` in its own env and return them.

    Builds the model's env on first use (never with ``MEDIGAN_ISO_BUILD=never``). For many calls keep a
    :class:`Session` open instead, so the runner (and the model's weights) stay loaded.
    """
    with Session(config=config, sandbox=sandbox) as session:
        return session.generate(
            model_id,
            num_samples,
            batch_size=batch_size,
            seed=seed,
            batch_offset=batch_offset,
            output_path=output_path,
            **model_kwargs,
        )


def stream(
    model_id: str | int,
    num_samples: int,
    *,
    batch_size: int | None = None,
    seed: int | None = None,
    batch_offset: int = 0,
    output_path: str | os.PathLike[str] | None = None,
    config: ConfigSource | Sequence[ConfigSource] | None = None,
    sandbox: str | SandboxConfig | None = None,
    **model_kwargs: Any,
) -> Iterator[list[Sample]]:
    """Yield the samples of ``model_id`` batch by batch, with bounded host memory for any ``num_samples``."""
    _check_counts(num_samples, batch_size)
    with Session(config=config, sandbox=sandbox) as session:
        yield from session.stream(
            model_id,
            num_samples,
            batch_size=batch_size,
            seed=seed,
            batch_offset=batch_offset,
            output_path=output_path,
            **model_kwargs,
        )
