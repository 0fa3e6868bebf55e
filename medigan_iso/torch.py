"""torch datasets over a model's warm runner (extra ``medigan-iso[torch]``).

This module owns turning a model's samples into torch datasets; it is a client of
:class:`~medigan_iso.generation.Session` only, imports torch at its top (so nothing imports this module until
a torch method is called) and never prints.

- :class:`SyntheticDataset` (map-style, ``Generators.get_as_torch_dataset``): item ``i`` lies in chunk
  ``i // chunk_size``; a chunk is generated when first read (never all items up front) as one request for
  global batch ``chunk`` of the job (``Session.generate(..., seed=seed, batch_size=chunk_size,
  batch_offset=chunk)``, the determinism contract), and the last ``cached_chunks`` chunks stay in memory.
  Item ``i`` is therefore the same on every read, in every process, and equals sample ``i`` of
  ``Session.generate(model_id, n, seed=seed, batch_size=chunk_size)`` (a dataset without a seed draws one
  and exposes it as ``dataset.seed``).
- :class:`SyntheticStream` (``torch.utils.data.IterableDataset``, :func:`stream_dataset`): yields the same
  items in order, endlessly when ``num_samples`` is None (fresh samples for augmentation). It asks for
  blocks of up to ``STREAM_BLOCK_CHUNKS`` chunks per request, so the runner computes the next batch while
  the consumer takes the last; with DataLoader workers, worker ``w`` of ``W`` takes blocks ``w, w + W,
  ...``, so no two workers produce one sample.

Processes: in the process that made it, a dataset uses the Session it was given (the Generators' warm
runner; once that is closed, one of its own) or one it opens itself; in any other process (a DataLoader
worker, forked or spawned) it opens its own Session from a picklable :class:`SessionSpec`, so each worker
has its own runner, kept alive as long as the worker (``persistent_workers=True`` reuses it across
epochs). The runner dies with its worker.

Items keep medigan's shape: ``{"sample": array}`` plus ``"mask"``, ``"other_imaging_output"`` (tuple
positions 1 and 2) and ``"label"`` (any string in the tuple) when the model returns them. ``transform`` is
called once per item: ``transform(x)``, ``transform(x, mask)``, ``transform(x, other)`` or
``transform(x, mask, other)``, returning as many values (medigan 1.0 called it twice when a model returned
both a mask and another output). A model that returns fewer samples than asked is an error here, not an
empty dataset.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.utils.data
from medigan_iso_runner.protocol import SEED_LIMIT

from medigan_iso.catalogue import Catalogue, ConfigSource
from medigan_iso.errors import RunnerError
from medigan_iso.generation import DEFAULT_BATCH_SIZE, Session
from medigan_iso.sandbox import SandboxConfig
from medigan_iso.untrusted import neutralise

__all__ = [
    "DEFAULT_CACHED_CHUNKS",
    "DEFAULT_CHUNK_SIZE",
    "MEDIGAN_DATALOADER_DEFAULTS",
    "STREAM_BLOCK_CHUNKS",
    "SessionSpec",
    "SyntheticDataset",
    "SyntheticStream",
    "dataloader_kwargs",
    "sample_to_item",
    "stream_dataset",
    "synthetic_dataset",
]

DEFAULT_CHUNK_SIZE = DEFAULT_BATCH_SIZE  # samples per runner request
DEFAULT_CACHED_CHUNKS = 2  # chunks a map-style dataset keeps per process (a batch may straddle two)
STREAM_BLOCK_CHUNKS = 64  # chunks a stream asks for in one request (the runner works ahead within one)

Item = dict[str, Any]
Transform = Callable[..., Any]


@dataclass(frozen=True)
class SessionSpec:
    """How to open a Session in another process: picklable settings, plus (in this process and forked
    children only) an already loaded Catalogue."""

    config: ConfigSource | Sequence[ConfigSource] | None = None
    home: str | os.PathLike[str] | None = None
    offline: bool | None = None
    sandbox: str | SandboxConfig | None = None
    strict: bool = False
    catalogue: Catalogue | None = field(default=None, compare=False)

    def open(self) -> Session:
        return Session(
            config=self.catalogue if self.catalogue is not None else self.config,
            home=self.home,
            offline=self.offline,
            sandbox=self.sandbox,
            strict=self.strict,
        )

    def __getstate__(self) -> dict[str, Any]:
        # A Catalogue holds read-only mappings that do not pickle; a spawned worker reloads from config.
        # A spawned worker loads the catalogue again from ``config`` (None: the default sources).
        return {name: getattr(self, name) for name in ("config", "home", "offline", "sandbox", "strict")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "catalogue", None)


def sample_to_item(sample: Any, transform: Transform | None = None, *, index: int | None = None) -> Item:
    """One model sample as a medigan dataset item (see the module docstring)."""
    mask = other = label = None
    if isinstance(sample, np.ndarray):
        x = sample
    elif isinstance(sample, (tuple, list)) and sample and isinstance(sample[0], np.ndarray):
        x = sample[0]
        for position, part in enumerate(sample[1:], start=1):
            if isinstance(part, np.ndarray) and position == 1:
                mask = part
            elif isinstance(part, np.ndarray) and position == 2:
                other = part
            elif isinstance(part, str):
                label = part
    else:
        where = "" if index is None else f" {index}"
        raise RunnerError(
            f"sample{where} is a {type(sample).__name__}, not an image array or an (image, mask?, other?, "
            "label?) tuple, so it cannot be a dataset item",
            remedy="use Session.generate for this model's raw output",
        )
    if transform is not None:
        if mask is not None and other is not None:
            x, mask, other = transform(x, mask, other)
        elif mask is not None:
            x, mask = transform(x, mask)
        elif other is not None:
            x, other = transform(x, other)
        else:
            x = transform(x)
    item: Item = {"sample": x}
    if label is not None:
        item["label"] = label
    if mask is not None:
        item["mask"] = mask
    if other is not None:
        item["other_imaging_output"] = other
    return item


class _Source:
    """Chunks of one model's samples, generated on demand through a Session of this process."""

    def __init__(
        self,
        model_id: str,
        *,
        spec: SessionSpec,
        session: Session | None,
        seed: int | None,
        chunk_size: int,
        model_kwargs: Mapping[str, Any],
    ) -> None:
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if seed is not None and (
            not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT
        ):
            raise ValueError(f"seed must be an int in [0, 2**63) or None, got {seed!r}")
        self.model_id = model_id
        self.spec = spec
        self.seed = secrets.randbelow(SEED_LIMIT) if seed is None else seed
        self.chunk_size = chunk_size
        self.model_kwargs = dict(model_kwargs)
        self._session = session
        self._session_pid = os.getpid()
        self._owns_session = session is None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"] = None  # a Session (threads, pipes) never crosses a process boundary
        state["_session_pid"] = -1
        return state

    def session(self) -> Session:
        if self._session is None or self._session_pid != os.getpid() or self._session.closed:
            # A forked worker holds a copy of the parent's Session whose runner and threads belong to the
            # parent: never touch it, open this process's own. A dataset outliving the Generators that
            # made it (``with Generators() as g: loader = ...``) opens its own as well.
            self._session = self.spec.open()
            self._session_pid = os.getpid()
            self._owns_session = True
        return self._session

    def chunk(self, index: int, count: int) -> list[Any]:
        """``count`` samples of chunk ``index`` (``count`` < chunk_size only for a dataset's last chunk)."""
        samples = self.session().generate(
            self.model_id,
            count,
            batch_size=self.chunk_size,
            seed=self.seed,
            batch_offset=index,
            **self.model_kwargs,
        )
        self._check(samples, index, count)
        return samples

    def chunks(self, first: int, count: int) -> Iterator[list[Any]]:
        """Chunks ``first, first + 1, ...`` holding ``count`` samples in all, from one streaming request."""
        batches = self.session().stream(
            self.model_id,
            count,
            batch_size=self.chunk_size,
            seed=self.seed,
            batch_offset=first,
            **self.model_kwargs,
        )
        try:
            for offset, batch in enumerate(batches):
                self._check(batch, first + offset, min(self.chunk_size, count - offset * self.chunk_size))
                yield batch
        finally:
            batches.close()

    def _check(self, samples: Sequence[Any], index: int, count: int) -> None:
        if len(samples) != count:
            raise RunnerError(
                f"model {neutralise(self.model_id)} returned {len(samples)} of {count} samples for "
                f"chunk {index}",
                remedy="check the model's kwargs (an input_latent_vector decides the count for some models)",
            )

    def close(self) -> None:
        if self._owns_session and self._session is not None and self._session_pid == os.getpid():
            self._session.close()
        self._session = None


