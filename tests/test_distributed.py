"""medigan_iso.distributed on a real Ray: a local instance and a simulated two-node cluster.

Real parts only: a catalogue file whose entry points at a numpy model package written here, a real uv
env, real runner subprocesses inside real Ray actors, real Ray Data. Ray is kept small (one CPU per node,
100 MB object stores, no dashboard, no usage stats). The one-machine reference is ``Session.generate`` in
this process with the same seed and batch size; every comparison is of bytes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'medigan-iso[ray]')")

from _compat import zip_strict  # noqa: E402
from _model_fixtures import zoo_execution  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import medigan_iso  # noqa: E402
from medigan_iso import Session  # noqa: E402
from medigan_iso.cli import main  # noqa: E402
from medigan_iso.distributed import generate_dataset, split_ranges, write_images  # noqa: E402
from medigan_iso.packages import tree_sha256  # noqa: E402
from medigan_iso.sandbox import probe_host  # noqa: E402

# Ray warns about its own deprecated settings from inside its code; that is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MODEL_ID = "test-ray"
TUPLE_ID = "test-ray-tuples"
OBJECT_STORE = 100 * 1024 * 1024  # Ray's minimum is 75 MiB

MODEL_INIT = """
import os
import time

import numpy as np


def generate(
    model_file, num_samples, output_path, save_images, behaviour="plain", delay=0.0, size=8, marker=""
):
    weights = np.load(model_file)
    if behaviour == "crash_once" and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    if behaviour == "raises":
        raise ValueError("latent vector has the wrong size")
    if behaviour == "exits":
        os._exit(3)
    time.sleep(delay)
    images = [
        ((np.random.randint(0, 256, size=(size, size, 3)) + int(weights.sum())) % 256).astype(np.uint8)
        for _ in range(num_samples)
    ]
    if behaviour == "tuple":
        labels = ["benign" if im[0, 0, 0] < 128 else "malignant" for im in images]
        return [(im, (im > 127).astype(np.uint8), label) for im, label in zip(images, labels)]
    return images
