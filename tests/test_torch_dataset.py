"""Generators.get_as_torch_dataset / get_as_torch_dataloader and medigan_iso.torch, with real runners.

The demo-numpy model (bundled) and a numpy zoo model returning (image, mask, other, label) tuples run in
real envs and runner subprocesses; DataLoader workers are real processes with their own runners.
"""

from __future__ import annotations

import importlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _facade_world import PLAIN_ID, TUPLE4_ID, facade_world
from _host_imports import IMPORTED_BY_TESTS

from medigan_iso import Generators
from medigan_iso.errors import RunnerError

# torch is imported when a test runs, not when this module is collected: other modules check that the host
# process never imported torch while generating.

DEMO = "demo-numpy"


@pytest.fixture(scope="module")
def torch() -> Any:
    IMPORTED_BY_TESTS.add("torch")  # on purpose: the host-never-imports-torch checks leave it out
    # tox installs torch (the medigan-iso[torch] extra); in CI its absence is a failure, not a skip
    if os.environ.get("CI"):
        return importlib.import_module("torch")
    return pytest.importorskip("torch", reason="torch is the medigan-iso[torch] extra; tox installs it")


@pytest.fixture(scope="module")
def medigan_torch(torch: Any) -> Any:
    return importlib.import_module("medigan_iso.torch")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("torch-world")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in facade_world(root).items():
            patch.setenv(key, value)
        patch.delenv("MEDIGAN_ISO_BUILD", raising=False)
        yield root


@pytest.fixture(scope="module")
def generators(world: Path, torch: Any) -> Iterator[Generators]:
    with Generators() as g:
        yield g


def _runner_logs(world: Path, model_id: str) -> list[Path]:
    return sorted((world / "home" / "logs").glob(f"runner-{model_id}-*.log"))


def _key(sample: Any) -> bytes:
    return np.asarray(sample).tobytes()


def test_a_100000_sample_dataset_generates_only_the_chunk_it_reads(generators: Generators) -> None:
    dataset = generators.get_as_torch_dataset(DEMO, num_samples=100_000, seed=3)
    assert len(dataset) == 100_000
    item = dataset[99_999]
    assert set(item) == {"sample"}
    assert item["sample"].shape == (64, 64, 1) and item["sample"].dtype == np.uint8
    assert dataset.chunks_generated == 1  # the last chunk only: 100000 % 32 == 0, so 32 samples
    assert dataset[0]["sample"].shape == (64, 64, 1)
    assert dataset.chunks_generated == 2
    with pytest.raises(IndexError, match="out of range for a dataset of 100000 samples"):
        dataset[100_000]


def test_item_i_is_the_same_on_every_read_given_a_seed(generators: Generators) -> None:
    dataset = generators.get_as_torch_dataset(DEMO, num_samples=100, seed=11, chunk_size=8)
    first = [_key(dataset[i]["sample"]) for i in (0, 9, 17)]
    for chunk in (3, 4, 5, 6):  # push chunks 0..2 out of the two-chunk cache
        dataset[chunk * 8]
    again = [_key(dataset[i]["sample"]) for i in (0, 9, 17)]
    assert first == again
    same_seed = generators.get_as_torch_dataset(DEMO, num_samples=100, seed=11, chunk_size=8)
    assert [_key(same_seed[i]["sample"]) for i in (17, 9, 0)] == first[::-1]
    other_seed = generators.get_as_torch_dataset(DEMO, num_samples=100, seed=12, chunk_size=8)
    assert _key(other_seed[0]["sample"]) != first[0]
    drawn = generators.get_as_torch_dataset(DEMO, num_samples=10)
    assert isinstance(drawn.seed, int)
    assert f"seed={drawn.seed}" in repr(drawn)