class _OverSource:
    """What a map-style dataset and a stream share: one model's :class:`_Source` and how they show."""

    model_id: str
    num_samples: int | None
    transform: Transform | None
    _source: _Source

    def _init_source(
        self,
        model_id: str,
        num_samples: int | None,
        *,
        spec: SessionSpec,
        session: Session | None,
        transform: Transform | None,
        seed: int | None,
        chunk_size: int,
        model_kwargs: Mapping[str, Any] | None,
    ) -> None:
        self._source = _Source(
            model_id,
            spec=spec,
            session=session,
            seed=seed,
            chunk_size=chunk_size,
            model_kwargs=model_kwargs or {},
        )
        self.model_id = model_id
        self.num_samples = num_samples
        self.transform = transform

    @property
    def seed(self) -> int:
        return self._source.seed

    @property
    def chunk_size(self) -> int:
        return self._source.chunk_size

    def close(self) -> None:
        """Stop the runner this dataset or stream started in this process (not a Generators' shared one)."""
        self._source.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_id={self.model_id!r}, num_samples={self.num_samples}, "
            f"seed={self.seed}, chunk_size={self.chunk_size})"
        )


class SyntheticDataset(_OverSource, torch.utils.data.Dataset[Item]):
    """A map-style dataset of ``num_samples`` items of ``model_id``, generated lazily in chunks."""

    num_samples: int

    def __init__(
        self,
        model_id: str,
        num_samples: int,
        *,
        spec: SessionSpec,
        session: Session | None = None,
        transform: Transform | None = None,
        seed: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        cached_chunks: int = DEFAULT_CACHED_CHUNKS,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
            raise ValueError(f"num_samples must be a non-negative int, got {num_samples!r}")
        if not isinstance(cached_chunks, int) or cached_chunks < 1:
            raise ValueError(f"cached_chunks must be a positive int, got {cached_chunks!r}")
        self._init_source(
            model_id,
            num_samples,
            spec=spec,
            session=session,
            transform=transform,
            seed=seed,
            chunk_size=chunk_size,
            model_kwargs=model_kwargs,
        )
        self.cached_chunks = cached_chunks
        self.chunks_generated = 0  # runner requests made by this copy of the dataset (per process)
        self._cache: OrderedDict[int, list[Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Item:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset indices are ints, not {type(index).__name__}")
        i = int(index)
        if i < 0:
            i += self.num_samples
        if not 0 <= i < self.num_samples:
            raise IndexError(f"index {index} is out of range for a dataset of {self.num_samples} samples")
        chunk, offset = divmod(i, self.chunk_size)
        return sample_to_item(self._chunk(chunk)[offset], self.transform, index=i)

    def _chunk(self, chunk: int) -> list[Any]:
        with self._lock:
            cached = self._cache.get(chunk)
            if cached is not None:
                self._cache.move_to_end(chunk)
                return cached
            count = min(self.chunk_size, self.num_samples - chunk * self.chunk_size)
            samples = self._source.chunk(chunk, count)
            self.chunks_generated += 1
            self._cache[chunk] = samples
            while len(self._cache) > self.cached_chunks:
                self._cache.popitem(last=False)
            return samples

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class SyntheticStream(_OverSource, torch.utils.data.IterableDataset[Item]):
    """An iterable dataset of ``model_id``'s items: ``num_samples`` of them, or endless when None."""

    def __init__(
        self,
        model_id: str,
        num_samples: int | None = None,
        *,
        spec: SessionSpec,
        session: Session | None = None,
        transform: Transform | None = None,
        seed: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if num_samples is not None and (
            not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0
        ):
            raise ValueError(f"num_samples must be a non-negative int or None (endless), got {num_samples!r}")
        self._init_source(
            model_id,
            num_samples,
            spec=spec,
            session=session,
            transform=transform,
            seed=seed,
            chunk_size=chunk_size,
            model_kwargs=model_kwargs,
        )

    def __iter__(self) -> Iterator[Item]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        size = self.chunk_size
        total_chunks = None if self.num_samples is None else math.ceil(self.num_samples / size)
        block = STREAM_BLOCK_CHUNKS
        if total_chunks is not None:  # spread a finite stream over every worker
            block = max(1, min(block, math.ceil(total_chunks / workers)))
        index = worker
        while True:
            first = index * block
            if total_chunks is not None and first >= total_chunks:
                return
            stop = first + block if total_chunks is None else min(first + block, total_chunks)
            end = stop * size if self.num_samples is None else min(stop * size, self.num_samples)
            position = first * size
            for batch in self._source.chunks(first, end - position):
                for sample in batch:
                    yield sample_to_item(sample, self.transform, index=position)
                    position += 1
            index += workers


def synthetic_dataset(
    model_id: str,
    num_samples: int = 100,
    *,
    transform: Transform | None = None,
    seed: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    session: Session | None = None,
    config: ConfigSource | Sequence[ConfigSource] | None = None,
    home: str | os.PathLike[str] | None = None,
    sandbox: str | SandboxConfig | None = None,
    **model_kwargs: Any,
) -> SyntheticDataset:
    """A lazily generated map-style dataset of ``model_id`` (see :class:`SyntheticDataset`).

    Pass ``session`` to reuse its warm runner in this process; otherwise the dataset opens its own.
    """
    spec = SessionSpec(config=config, home=home, sandbox=sandbox)
    return SyntheticDataset(
        model_id,
        num_samples,
        spec=spec,
        session=session,
        transform=transform,
        seed=seed,
        chunk_size=chunk_size,
        model_kwargs=model_kwargs,
    )


def stream_dataset(
    model_id: str,
    num_samples: int | None = None,
    *,
    transform: Transform | None = None,
    seed: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    session: Session | None = None,
    config: ConfigSource | Sequence[ConfigSource] | None = None,
    home: str | os.PathLike[str] | None = None,
    sandbox: str | SandboxConfig | None = None,
    **model_kwargs: Any,
) -> SyntheticStream:
    """A streaming ``IterableDataset`` of ``model_id``; endless when ``num_samples`` is None."""
    spec = SessionSpec(config=config, home=home, sandbox=sandbox)
    return SyntheticStream(
        model_id,
        num_samples,
        spec=spec,
        session=session,
        transform=transform,
        seed=seed,
        chunk_size=chunk_size,
        model_kwargs=model_kwargs,
    )


# medigan 1.0's DataLoader arguments and defaults (Generators.get_as_torch_dataloader).
MEDIGAN_DATALOADER_DEFAULTS: Mapping[str, Any] = {
    "batch_size": 1,
    "shuffle": False,
    "sampler": None,
    "batch_sampler": None,
    "num_workers": 0,
    "collate_fn": None,
    "pin_memory": False,
    "drop_last": False,
    "timeout": 0,
    "worker_init_fn": None,
    "prefetch_factor": 2,
    "persistent_workers": False,
}


def dataloader_kwargs(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The DataLoader arguments the caller set: those that differ from medigan's defaults.

    medigan passed all of them, and its ``prefetch_factor=2`` makes current torch refuse ``num_workers=0``;
    every other medigan default equals torch's, so leaving defaults out changes nothing else.
    """
    passed = {}
    for name, default in MEDIGAN_DATALOADER_DEFAULTS.items():
        value = arguments[name]
        if value is default or (type(value) is type(default) and value == default):
            continue
        passed[name] = value
    return passed
