"""Datasets of any size on a Ray cluster: one warm runner per (node, model), the same bytes as one machine.

Needs the ``ray`` extra (``pip install 'medigan-iso[ray]'``); Ray is imported here and nowhere else, and only
when a function of this module runs. A client of :class:`~medigan_iso.generation.Session` only: it never
touches envs or runners directly.

How a job runs
--------------
``generate_dataset(model_id, n, seed=s, batch_size=b)`` splits the job's ``ceil(n / b)`` batches into
ranges of whole batches (``batches_per_task`` each). A Ray Data actor pool maps the ranges: each actor holds
one warm :class:`Session` for the model (package fetched and env built once per node, into that node's
cache, under the same file locks a single machine uses), and generates a range with
``Session.stream(model_id, count, seed=s, batch_size=b, batch_offset=first_batch)``. The runner seeds
global batch ``k`` from ``(s, k)`` (the determinism contract, see the runner's docstring), so the row of
sample ``i`` holds the same bytes as sample ``i`` of ``Session().generate(model_id, n, seed=s,
batch_size=b)`` on one machine, however many nodes and actors share the work. Rows come in no particular
order: sort by ``index`` when order matters.

Failures: a runner that crashes inside an actor is respawned by the Session and the range generated again
(up to ``max_attempts`` tries, the model's last error is raised after that); a model that raises fails at
once with its :class:`~medigan_iso.errors.ModelError`. An actor (or a node) lost mid-run is restarted by
Ray Data (actors with ``max_restarts=-1``, ``max_task_retries=-1``) and its range regenerated from the
start, so a finished dataset never holds a missing or duplicated index.

``write_images(dataset, path)`` writes every row's files from the workers (images never travel through
the driver) and appends one ``manifest.jsonl`` line per file as it lands; the driver receives only counts
and labels, and writes ``labels.csv`` and ``run.json`` at the end.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import math
import os
import secrets
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from medigan_iso_runner.protocol import SEED_LIMIT

from medigan_iso.errors import (
    MediganIsoError,
    ModelError,
    ProtocolError,
    ResourceLimitError,
    RunnerCrashedError,
    RunnerError,
    RunnerStartError,
    RunnerTimeoutError,
)
from medigan_iso.generation import DEFAULT_BATCH_SIZE, Session
from medigan_iso.images import SampleWriter, prepare_output_dir, write_exclusive
from medigan_iso.manifest import MANIFEST_FORMAT, RUN_NAME, ManifestWriter, RunContext
from medigan_iso.untrusted import get_logger, neutralise

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "RangeSpec",
    "connect",
    "generate_dataset",
    "split_ranges",
    "write_images",
]

logger = get_logger(__name__)

DEFAULT_MAX_ATTEMPTS = 3  # tries of one range inside an actor when its runner crashes (Session respawns)
TASKS_PER_ACTOR = 4  # default split: about this many ranges per actor, so a lost actor redoes little
MAX_BATCHES_PER_TASK = 16  # and never more batches than this per range (one range = one Ray Data block)
RAY_REMEDY = "install the extra: pip install 'medigan-iso[ray]'"
# Transient failures: the runner is gone or cannot be trusted; the Session respawns it on the next request.
_RETRIED = (RunnerCrashedError, RunnerStartError, RunnerTimeoutError, ProtocolError, ResourceLimitError)
# Every column a row may have, besides the tuple parts beyond image and mask (``part_<k>``).
ROW_COLUMNS = (
    "index",
    "image",
    "mask",
    "label",
    "model_id",
    "seed",
    "batch_size",
    "node_id",
    "provenance",
    "run",
)


class RangeSpec(tuple[int, int, int]):
    """A range of whole batches: ``(first_batch, first_sample, num_samples)`` of one job."""

    __slots__ = ()

    def __new__(cls, first_batch: int, first_sample: int, num_samples: int) -> RangeSpec:
        return super().__new__(cls, (first_batch, first_sample, num_samples))

    @property
    def first_batch(self) -> int:
        return self[0]

    @property
    def first_sample(self) -> int:
        return self[1]

    @property
    def num_samples(self) -> int:
        return self[2]


def split_ranges(num_samples: int, batch_size: int, batches_per_range: int) -> list[RangeSpec]:
    """Split a job of ``num_samples`` into ranges of ``batches_per_range`` whole batches (the last shorter).

    Every range starts on a batch boundary, so its samples are the job's samples ``first_sample ..
    first_sample + num_samples - 1`` under the determinism contract; together the ranges cover
    ``0 .. num_samples - 1`` once each.
    """
    for name, value, low in (
        ("num_samples", num_samples, 0),
        ("batch_size", batch_size, 1),
        ("batches_per_range", batches_per_range, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    step = batch_size * batches_per_range
    return [
        RangeSpec(start // batch_size, start, min(step, num_samples - start))
        for start in range(0, num_samples, step)
    ]


# --- Ray -------------------------------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MediganIsoError("Ray is not installed", remedy=RAY_REMEDY) from exc
    return ray


def connect(
    address: str | None = "auto",
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
) -> None:
    """Connect this process to Ray, unless it already is.

    ``address`` is ``"auto"`` (a cluster started on this machine with ``ray start``, else a fresh local
    one), ``"local"`` (always a fresh local instance) or a cluster address such as ``ray://head:10001`` or
    ``head:6379``. ``num_cpus`` and ``object_store_memory`` size a local instance. The dashboard stays off.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    local = {"address": "local", "num_cpus": num_cpus, "object_store_memory": object_store_memory}
    if address == "local" or address is None:
        ray.init(**kwargs, **local)  # a new instance, even when another one runs on this machine
        return
    if address == "auto":
        try:
            ray.init(address="auto", **kwargs)
            return
        except ConnectionError:
            ray.init(**kwargs, **local)
            return
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise MediganIsoError(
            f"cannot connect to the Ray cluster at {address}: {exc}",
            remedy="start it with `ray start --head` on the head node, then pass its address "
            "(printed by ray start) to --ray",
        ) from exc


