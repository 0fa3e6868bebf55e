"""Runner thread budgets: warm runners doing BLAS/OpenMP-heavy work at once, budget vs none; prints JSON.

Usage: ``python benchmarks/bench_threads.py [--runners 1,3] [--rounds R] [--samples N] [--no-torch]
[--sandbox POLICY] [--smoke]`` from the tox ``py``/``bench`` env. It writes two model packages whose
``generate`` is matrix products (a numpy one, whose ``@`` runs in numpy's OpenBLAS, and a torch one, whose
``@`` runs on torch's OpenMP intra-op pool), a catalogue with one entry per runner over each package, builds
the envs with uv in a temp home (numpy; ``torch==2.13.0`` when that env can be built), and deletes
everything it wrote.

For each package two Sessions are opened side by side, each with as many warm runners as the largest
``--runners`` value, spawned one after another:

- ``budget``: ``Session()``, the default thread budget (issue 17, item 6): each runner gets usable CPUs //
  (warm runners + 1) when it spawns, so on 2 CPUs the runners get 2, 1, 1, ...;
- ``no_budget``: ``Session(threads=0)``: no budget, each runner's pools start a thread per core (the behaviour
  before item 6);
- ``every_cpu``: ``Session(threads=CPUs)``: a control, the pool sizes of ``no_budget`` set explicitly
  (``control_ratio_*`` = every_cpu / no_budget; with one runner it equals ``budget``, so it shows how far
  set-vs-unset variables and the machine's noise move a ratio that should be 1.0).

For each runner count ``k``, the first ``k`` runners of a Session each generate ``--samples`` samples at the
same time (one host thread each); the clock runs from the start until the last one is done. ``cpu_s`` is the
CPU time (user + system) of those runners and of this process over the same span. Rounds interleave the
Sessions (each round starts with the next one) so the machine's load hits all alike; best and
median are reported, and ``ratio_*`` is budget / no_budget. ``runner_tasks`` counts each runner's threads
(/proc/PID/task) after the warm-up, which shows the pools the budget allowed.

Expected (issue 17 had "the numpy demo used 2.3x the CPU in-process for 1.2x less speed, and under load an
isolated run took 1.21 s with default threads against 0.47 s with one"): with one runner the budget is
every CPU, so both ratios are ~1.0; with more runners than CPUs the budget should use less CPU
(``ratio_cpu`` < 1) for no more wall time (``ratio_wall`` <= 1). ``--smoke`` runs tiny sizes so the test
suite proves the script still works; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from _model_fixtures import zoo_execution  # noqa: E402

from medigan_iso import Session  # noqa: E402
from medigan_iso.errors import MediganIsoError  # noqa: E402
from medigan_iso.packages import tree_sha256  # noqa: E402
from medigan_iso.runner_process import THREAD_ENV, usable_cpus  # noqa: E402

WEIGHTS_WIDTH = 512  # the weights matrix written for both packages; --width uses its top-left corner
IMAGE_SIZE = 32  # what each sample returns (so the transport is negligible next to the products)

NUMPY_MODEL = """
import numpy as np

_WEIGHTS = {}


def generate(model_file, num_samples, output_path, save_images, width=512, depth=2, size=32):
    key = (model_file, width)
    if key not in _WEIGHTS:
        _WEIGHTS[key] = np.ascontiguousarray(np.load(model_file)[:width, :width])
    weights = _WEIGHTS[key]
    out = []
    for _ in range(num_samples):
        x = np.random.standard_normal((width, width))
        for _ in range(depth):
            x = np.tanh(x @ weights)  # float64 matrix product: numpy's BLAS and its thread pool
        plane = ((x[:size, :size] + 1.0) * 127.5).astype(np.uint8)
        out.append(np.repeat(plane[:, :, None], 3, axis=2))
    return out
"""

TORCH_MODEL = """
import numpy as np
import torch

_WEIGHTS = {}