def test_item_i_is_sample_i_of_session_generate_with_the_same_seed_and_batch_size(
    generators: Generators, medigan_torch: Any
) -> None:
    # the determinism contract: chunk c is global batch c of the job (seed, batch size)
    dataset = generators.get_as_torch_dataset(PLAIN_ID, num_samples=20, seed=21, chunk_size=6)
    whole = generators.session.generate(PLAIN_ID, 20, seed=21, batch_size=6)
    assert [_key(dataset[i]["sample"]) for i in (19, 0, 7, 12)] == [_key(whole[i]) for i in (19, 0, 7, 12)]
    stream = medigan_torch.stream_dataset(PLAIN_ID, 20, seed=21, chunk_size=6, session=generators.session)
    assert [_key(item["sample"]) for item in stream] == [_key(s) for s in whole]
    with pytest.raises(ValueError, match="seed must be an int in"):
        generators.get_as_torch_dataset(PLAIN_ID, num_samples=2, seed=2**63)


def test_items_keep_medigans_shape_and_transform_runs_once(generators: Generators) -> None:
    calls: list[int] = []

    def transform(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        calls.append(len(arrays))
        return tuple(a.astype(np.float32) / 255 for a in arrays)

    dataset = generators.get_as_torch_dataset(TUPLE4_ID, num_samples=5, transform=transform, seed=1)
    item = dataset[2]
    assert set(item) == {"sample", "mask", "other_imaging_output", "label"}
    assert item["label"] == "malignant"
    assert item["sample"].shape == (6, 6, 3) and item["mask"].shape == (6, 6)
    assert item["sample"].dtype == np.float32 and item["sample"].max() <= 1.0
    assert calls == [3]  # once, with image, mask and other (medigan 1.0 called it twice)


def test_dataloader_with_medigans_defaults_works_with_zero_workers(generators: Generators) -> None:
    # medigan passed prefetch_factor=2 with num_workers=0, which current torch refuses.
    loader = generators.get_as_torch_dataloader(model_id=DEMO, num_samples=5, seed=4)
    batches = list(loader)
    assert len(batches) == 5 and batches[0]["sample"].shape == (1, 64, 64, 1)
    assert loader.batch_size == 1 and loader.num_workers == 0


def test_dataloader_needs_a_dataset_or_a_model_id(generators: Generators) -> None:
    with pytest.raises(ValueError, match="needs a dataset or a model_id"):
        generators.get_as_torch_dataloader()


def test_dataloader_passes_only_the_arguments_the_caller_set(medigan_torch: Any) -> None:
    defaults = dict(medigan_torch.MEDIGAN_DATALOADER_DEFAULTS)
    assert medigan_torch.dataloader_kwargs(defaults) == {}
    assert medigan_torch.dataloader_kwargs({**defaults, "num_workers": 2, "prefetch_factor": 4}) == {
        "num_workers": 2,
        "prefetch_factor": 4,
    }
    assert medigan_torch.dataloader_kwargs({**defaults, "shuffle": None, "timeout": 0.0}) == {
        "shuffle": None,
        "timeout": 0.0,
    }


def test_zero_and_two_workers_yield_every_sample_once(world: Path, generators: Generators) -> None:
    n = 40
    dataset = generators.get_as_torch_dataset(PLAIN_ID, num_samples=n, seed=5, chunk_size=8)
    expected = [_key(dataset[i]["sample"]) for i in range(n)]
    assert len(set(expected)) == n
    for workers in (0, 2):
        loader = generators.get_as_torch_dataloader(dataset, batch_size=8, num_workers=workers)
        got = [_key(sample) for batch in loader for sample in batch["sample"].numpy()]
        assert got == expected, workers
    # a dataloader that made its own dataset from the same seed yields the same samples
    loader = generators.get_as_torch_dataloader(
        model_id=PLAIN_ID, num_samples=n, seed=5, chunk_size=8, batch_size=5, num_workers=2
    )
    assert [_key(s) for batch in loader for s in batch["sample"].numpy()] == expected


def test_persistent_workers_keep_their_runners_across_epochs(world: Path, generators: Generators) -> None:
    dataset = generators.get_as_torch_dataset(PLAIN_ID, num_samples=16, seed=6, chunk_size=4)
    before = len(_runner_logs(world, PLAIN_ID))
    loader = generators.get_as_torch_dataloader(dataset, batch_size=4, num_workers=2, persistent_workers=True)
    epochs = [[_key(s) for b in loader for s in b["sample"].numpy()] for _ in range(2)]
    assert epochs[0] == epochs[1] and len(set(epochs[0])) == 16
    assert len(_runner_logs(world, PLAIN_ID)) - before == 2  # one runner per worker, reused
    del loader
    fresh = generators.get_as_torch_dataloader(dataset, batch_size=4, num_workers=2)
    for _ in range(2):
        list(fresh)
    assert len(_runner_logs(world, PLAIN_ID)) - before == 6  # two new workers (and runners) per epoch


def test_stream_dataset_splits_chunks_between_workers(
    generators: Generators, torch: Any, medigan_torch: Any
) -> None:
    stream = medigan_torch.stream_dataset(PLAIN_ID, 30, seed=8, chunk_size=4, session=generators.session)
    assert isinstance(stream, torch.utils.data.IterableDataset)
    alone = [_key(item["sample"]) for item in stream]
    assert len(alone) == 30 and len(set(alone)) == 30
    dataset = generators.get_as_torch_dataset(PLAIN_ID, num_samples=30, seed=8, chunk_size=4)
    assert alone == [_key(dataset[i]["sample"]) for i in range(30)]
    loader = torch.utils.data.DataLoader(stream, batch_size=3, num_workers=2)
    together = [_key(s) for batch in loader for s in batch["sample"].numpy()]
    assert sorted(together) == sorted(alone)  # every sample once, none twice


def test_an_endless_stream_keeps_producing_fresh_samples(generators: Generators, medigan_torch: Any) -> None:
    stream = medigan_torch.stream_dataset(DEMO, seed=9, chunk_size=16, session=generators.session)
    assert stream.num_samples is None
    items = list(itertools.islice(iter(stream), 50))
    assert len({_key(item["sample"]) for item in items}) == 50


def test_a_standalone_dataset_opens_and_closes_its_own_session(world: Path, medigan_torch: Any) -> None:
    dataset = medigan_torch.synthetic_dataset(PLAIN_ID, 3, seed=2)
    try:
        assert dataset[1]["sample"].shape == (4, 4, 3)
    finally:
        dataset.close()


def test_a_model_returning_short_chunks_is_an_error(world: Path, generators: Generators) -> None:
    dataset = generators.get_as_torch_dataset(PLAIN_ID, num_samples=4, seed=1, behaviour="short")
    with pytest.raises(RunnerError, match="returned 3 of 4 samples for chunk 0") as info:
        dataset[0]
    assert info.value.remedy is not None


def test_datasets_pickle_without_their_session(generators: Generators) -> None:
    import pickle

    dataset = generators.get_as_torch_dataset(PLAIN_ID, num_samples=8, seed=7, chunk_size=4)
    first = _key(dataset[5]["sample"])
    copy = pickle.loads(pickle.dumps(dataset))
    try:
        assert copy.seed == 7 and copy._source._session is None
        assert _key(copy[5]["sample"]) == first  # opens its own session, same sample
    finally:
        copy.close()
    assert os.getpid() == copy._source._session_pid


def test_spawned_workers_rebuild_their_session_from_the_pickled_dataset(
    generators: Generators, torch: Any
) -> None:
    # Python 3.14 makes forkserver the default; spawn is the strictest case: nothing but the pickle crosses.
    dataset = generators.get_as_torch_dataset(PLAIN_ID, num_samples=12, seed=13, chunk_size=3)
    expected = [_key(dataset[i]["sample"]) for i in range(12)]
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=3, num_workers=2, multiprocessing_context="spawn"
    )
    assert [_key(s) for batch in loader for s in batch["sample"].numpy()] == expected


def test_torch_surface_is_pinned(medigan_torch: Any) -> None:
    assert sorted(medigan_torch.__all__) == [
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
    assert all(hasattr(medigan_torch, name) for name in medigan_torch.__all__)


def test_a_dataloader_outlives_the_generators_that_made_it(world: Path, torch: Any) -> None:
    with Generators() as generators:
        loader = generators.get_as_torch_dataloader(model_id=PLAIN_ID, num_samples=6, seed=3, batch_size=3)
        expected = [
            _key(generators.get_as_torch_dataset(PLAIN_ID, num_samples=6, seed=3)[i]["sample"])
            for i in range(6)
        ]
    got = [_key(s) for batch in loader for s in batch["sample"].numpy()]
    assert got == expected
    loader.dataset.close()