def _worker_slots(num_cpus: float, num_gpus: float) -> int:
    """How many nodes of the cluster can hold one actor needing ``num_cpus`` CPUs and ``num_gpus`` GPUs."""
    ray = _import_ray()
    count = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        if resources.get("CPU", 0) >= num_cpus and resources.get("GPU", 0) >= num_gpus:
            count += 1
    return count


# --- the actor ---------------------------------------------------------------------------------------------


def _sha256_json(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _jsonable(value: object) -> object:
    """Model kwargs as they go into a manifest: JSON values as they are, anything else named by type."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        if isinstance(value, Mapping):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        if isinstance(value, np.ndarray):
            return {"ndarray": {"dtype": str(value.dtype), "shape": list(value.shape)}}
        return f"<{type(value).__name__}>"
    return value


class _RangeGenerator:
    """A Ray Data actor: one warm Session for one model; turns ranges of batches into rows."""

    def __init__(
        self,
        model_id: str,
        seed: int,
        batch_size: int,
        session_options: Mapping[str, Any],
        model_kwargs: Mapping[str, Any],
        max_attempts: int,
    ) -> None:
        import ray

        self.session = Session(**session_options)
        self.model_id = self.session.resolve(model_id).model_id
        self.seed = seed
        self.batch_size = batch_size
        self.model_kwargs = dict(model_kwargs)
        self.max_attempts = max_attempts
        self.node_id = str(ray.get_runtime_context().get_node_id())
        prepared = self.session.prepare(model_id)  # package and env once per node (file-locked cache)
        hello = self._hello()
        lock = prepared.env.lock_path
        packages = {"numpy": hello.get("numpy"), "msgpack": hello.get("msgpack")}
        if isinstance(hello.get("packages"), Mapping):
            packages.update({str(k): str(v) for k, v in hello["packages"].items()})
        as_of = getattr(prepared.env, "as_of", None)
        # The fields every manifest line repeats, named as medigan_iso's other writers name them.
        self.provenance = json.dumps(
            {
                "entry_sha256": _sha256_json(prepared.entry.raw),
                "package_sha256": prepared.package.sha256,
                "env_key": prepared.env.key,
                "lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else None,
                "dependencies_as_of": None if as_of in (None, "", "latest") else as_of,
                "python": hello.get("python"),
                "packages": packages,
                "runner_protocol": hello.get("protocol"),
                "seeding": hello.get("seeding"),
                "sandbox_layers": list(hello.get("sandbox_layers") or ()),
                "medigan_iso_version": _version(),
                "kwargs": _jsonable(self.model_kwargs),
            },
            sort_keys=True,
            default=repr,
        )

        # What a run.json record keeps to make the samples again (``medigan-iso verify --regenerate``).
        entry, env = prepared.entry, prepared.env
        self.run = json.dumps(
            {
                "entry": _jsonable(entry.raw),
                "entry_source": entry.source,
                "catalogue_dir": None if entry.catalogue_dir is None else str(entry.catalogue_dir),
                "is_bundled": entry.is_bundled,
                "lock": lock.read_text(encoding="utf-8") if lock.is_file() else None,
                "interpreter": env.python_version,
                "builder": env.builder,
                "regenerable": not _holds_arrays(self.model_kwargs),
            },
            sort_keys=True,
            default=repr,
        )

    def _hello(self) -> dict[str, Any]:
        """The runner's hello; starting it here also warms the runner before the first range."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self.session.runner_info(self.model_id)
            except _RETRIED:
                if attempt == self.max_attempts:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def __call__(self, ranges: Mapping[str, Any]) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        for first_batch, first_sample, count in _zip_columns(
            ranges["first_batch"], ranges["first_sample"], ranges["num_samples"]
        ):
            rows.extend(self._range(int(first_batch), int(first_sample), int(count)))
        return _columns(rows)

    def _range(self, first_batch: int, first_sample: int, count: int) -> list[dict[str, Any]]:
        last: BaseException | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._generate(first_batch, count)
            except ModelError:
                raise  # the model's own code raised: the same inputs raise again
            except _RETRIED as exc:
                last = exc
                logger.warning(
                    "model %s, samples %d..%d, try %d of %d failed: %s",
                    self.model_id,
                    first_sample,
                    first_sample + count - 1,
                    attempt,
                    self.max_attempts,
                    str(exc).splitlines()[0],
                )
            except RunnerError as exc:
                # The Session gave up respawning: the model's last failure is the answer.
                if last is not None:
                    raise last from exc
                raise
        assert last is not None
        raise last

    def _generate(self, first_batch: int, count: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        batches = self.session.stream(
            self.model_id,
            count,
            seed=self.seed,
            batch_size=self.batch_size,
            batch_offset=first_batch,
            **self.model_kwargs,
        )
        for batch in batches:
            assert batches.batch_index is not None  # set once a batch has arrived
            first = batches.batch_index * self.batch_size  # the global batch index (determinism contract)
            for offset, sample in enumerate(batch):
                row = _sample_row(sample, first + offset, model_id=self.model_id)
                row.update(
                    model_id=self.model_id,
                    seed=self.seed,
                    batch_size=self.batch_size,
                    node_id=self.node_id,
                    provenance=self.provenance,
                    run="" if rows else self.run,  # once per range: it holds the lock text
                )
                rows.append(row)
        return rows

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.session.close()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medigan-iso")
    except PackageNotFoundError:  # a source checkout on sys.path
        return "unknown"


def _holds_arrays(value: object) -> bool:
    if isinstance(value, np.ndarray):
        return True
    if isinstance(value, Mapping):
        return any(_holds_arrays(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_arrays(v) for v in value)
    return False


def _sample_row(sample: object, index: int, *, model_id: str) -> dict[str, Any]:
    """One sample as a row: an array is the image; a medigan tuple gives image, mask, label, extra parts."""
    row: dict[str, Any] = {"index": index}
    if isinstance(sample, np.ndarray):
        row["image"] = sample
        return row
    if isinstance(sample, tuple):
        arrays = [part for part in sample if isinstance(part, np.ndarray)]
        labels = [part for part in sample if isinstance(part, str)]
        if arrays:
            row["image"] = arrays[0]
            if len(arrays) > 1:
                row["mask"] = arrays[1]
            for k, part in enumerate(arrays[2:], start=2):
                row[f"part_{k}"] = part
            if labels:
                row["label"] = labels[0]
            return row
    raise MediganIsoError(
        f"model {model_id} returned a sample of type {type(sample).__name__} for index {index}, which is "
        "not an image array or an (image, mask, ..., label) tuple",
        remedy="use Session.stream for this model; a dataset holds one image (and mask/label) per row",
    )


def _zip_columns(*columns: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
    """zip() over the columns of one Ray batch, which have one length by construction (Python 3.9 has no
    zip(strict=True); this is that check)."""
    lengths = {len(column) for column in columns}
    if len(lengths) > 1:
        raise AssertionError(f"columns of one batch differ in length: {sorted(lengths)}")
    return zip(*columns)


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rows as a numpy batch: arrays of equal shape stacked, ragged ones kept as an object column."""
    if not rows:
        return {"index": np.zeros(0, dtype=np.int64)}
    names = [name for name in ROW_COLUMNS if name in rows[0]]
    names += sorted(name for name in rows[0] if name not in ROW_COLUMNS)
    columns: dict[str, Any] = {}
    for name in names:
        values = [row.get(name) for row in rows]
        arrays = [v for v in values if isinstance(v, np.ndarray)]
        if name == "index":
            columns[name] = np.asarray(values, dtype=np.int64)
        elif len(arrays) == len(values):
            if len({(a.shape, a.dtype) for a in arrays}) == 1:
                columns[name] = np.stack(arrays)
            else:
                column = np.empty(len(arrays), dtype=object)
                column[:] = arrays
                columns[name] = column
        else:
            columns[name] = np.asarray(values, dtype=object)
    return columns


# --- the public functions -------------------------------------------------------------------------------


def generate_dataset(
    model_id: str | int,
    num_samples: int,
    *,
    seed: int | None = None,
    batch_size: int | None = None,
    sandbox: str | None = None,
    config: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    home: str | os.PathLike[str] | None = None,
    install_dependencies: bool | None = None,
    strict: bool = False,
    inactivity_timeout_s: float | None = None,
    session_options: Mapping[str, Any] | None = None,
    actors_per_node: int = 1,
    num_actors: int | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    batches_per_task: int | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    **model_kwargs: Any,
) -> ray.data.Dataset:
    """A Ray Dataset of ``num_samples`` samples of ``model_id``, one row per sample, computed lazily.

    Rows: ``index`` (the sample's index in the job), ``image`` (ndarray), ``mask`` and ``label`` when the
    model gives them (further tuple arrays as ``part_<k>``), ``model_id``, ``seed`` (drawn here when None,
    the same for every row), ``batch_size``, ``node_id`` (the Ray node that generated the row) and
    ``provenance`` (JSON: entry, package, env and runner versions, for manifests). Row ``i`` equals sample
    ``i`` of ``Session().generate(model_id, num_samples, seed=seed, batch_size=batch_size)`` bit for bit.

    Connects to Ray first when this process is not connected (``connect("auto")``). One actor per node
    that can hold ``num_cpus``/``num_gpus`` (times ``actors_per_node``), or ``num_actors`` in all; Ray Data
    spreads them across nodes. ``config``, ``home``, ``sandbox``, ``install_dependencies``, ``strict`` and
    ``inactivity_timeout_s`` are the Session's options (any other goes in ``session_options``, e.g.
    ``as_of``), applied on every node (paths must exist there). ``batches_per_task`` whole batches make
    one task (default: about four tasks per actor, at most 16 batches).
    """
    rt = _import_ray()
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative int, got {num_samples!r}")
    size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if seed is None:
        seed = secrets.randbelow(SEED_LIMIT)  # drawn once here: every range of the job shares it
    elif not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}")
    connect("auto")
    if num_actors is None:
        nodes = _worker_slots(num_cpus, num_gpus)
        if nodes == 0:
            raise MediganIsoError(
                f"no node of the Ray cluster has {num_cpus} CPU(s) and {num_gpus} GPU(s) free for an actor",
                remedy="lower num_cpus/num_gpus, or add nodes with `ray start --address=HEAD:6379`",
            )
        num_actors = nodes * actors_per_node
    if num_actors < 1:
        raise ValueError(f"num_actors must be >= 1, got {num_actors!r}")
    total_batches = math.ceil(num_samples / size)
    if batches_per_task is None:
        batches_per_task = max(1, min(MAX_BATCHES_PER_TASK, math.ceil(total_batches / (num_actors * 4))))
    ranges = split_ranges(num_samples, size, batches_per_task)
    options: dict[str, Any] = dict(session_options or {})
    options.update(sandbox=sandbox, strict=strict)
    if install_dependencies is not None:
        options["install_dependencies"] = install_dependencies
    if inactivity_timeout_s is not None:
        options["inactivity_timeout_s"] = inactivity_timeout_s
    if home is not None:
        options["home"] = str(home)
    if config is not None:
        options["config"] = [str(c) for c in config] if isinstance(config, (list, tuple)) else str(config)
    entry_id = str(model_id)
    items = [
        {"first_batch": r.first_batch, "first_sample": r.first_sample, "num_samples": r.num_samples}
        for r in ranges
    ]
    if not items:
        return cast("ray.data.Dataset", rt.data.from_items([]))
    dataset = rt.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _RangeGenerator,
        batch_size=1,
        batch_format="numpy",
        compute=rt.data.ActorPoolStrategy(size=min(num_actors, len(items))),
        fn_constructor_kwargs={
            "model_id": entry_id,
            "seed": seed,
            "batch_size": size,
            "session_options": options,
            "model_kwargs": model_kwargs,
            "max_attempts": max_attempts,
        },
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
    )
    return cast("ray.data.Dataset", dataset)


def write_images(
    dataset: ray.data.Dataset, path: str | os.PathLike[str], format: str = "png"
) -> dict[str, Any]:
    """Write every row's image (and mask, extra parts) into ``path`` from the workers; return a summary.

    Files are named as ``medigan-iso generate`` names them (``sample_<index>.png``, ``_mask`` for masks;
    ``.npy`` with ``format="npy"`` or when an array is no image). Each file gets one ``manifest.jsonl``
    line, appended (one ``O_APPEND`` write) by the worker that wrote it, with the fields of
    medigan_iso's manifest (``path``, ``sha256``, ``size``, ``run_id``, ``model_id``, ``sample_index``,
    ``batch_index``, ``seed``, ``batch_size``, entry/package/env/lock hashes, runner versions, ``kwargs``,
    ``sandbox_layers``, ``writer``, ``kind``, ``time``) plus ``node_id``. Images never pass through the
    driver; it writes ``labels.csv`` (when rows carry labels, with its own line) and ``run.json``.
    ``path`` must be one directory every node can write (a shared file system on a real cluster).
    """
    if format not in ("png", "npy"):
        raise ValueError(f"format must be 'png' or 'npy', got {format!r}")
    rt = _import_ray()
    directory = prepare_output_dir(path)
    run_id = uuid.uuid4().hex
    started = time.time()
    # Writers reserve no CPU: the generating actors may hold every CPU of the cluster, and a writer that
    # waits for one would stall the job. At most two writers per node run at a time.
    writers = 2 * max(1, sum(1 for node in rt.nodes() if node.get("Alive")))
    if hasattr(rt.data, "TaskPoolStrategy"):
        pool: dict[str, Any] = {"compute": rt.data.TaskPoolStrategy(size=writers)}
    else:  # Ray before TaskPoolStrategy
        pool = {"concurrency": writers}
    summary = dataset.map_batches(
        functools.partial(_write_rows, directory=str(directory), fmt=format, run_id=run_id),
        batch_size=None,
        batch_format="numpy",
        zero_copy_batch=True,
        num_cpus=0,
        **pool,
    )
    files = samples = 0
    labels: list[tuple[int, str]] = []
    notes: list[str] = []
    runs: dict[tuple[str, int, int], dict[str, Any]] = {}
    status, error = "complete", None
    try:
        for batch in _translated(summary.iter_batches(batch_format="numpy", batch_size=None)):
            files += int(np.sum(batch["files"]))
            samples += len(batch["files"])
            for index, label in _zip_columns(batch["index"], batch["label"]):
                if label is not None and str(label) != "":
                    labels.append((int(index), str(label)))
            for note in batch["notes"]:
                if note:
                    notes.extend(str(note).split("\n"))
            for row, (model_id, seed, size) in enumerate(
                _zip_columns(batch["model_id"], batch["seed"], batch["batch_size"])
            ):
                seen = runs.setdefault((str(model_id), int(seed), int(size)), {"num_samples": 0})
                seen["num_samples"] += 1
                if batch["provenance"][row] and "line" not in seen:
                    seen["line"] = json.loads(str(batch["provenance"][row]))
                if batch["run"][row] and "run" not in seen:
                    seen["run"] = json.loads(str(batch["run"][row]))
        if labels:
            files += _write_labels(directory, labels, runs, run_id=run_id, fmt=format)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise
    finally:
        _write_run_json(
            directory, runs, run_id=run_id, fmt=format, started=started, status=status, error=error
        )
    return {
        "samples": samples,
        "files": files,
        "requests": [{"model_id": m, "seed": s, "batch_size": b} for m, s, b in sorted(runs)],
        "run_id": run_id,
        "notes": notes[:100],
    }


def _write_labels(
    directory: Path,
    labels: list[tuple[int, str]],
    runs: Mapping[tuple[str, int, int], Mapping[str, Any]],
    *,
    run_id: str,
    fmt: str,
) -> int:
    """labels.csv (as the sample writer writes it) and its manifest line; returns the files written (1)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["sample", "label"])
    for index, label in sorted(labels):
        writer.writerow([f"sample_{index:05d}", label])
    data = buffer.getvalue().encode("utf-8")
    (model_id, seed, size), first = next(iter(runs.items()))
    line_fields = dict(first.get("line", {}), model_id=model_id, seed=seed, batch_size=size, writer=fmt)
    with ManifestWriter(directory, RunContext(line_fields, run_id=run_id)) as manifest:
        write_exclusive(
            directory / "labels.csv",
            data,
            before_link=lambda: manifest.record("labels.csv", data=data, kind="labels"),
        )
    return 1


def _write_run_json(
    directory: Path,
    runs: Mapping[tuple[str, int, int], Mapping[str, Any]],
    *,
    run_id: str,
    fmt: str,
    started: float,
    status: str,
    error: str | None,
) -> None:
    """The job's run.json, written last (replacing what the workers' manifest writers kept there)."""
    records = []
    for (model_id, seed, size), found in sorted(runs.items()):
        # The record layout of medigan_iso's manifest (run.json): the manifest lines' fields, then what
        # regenerating needs; the whole job is one request starting at batch 0.
        record: dict[str, Any] = {**found.get("line", {}), **found.get("run", {})}
        record.update(
            run_id=run_id,
            model_id=model_id,
            seed=seed,
            batch_size=size,
            batch_offset=0,
            num_samples=found["num_samples"],
            writer=fmt,
            command=None,
            backend="ray",
            status=status,
            started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        if error is not None:
            record["error"] = error
        records.append(record)
    if not records and not (directory / RUN_NAME).exists():
        return
    text = json.dumps({"format": MANIFEST_FORMAT, "runs": records}, indent=2, sort_keys=True) + "\n"
    tmp = directory / f".{RUN_NAME}.{os.getpid()}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(directory / RUN_NAME)


RAY_ERROR_MAX_CHARS = 12_000


def _translated(batches: Iterable[Any]) -> Iterator[Any]:
    """Ray's failures as one MediganIsoError (the CLI prints it without a traceback).

    Ray Data re-raises a worker's exception as its own type with the original in its text, so the model's
    error (a medigan_iso error's message and remote traceback) is cut out of that text.
    """
    ray = _import_ray()
    try:
        yield from batches
    except ray.exceptions.RayError as exc:
        text = str(exc)
        start = text.find("medigan_iso.errors.")
        if start >= 0:
            text = text[start + len("medigan_iso.errors.") :]
            text = text.split("\n\nThe above exception was the direct cause", 1)[0]
        detail = neutralise(text.strip(), max_chars=RAY_ERROR_MAX_CHARS, multiline=True)
        raise MediganIsoError(
            f"the dataset failed on Ray: {detail}",
            remedy="the first error above is the model's or the runner's; files written so far are in the "
            "manifest",
        ) from exc


def _write_rows(batch: dict[str, Any], *, directory: str, fmt: str, run_id: str) -> dict[str, Any]:
    """Runs on a worker: write the files of a block of rows, their manifest lines, return counts.

    medigan_iso's :class:`~medigan_iso.manifest.ManifestWriter` appends each file's line as the file lands
    (the sample writer calls it just before linking the file into place); one writer per request and node
    in the block, all under the job's ``run_id``.
    """
    out = Path(directory)
    indices = [int(i) for i in batch["index"]]
    count = len(indices)
    written: list[int] = []
    labels: list[str] = []
    notes: list[str] = []
    parts = [name for name in batch if name == "mask" or name.startswith("part_")]
    writers: dict[tuple[str, ...], tuple[ManifestWriter, SampleWriter]] = {}
    try:
        for row, index in enumerate(indices):
            key = tuple(str(batch[name][row]) for name in ("model_id", "seed", "batch_size", "node_id"))
            if key not in writers:
                line_fields: dict[str, Any] = {}
                if "provenance" in batch:
                    line_fields.update(json.loads(str(batch["provenance"][row])))
                line_fields.update(
                    model_id=key[0], seed=int(key[1]), batch_size=int(key[2]), node_id=key[3], writer=fmt
                )
                manifest = ManifestWriter(out, RunContext(line_fields, run_id=run_id))
                writers[key] = (manifest, SampleWriter(out, fmt=fmt, manifest=manifest))
            writer = writers[key][1]
            sample: Any = batch["image"][row]
            if parts:
                sample = (sample, *(batch[name][row] for name in parts))
            before = len(writer.files)
            writer.write(index, sample)
            written.append(len(writer.files) - before)
            label = batch["label"][row] if "label" in batch else None
            labels.append("" if label is None else str(label))
    finally:
        for manifest, writer in writers.values():
            notes.extend(writer.notes)
            manifest.finish("complete")  # this block's part; the driver writes the job's run.json last
    return {
        "index": np.asarray(indices, dtype=np.int64),
        "files": np.asarray(written, dtype=np.int64),
        "label": np.asarray(labels, dtype=object),
        "notes": np.asarray(["\n".join(notes) if i == 0 else "" for i in range(count)], dtype=object),
        "model_id": np.asarray([str(m) for m in batch["model_id"]], dtype=object),
        "seed": np.asarray([int(s) for s in batch["seed"]], dtype=np.int64),
        "batch_size": np.asarray([int(b) for b in batch["batch_size"]], dtype=np.int64),
        "provenance": np.asarray(
            [str(batch["provenance"][0]) if "provenance" in batch and i == 0 else "" for i in range(count)],
            dtype=object,
        ),
        "run": np.asarray([_first_run(batch) if i == 0 else "" for i in range(count)], dtype=object),
    }


def _first_run(batch: Mapping[str, Any]) -> str:
    for value in batch.get("run", ()):
        if value:
            return str(value)
    return ""