def generate(model_file, num_samples, output_path, save_images, width=512, depth=2, size=32):
    key = (model_file, width)
    if key not in _WEIGHTS:
        _WEIGHTS[key] = torch.from_numpy(np.load(model_file)[:width, :width].copy())
    weights = _WEIGHTS[key]
    out = []
    with torch.no_grad():
        for _ in range(num_samples):
            x = torch.randn(width, width, dtype=weights.dtype)
            for _ in range(depth):
                x = torch.tanh(x @ weights)  # torch's intra-op (OpenMP) pool
            plane = ((x[:size, :size] + 1.0) * 127.5).to(torch.uint8).numpy()
            out.append(np.repeat(plane[:, :, None], 3, axis=2))
    return out
"""

KINDS = {
    "numpy": (NUMPY_MODEL, ["numpy"], np.float64),
    # torch's own products in float64 too, so both models do the same arithmetic
    "torch": (TORCH_MODEL, ["numpy", "torch==2.13.0"], np.float64),
}


def process_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process, all its threads (Linux /proc); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def task_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))  # noqa: PTH208
    except OSError:
        return 0


def write_catalogue(root: Path, kind: str, runners: int) -> tuple[Path, list[str]]:
    """A package of ``kind`` and one catalogue entry per runner over it (same deps: one env)."""
    source, dependencies, dtype = KINDS[kind]
    package = root / "catalogue" / "models" / kind
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((WEIGHTS_WIDTH, WEIGHTS_WIDTH)) / np.sqrt(WEIGHTS_WIDTH)
    np.save(package / "weights.npy", weights.astype(dtype))
    digest = tree_sha256(package)
    catalogue: dict[str, Any] = {}
    ids = [f"threads-{kind}-{i}" for i in range(runners)]
    for model_id in ids:
        catalogue[model_id] = {
            "execution": zoo_execution(
                f"models/{kind}",
                digest,
                dependencies=dependencies,
                package_name=kind,
                image_size=(IMAGE_SIZE, IMAGE_SIZE),
            ),
            "selection": {},
            "description": {"title": f"thread budget bench ({kind})"},
        }
    path = root / "catalogue" / f"{kind}.json"
    path.write_text(json.dumps(catalogue), encoding="utf-8")
    return path, ids


def run_concurrently(
    session: Session, models: list[str], pids: list[int], n: int, kwargs: dict[str, int]
) -> tuple[float, float]:
    """Every model generates ``n`` samples at once, one host thread each: (wall s, CPU s)."""
    barrier = threading.Barrier(len(models) + 1)
    errors: list[BaseException] = []

    def work(model_id: str) -> None:
        barrier.wait()
        try:
            got = session.generate(model_id, n, batch_size=min(n, 8), seed=0, **kwargs)
            assert len(got) == n, f"{model_id}: {len(got)} samples for {n}"
        except BaseException as exc:  # reported on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    cpu_started = time.process_time() + sum(process_cpu_s(pid) for pid in pids)
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cpu = time.process_time() + sum(process_cpu_s(pid) for pid in pids) - cpu_started
    if errors:
        raise errors[0]
    return wall, cpu


def _stats(values: list[float]) -> dict[str, float]:
    return {"best": round(min(values), 4), "median": round(statistics.median(values), 4)}


def bench_kind(
    kind: str,
    root: Path,
    home: Path,
    runner_counts: list[int],
    rounds: int,
    n: int,
    kwargs: dict[str, int],
    sandbox: str,
) -> dict[str, Any]:
    most = max(runner_counts)
    catalogue, ids = write_catalogue(root / kind, kind, most)
    variants = {"budget": None, "no_budget": 0, "every_cpu": usable_cpus()}
    sessions = {
        name: Session(config=str(catalogue), home=home, offline=False, sandbox=sandbox, threads=threads)
        for name, threads in variants.items()
    }
    try:
        started = time.perf_counter()
        try:
            sessions["budget"].prepare(ids[0])
        except MediganIsoError as exc:
            return {"skipped": f"no {kind} env: {str(exc).splitlines()[0]}"}
        env_s = time.perf_counter() - started
        pids: dict[str, list[int]] = {}
        budgets: dict[str, list[int | None]] = {}
        tasks: dict[str, list[int]] = {}
        for name, session in sessions.items():
            for model_id in ids:  # one after another: the default budget divides the CPUs among them
                session.generate(model_id, 2, seed=0, **kwargs)  # spawn, and start the thread pools
            infos = [session.runner_info(model_id) for model_id in ids]
            pids[name] = [int(info["pid"]) for info in infos]
            budgets[name] = [info.get("thread_budget") for info in infos]
            tasks[name] = [task_count(pid) for pid in pids[name]]
        cases: dict[str, Any] = {}
        for k in runner_counts:
            times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in variants}
            load_before = os.getloadavg()
            for round_ in range(rounds):
                names = list(variants)
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in order:
                    wall, cpu = run_concurrently(sessions[name], ids[:k], pids[name][:k], n, kwargs)
                    times[name]["wall"].append(wall)
                    times[name]["cpu"].append(cpu)
            case: dict[str, Any] = {
                "runners": k,
                "rounds": rounds,
                "thread_budgets": {name: budgets[name][:k] for name in variants},
                "wall_s": {name: _stats(times[name]["wall"]) for name in variants},
                "cpu_s": {name: _stats(times[name]["cpu"]) for name in variants},
            }
            for prefix, name in (("ratio", "budget"), ("control_ratio", "every_cpu")):
                for metric in ("wall", "cpu"):
                    mine, free = times[name][metric], times["no_budget"][metric]
                    case[f"{prefix}_{metric}"] = round(min(mine) / min(free), 3)
                    medians = statistics.median(mine) / statistics.median(free)
                    case[f"{prefix}_{metric}_medians"] = round(medians, 3)
            case["load_average"] = {"before": load_before, "after": os.getloadavg()}
            cases[f"{k}_runner{'s' if k > 1 else ''}"] = case
        return {
            "model": f"{kind}: {kwargs['depth']} x ({kwargs['width']}x{kwargs['width']} float64 product,"
            f" tanh) per sample, {IMAGE_SIZE}x{IMAGE_SIZE}x3 uint8 out",
            "samples_per_runner": n,
            "env_build_s": round(env_s, 2),
            "thread_budgets": budgets,
            "runner_tasks": tasks,
            "cases": cases,
        }
    finally:
        for session in sessions.values():
            session.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", default=None, help="comma-separated runner counts (default 1,CPUs+1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=24, help="samples per runner per round")
    parser.add_argument("--width", type=int, default=WEIGHTS_WIDTH, help=f"matrix side, <= {WEIGHTS_WIDTH}")
    parser.add_argument("--depth", type=int, default=3, help="matrix products per sample")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch model")
    parser.add_argument("--sandbox", default="auto", choices=("off", "auto", "require"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script runs (tests)")
    args = parser.parse_args(argv)
    cpus = usable_cpus()
    runner_counts = [1, cpus + 1] if args.runners is None else [int(x) for x in args.runners.split(",")]
    if args.smoke:
        runner_counts, args.rounds, args.samples, args.width, args.depth = [1, 2], 1, 2, 128, 1
    if not 1 <= args.width <= WEIGHTS_WIDTH or min(runner_counts) < 1:
        parser.error(f"--width must be 1..{WEIGHTS_WIDTH} and --runners counts >= 1")
    # the caller's own OMP_NUM_THREADS & co. would switch the default budget off (the environment decides)
    cleared = sorted(key for key in THREAD_ENV if os.environ.pop(key, None) is not None)
    os.environ["MEDIGAN_ISO_CATALOGUE_URL"] = ""
    os.environ.pop("MEDIGAN_ISO_CONFIG", None)
    root = Path(tempfile.mkdtemp(prefix="medigan-iso-bench-threads-"))
    kwargs = {"width": args.width, "depth": args.depth, "size": IMAGE_SIZE}
    report: dict[str, Any] = {
        "benchmark": "threads",
        "machine": {
            "python": platform.python_version(),
            "usable_cpus": cpus,
            "load_average_at_start": os.getloadavg(),
        },
        "cleared_from_environment": cleared,
        "sandbox": args.sandbox,
        "ratio": "budget / no_budget (Session() / Session(threads=0)); best of rounds, and of medians; "
        "control_ratio: every_cpu / no_budget (Session(threads=CPUs) / Session(threads=0))",
    }
    try:
        for kind in KINDS:
            if kind == "torch" and args.no_torch:
                report[kind] = {"skipped": "--no-torch"}
                continue
            report[kind] = bench_kind(
                kind, root, root / "home", runner_counts, args.rounds, args.samples, kwargs, args.sandbox
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report["load_average_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
