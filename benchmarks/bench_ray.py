"""The Ray path against plain ``Session.generate`` on this machine; prints JSON.

Usage: ``python benchmarks/bench_ray.py [--smoke]`` with the ``ray`` extra installed (the tox ``py``/``bench``
envs). Writes a numpy model package and a catalogue into a temp dir, builds its env with uv (the uv cache
makes this ~1 s when warm), measures, and deletes everything it wrote.

Measured, in one process so the ratios hold on a loaded machine:
- ``plain``: samples/s of a warm ``Session.generate`` (one runner);
- ``startup``: seconds to start a local Ray instance (1 node) and a simulated 2-node cluster
  (``ray.cluster_utils.Cluster``, one CPU each);
- ``ray_1_node`` / ``ray_2_nodes``: samples/s of ``generate_dataset`` consumed by the driver
  (``iter_batches``), actor start-up, env reuse and runner spawn included, and the ratio to ``plain``;
  and the rate from the first block's arrival to the last (the fixed cost of a dataset excluded; Ray Data
  computes blocks ahead of the consumer, so this rate runs high: it is no steady-state figure);
- ``write_100k``: driver peak RSS (sampled from /proc every 50 ms) while ``write_images`` writes a
  100,000-sample dataset to disk from the workers, and the wall time.
The model does real CPU work per sample (a small matrix product chain), so the figures are about
orchestration overhead on top of a model that costs something, not about an empty model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MEDIGAN_ISO_CATALOGUE_URL", "")

import numpy as np

MODEL = """
import numpy as np


def generate(model_file, num_samples, output_path, save_images, size=64, work=100):
    weights = np.load(model_file)
    out = []
    for _ in range(num_samples):
        x = np.random.standard_normal((size, size))
        for _ in range(work):
            x = np.tanh(x @ x.T / size)
        image = ((x - x.min()) / (np.ptp(x) + 1e-9) * 255 + weights.sum()) % 256
        out.append(image.astype(np.uint8))
    return out
"""

OBJECT_STORE = 150 * 1024 * 1024
MODEL_ID = "bench-ray"


def _world(root: Path) -> tuple[Path, Path]:
    from medigan_iso.packages import tree_sha256

    package = root / "models" / "benchray"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(MODEL).lstrip(), encoding="utf-8")
    np.save(package / "weights.npy", np.arange(4, dtype=np.float32))
    entry = {
        "execution": {
            "package_name": "benchray",
            "package_link": "models/benchray",
            "package_sha256": tree_sha256(package),
            "model_name": "weights",
            "extension": ".npy",
            "image_size": [32, 32],
            "dependencies": ["numpy"],
            "generate_method": {
                "name": "generate",
                "args": {"base": ["model_file", "num_samples", "output_path", "save_images"], "custom": {}},
            },
        },
        "selection": {"modality": ["bench"], "tags": [], "performance": {}},
        "description": {"title": "ray benchmark model"},
    }
    catalogue = root / "catalogue.json"
    catalogue.write_text(json.dumps({MODEL_ID: entry}), encoding="utf-8")
    return catalogue, root / "home"


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _PeakRss:
    def __init__(self) -> None:
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _ray_run(options: dict[str, Any], n: int, batch_size: int) -> dict[str, Any]:
    """One dataset of n, consumed by the driver: the rate with start-up, and the rate after the first block.

    The second excludes the fixed cost of a dataset (actor start, Session, runner spawn): it is the rate
    from the first block's arrival to the last one's.
    """
    from medigan_iso.distributed import generate_dataset

    started = time.perf_counter()
    first_at = None
    first_rows = rows = 0
    dataset = generate_dataset(MODEL_ID, n, seed=1, batch_size=batch_size, **options)
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        rows += len(batch["index"])
        if first_at is None:
            first_at, first_rows = time.perf_counter(), rows
    finished = time.perf_counter()
    elapsed = finished - started
    assert rows == n and first_at is not None, (rows, n)
    steady = (n - first_rows) / max(finished - first_at, 1e-9)
    return {
        "samples": n,
        "seconds": round(elapsed, 2),
        "samples_per_s": round(n / elapsed, 1),
        "first_block_after_s": round(first_at - started, 2),
        "steady_samples_per_s": round(steady, 1),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one node: proves the script runs")
    args = parser.parse_args(argv)
    n = 64 if args.smoke else 3000
    big = 0 if args.smoke else 100_000
    batch_size = 32

    import ray
    from ray.cluster_utils import Cluster

    from medigan_iso.distributed import generate_dataset, write_images
    from medigan_iso.generation import Session

    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    report: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "ray": ray.__version__,
        "n": n,
        "batch_size": batch_size,
    }
    try:
        catalogue, home = _world(root)
        options: dict[str, Any] = {"config": str(catalogue), "home": str(home), "sandbox": "off"}
        with Session(config=str(catalogue), home=home, sandbox="off") as session:
            session.runner_info(MODEL_ID)  # env built, runner warm
            session.generate(MODEL_ID, batch_size, seed=0, batch_size=batch_size)
            started = time.perf_counter()
            session.generate(MODEL_ID, n, seed=1, batch_size=batch_size)
            plain_s = time.perf_counter() - started
        report["plain"] = {"samples": n, "seconds": round(plain_s, 2), "samples_per_s": round(n / plain_s, 1)}

        started = time.perf_counter()
        ray.init(
            address="local",
            num_cpus=1,
            object_store_memory=OBJECT_STORE,
            include_dashboard=False,
            log_to_driver=False,
        )
        report["startup"] = {"local_1_node_s": round(time.perf_counter() - started, 2)}
        one = _ray_run(options, n, batch_size)
        one["ratio_to_plain"] = round(one["samples_per_s"] / report["plain"]["samples_per_s"], 3)
        one["steady_ratio_to_plain"] = round(
            one["steady_samples_per_s"] / report["plain"]["samples_per_s"], 3
        )
        report["ray_1_node"] = one
        ray.shutdown()
        if not args.smoke:
            started = time.perf_counter()
            cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": 1,
                    "object_store_memory": OBJECT_STORE,
                    "include_dashboard": False,
                },
            )
            cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
            ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
            cluster.wait_for_nodes()
            report["startup"]["simulated_2_nodes_s"] = round(time.perf_counter() - started, 2)
            try:
                two = _ray_run(options, n, batch_size)
                two["ratio_to_plain"] = round(two["samples_per_s"] / report["plain"]["samples_per_s"], 3)
                two["steady_ratio_to_plain"] = round(
                    two["steady_samples_per_s"] / report["plain"]["samples_per_s"], 3
                )
                report["ray_2_nodes"] = two
                out = root / "out"
                baseline = _rss_mb()
                started = time.perf_counter()
                with _PeakRss() as peak:
                    dataset = generate_dataset(
                        MODEL_ID, big, seed=2, batch_size=256, work=0, size=32, **options
                    )
                    summary = write_images(dataset, out)
                elapsed = time.perf_counter() - started
                report["write_100k"] = {
                    "samples": summary["samples"],
                    "files": summary["files"],
                    "image": "32x32 uint8 PNG",
                    "seconds": round(elapsed, 1),
                    "driver_rss_before_mb": round(baseline, 1),
                    "driver_rss_peak_mb": round(peak.peak, 1),
                    "manifest_lines": sum(1 for _ in (out / "manifest.jsonl").open()),
                }
            finally:
                ray.shutdown()
                cluster.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