"""


def _entry(digest: str, custom: dict[str, Any]) -> dict[str, Any]:
    return {
        "execution": zoo_execution("models/raymodel", digest, custom=custom, package_name="raymodel"),
        "selection": {"modality": ["test"], "tags": ["ray"], "performance": {}},
        "description": {"title": "ray test model"},
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("distributed")
    package = root / "catalogue" / "models" / "raymodel"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(MODEL_INIT).lstrip(), encoding="utf-8")
    np.save(package / "weights.npy", np.arange(4, dtype=np.float32))
    digest = tree_sha256(package)
    catalogue = {
        MODEL_ID: _entry(digest, {"behaviour": "plain", "size": 8}),
        TUPLE_ID: _entry(digest, {"behaviour": "tuple", "size": 6}),
    }
    path = root / "catalogue" / "catalogue.json"
    path.write_text(json.dumps(catalogue), encoding="utf-8")
    # Ray's nodes and workers inherit the environment of the process that starts them: set it first.
    home = root / "home"
    with pytest.MonkeyPatch.context() as env:  # module-scoped: undone after the module's last test
        env.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
        env.setenv("MEDIGAN_ISO_CONFIG", str(path))  # for the CLI test (workers inherit it too)
        env.setenv("MEDIGAN_ISO_HOME", str(home))
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        with Session(config=str(path), home=home, sandbox="off") as session:
            session.prepare(MODEL_ID)  # build the env once, before any Ray worker needs it
        yield {"catalogue": path, "home": home, "root": root}


def _options(world: dict[str, Path]) -> dict[str, Any]:
    return {"config": str(world["catalogue"]), "home": world["home"], "sandbox": "off"}


def _one_machine(world: dict[str, Path], model_id: str, n: int, seed: int, batch_size: int) -> list[Any]:
    with Session(config=str(world["catalogue"]), home=world["home"], sandbox="off") as session:
        return list(session.generate(model_id, n, seed=seed, batch_size=batch_size))


def _sorted_rows(dataset: Any) -> list[dict[str, Any]]:
    return sorted(dataset.take_all(), key=lambda row: int(row["index"]))


def _assert_equal_to(rows: list[dict[str, Any]], reference: list[Any]) -> None:
    assert [int(row["index"]) for row in rows] == list(range(len(reference)))
    for row, sample in zip_strict(rows, reference):
        image = sample[0] if isinstance(sample, tuple) else sample
        assert row["image"].dtype == image.dtype and row["image"].shape == image.shape
        assert row["image"].tobytes() == image.tobytes(), f"sample {row['index']} differs"
        if isinstance(sample, tuple):
            assert row["mask"].tobytes() == sample[1].tobytes()
            assert row["label"] == sample[2]


def test_split_ranges_cover_every_sample_once_on_batch_boundaries() -> None:
    ranges = split_ranges(103, 10, 3)
    assert [r.first_batch for r in ranges] == [0, 3, 6, 9]
    assert [r.first_sample for r in ranges] == [0, 30, 60, 90]
    assert [r.num_samples for r in ranges] == [30, 30, 30, 13]
    covered = [i for r in ranges for i in range(r.first_sample, r.first_sample + r.num_samples)]
    assert covered == list(range(103))
    assert split_ranges(0, 10, 3) == []
    with pytest.raises(ValueError, match="batch_size"):
        split_ranges(10, 0, 1)


def test_errors_cross_process_boundaries_whole() -> None:
    # Ray carries a worker's exception to the driver by pickling it; every subclass must survive that.
    import pickle

    from medigan_iso.errors import EnvNotBuiltError, ModelError, RunnerCrashedError

    for error in (
        ModelError("ValueError", "bad \x1b[31m size", "Traceback ...", model_id="00001"),
        RunnerCrashedError(returncode=3, stderr_tail="boom", model_id="00001"),
        EnvNotBuiltError("00001", reason="MEDIGAN_ISO_BUILD=never"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert copy.__dict__ == error.__dict__


@pytest.fixture(scope="module")
def local_ray(world: dict[str, Path]) -> Iterator[None]:
    ray.init(
        address="local",
        num_cpus=1,
        object_store_memory=OBJECT_STORE,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def test_local_ray_dataset_equals_one_machine(
    world: dict[str, Path], local_ray: None, tmp_path: Path
) -> None:
    n, seed, batch_size = 23, 1234, 4
    dataset = generate_dataset(
        TUPLE_ID, n, seed=seed, batch_size=batch_size, batches_per_task=2, **_options(world)
    )
    rows = _sorted_rows(dataset)
    reference = _one_machine(world, TUPLE_ID, n, seed, batch_size)
    assert all(isinstance(sample, tuple) for sample in reference)
    _assert_equal_to(rows, reference)
    assert {row["seed"] for row in rows} == {seed}
    assert {row["model_id"] for row in rows} == {TUPLE_ID}
    provenance = json.loads(rows[0]["provenance"])
    assert provenance["env_key"] and provenance["package_sha256"]

    # Written from the workers: every file once, each with a manifest line whose hash matches.
    out = tmp_path / "out"
    summary = write_images(dataset, out)
    assert summary["samples"] == n
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(line["path"] for line in lines) == sorted(
        [f"sample_{i:05d}.png" for i in range(n)]
        + [f"sample_{i:05d}_mask.png" for i in range(n)]
        + ["labels.csv"]
    )
    import hashlib

    for line in lines:
        assert hashlib.sha256((out / line["path"]).read_bytes()).hexdigest() == line["sha256"]
        if line["kind"] == "sample":
            assert line["seed"] == seed and line["batch_size"] == batch_size
            assert line["batch_index"] == line["sample_index"] // batch_size
            assert line["entry_sha256"] == provenance["entry_sha256"]
    (run,) = json.loads((out / "run.json").read_text())["runs"]
    assert (run["model_id"], run["seed"], run["batch_size"], run["num_samples"]) == (
        TUPLE_ID,
        seed,
        batch_size,
        n,
    )
    assert run["batch_offset"] == 0 and run["status"] == "complete" and run["writer"] == "png"
    assert run["entry"]["execution"]["package_sha256"] == run["package_sha256"]
    assert run["lock"] and run["regenerable"] is True and run["run_id"] == lines[0]["run_id"]
    # The folder verifies like any medigan_iso output, and regenerating it on one machine gives its bytes.
    report = medigan_iso.verify(out)
    assert report.ok and report.files == 2 * n + 1, report
    again = medigan_iso.verify(out, regenerate=True, home=world["home"], sandbox="off")
    assert again.ok and again.regenerated == again.reproduced == 2 * n + 1, again
    labels = (out / "labels.csv").read_text().splitlines()
    assert labels[0] == "sample,label" and len(labels) == n + 1
    assert labels[1] == f"sample_00000,{reference[0][2]}"


@pytest.fixture(scope="module")
def two_nodes(world: dict[str, Path]) -> Iterator[Cluster]:
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": OBJECT_STORE, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_two_nodes_both_produce_rows_equal_to_one_machine(world: dict[str, Path], two_nodes: Cluster) -> None:
    n, seed, batch_size = 40, 99, 2
    # The default sandbox (auto: bubblewrap where it works) inside the actors; the reference runs unconfined.
    options = dict(_options(world), sandbox=None)
    dataset = generate_dataset(
        MODEL_ID, n, seed=seed, batch_size=batch_size, batches_per_task=1, delay=0.2, **options
    )
    rows = _sorted_rows(dataset)
    _assert_equal_to(rows, _one_machine(world, MODEL_ID, n, seed, batch_size))
    layers = json.loads(rows[0]["provenance"])["sandbox_layers"]
    assert "hygiene" in layers, layers
    if probe_host().layers["bubblewrap"].available:
        assert "bubblewrap" in layers, layers
    alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(alive) == 2
    assert {row["node_id"] for row in rows} == alive, "both nodes must have produced rows"


def _runner_parents(home: Path) -> set[int]:
    """Pids of the Ray actors that started a runner of an env under ``home`` (this test's, no one else's)."""
    parents: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if b"medigan_iso_runner" not in cmdline or str(home).encode() not in cmdline:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:"):
                ppid = int(line.split()[1])
                try:
                    parent = Path(f"/proc/{ppid}/cmdline").read_bytes()
                except OSError:
                    continue
                if ppid != os.getpid() and parent.startswith(b"ray::"):
                    parents.add(ppid)
    return parents


def test_actor_killed_mid_run_still_gives_a_complete_exact_dataset(
    world: dict[str, Path], two_nodes: Cluster
) -> None:
    n, seed, batch_size = 24, 7, 2
    dataset = generate_dataset(
        MODEL_ID, n, seed=seed, batch_size=batch_size, batches_per_task=1, delay=0.5, **_options(world)
    )
    result: dict[str, Any] = {}

    def consume() -> None:
        try:
            result["rows"] = _sorted_rows(dataset)
        except BaseException as exc:  # reported below
            result["error"] = exc

    consumer = threading.Thread(target=consume)
    consumer.start()
    killed: int | None = None
    deadline = time.monotonic() + 300
    while killed is None and consumer.is_alive() and time.monotonic() < deadline:
        parents = _runner_parents(world["home"])
        if parents:
            time.sleep(1.0)  # let it be in the middle of a range
            victim = min(parents)
            if consumer.is_alive():
                os.kill(victim, signal.SIGKILL)
                killed = victim
        time.sleep(0.1)
    assert killed is not None, "no actor with a runner was seen while the dataset was being computed"
    consumer.join(timeout=600)
    assert not consumer.is_alive()
    assert "error" not in result, result.get("error")
    rows = result["rows"]
    _assert_equal_to(rows, _one_machine(world, MODEL_ID, n, seed, batch_size))


def test_a_runner_crash_inside_an_actor_is_retried_on_that_range(
    world: dict[str, Path], two_nodes: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "crashed-once"
    n, seed, batch_size = 8, 3, 2
    dataset = generate_dataset(
        MODEL_ID,
        n,
        seed=seed,
        batch_size=batch_size,
        behaviour="crash_once",
        marker=str(marker),
        **_options(world),
    )
    rows = _sorted_rows(dataset)
    assert marker.exists(), "the runner never crashed: the test proves nothing"
    # The crash only happens when the marker is missing, so the reference run generates normally.
    with Session(config=str(world["catalogue"]), home=world["home"], sandbox="off") as session:
        reference = session.generate(
            MODEL_ID, n, seed=seed, batch_size=batch_size, behaviour="crash_once", marker=str(marker)
        )
    _assert_equal_to(rows, list(reference))


def test_a_model_failing_every_try_fails_the_dataset_with_its_error(
    world: dict[str, Path], two_nodes: Cluster
) -> None:
    raising = generate_dataset(MODEL_ID, 4, seed=1, batch_size=2, behaviour="raises", **_options(world))
    with pytest.raises(Exception) as info:
        raising.take_all()
    # Ray Data re-raises a worker's exception as its own type; the model's error is its message.
    assert f"model {MODEL_ID} raised ValueError: latent vector has the wrong size" in str(info.value)
    assert "remote traceback" in str(info.value)

    crashing = generate_dataset(
        MODEL_ID, 4, seed=1, batch_size=2, behaviour="exits", max_attempts=2, **_options(world)
    )
    with pytest.raises(Exception) as info:
        crashing.take_all()
    assert f"runner for model {MODEL_ID} exited with code 3" in str(info.value)


def test_cli_on_ray_reports_a_failing_model_in_one_message(
    world: dict[str, Path], two_nodes: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [MODEL_ID, "-n", "4", "--seed", "1", "--sandbox", "off", "--set", "behaviour=raises"]
    assert main(["generate", *args, "-o", str(tmp_path / "out"), "--ray", "auto"]) == 1
    err = capsys.readouterr().err
    assert "the dataset failed on Ray: ModelError: model test-ray raised ValueError: latent vector" in err
    assert "Traceback (most recent call last)" not in err.split("remote traceback")[0]


def test_cli_generate_on_ray_writes_the_files_plain_generate_writes(
    world: dict[str, Path], two_nodes: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [TUPLE_ID, "-n", "7", "--seed", "5", "--batch-size", "2", "--sandbox", "off"]
    assert main(["generate", *common, "-o", str(tmp_path / "plain")]) == 0
    assert main(["generate", *common, "-o", str(tmp_path / "ray"), "--ray", "auto"]) == 0
    assert "wrote 15 file(s) for 7 sample(s)" in capsys.readouterr().out
    # A separate driver process joining the cluster by its address, as on a real cluster.
    command = [sys.executable, "-m", "medigan_iso", "generate", *common, "-o", str(tmp_path / "addr")]
    proc = subprocess.run(
        [*command, "--ray", two_nodes.address],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = {p.name: p.read_bytes() for p in (tmp_path / "plain").iterdir() if p.suffix == ".png"}
    on_ray = {p.name: p.read_bytes() for p in (tmp_path / "ray").iterdir() if p.suffix == ".png"}
    by_address = {p.name: p.read_bytes() for p in (tmp_path / "addr").iterdir() if p.suffix == ".png"}
    assert len(plain) == 14 and plain == on_ray == by_address
    assert (tmp_path / "ray" / "labels.csv").read_text() == (tmp_path / "plain" / "labels.csv").read_text()
    manifest = [json.loads(line) for line in (tmp_path / "ray" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(line["kind"] for line in manifest) == ["labels"] + ["sample"] * 14
    run = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert [(r["model_id"], r["seed"], r["batch_size"], r["status"]) for r in run["runs"]] == [
        (TUPLE_ID, 5, 2, "complete")
    ]
