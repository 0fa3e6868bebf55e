"""Spawn -> hello of a runner under each sandbox layer combination vs none, side by side; prints JSON.

Usage: ``python benchmarks/bench_sandbox.py [--rounds N] [--smoke]`` from a checkout with medigan_iso
installed (the tox ``py`` env). It builds a numpy-only env with uv in a temp dir (warm uv cache: ~1 s), then
starts and closes runners round-robin over the combinations so drift hits them all alike, and reports the
median and p90 spawn -> hello time and the median added over ``none`` (the hygiene-only launch). The probe of
the host (running bwrap once) is done once, as a Session does, and is not part of any spawn.

A combination that policy ``require`` refuses here because its layers leave a gap (e.g. Landlock without
bubblewrap leaves the host's /proc readable) is still timed, planned as ``auto`` would plan it, and carries
the refusal as ``require_refuses``; one with a layer this machine lacks is listed under ``skipped``.

Target (issue 7): <= 30 ms added for the full stack (bubblewrap + seccomp + Landlock + rlimits).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from _envs_for_tests import build_runner_env  # noqa: E402
from _model_fixtures import write_numpy_zoo  # noqa: E402

from medigan_iso.errors import SandboxError  # noqa: E402
from medigan_iso.runner_process import RunnerProcess  # noqa: E402
from medigan_iso.sandbox import SandboxConfig, plan_launch, probe_host  # noqa: E402

FULL_STACK_TARGET_MS = 30.0
COMBINATIONS: dict[str, tuple[str, ...] | None] = {
    "none": None,
    "rlimits": ("rlimits",),
    "seccomp": ("seccomp",),
    "landlock": ("landlock",),
    "seccomp+landlock+rlimits": ("seccomp", "landlock", "rlimits"),
    "bubblewrap": ("bubblewrap",),
    "bubblewrap+rlimits": ("bubblewrap", "rlimits"),
    "full": ("bubblewrap", "seccomp", "landlock", "rlimits"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--smoke", action="store_true", help="one round: proves the script runs (tests)")
    args = parser.parse_args()
    if args.smoke:
        args.rounds = 1
    work = Path(tempfile.mkdtemp(prefix="medigan-iso-bench-sandbox-"))
    try:
        python = build_runner_env(work / "home", ["numpy"])
        package = write_numpy_zoo(work / "pkg")
        support = probe_host()
        plans = {}
        refused: dict[str, str] = {}
        skipped: dict[str, str] = {}
        for name, layers in COMBINATIONS.items():
            if layers is not None:
                absent = [layer for layer in layers if not support.available(layer)]
                if absent:
                    skipped[name] = "; ".join(f"{layer}: {support.layers[layer].detail}" for layer in absent)
                    continue
            config = SandboxConfig(policy="off" if layers is None else "require", layers=layers or ())
            try:
                plans[name] = plan_launch(
                    config, python=python, package_root=package, output_dir=None, support=support
                )
            except SandboxError as exc:
                # require refuses this combination here (it leaves a gap): time it as auto runs it
                refused[name] = str(exc).splitlines()[0]
                config = SandboxConfig(policy="auto", layers=layers or ())
                plans[name] = plan_launch(
                    config, python=python, package_root=package, output_dir=None, support=support
                )
        times: dict[str, list[float]] = {name: [] for name in plans}
        for round_ in range(args.rounds + 1):
            for name, plan in plans.items():
                started = time.perf_counter()
                runner = RunnerProcess.start(
                    python,
                    log_path=work / "logs" / f"{name}.log",
                    command_prefix=plan.command_prefix,
                    env_overrides=plan.env_overrides,
                )
                elapsed = (time.perf_counter() - started) * 1000
                runner.close()
                if round_:  # round 0 warms the page cache
                    times[name].append(elapsed)
        base = statistics.median(times["none"])
        results = {
            name: {
                "layers": list(plans[name].layers),
                "median_ms": round(statistics.median(values), 2),
                "p90_ms": round(sorted(values)[int(0.9 * (len(values) - 1))], 2),
                "added_median_ms": round(statistics.median(values) - base, 2),
                **({"require_refuses": refused[name]} if name in refused else {}),
            }
            for name, values in times.items()
        }
        full = results.get("full")
        print(
            json.dumps(
                {
                    "benchmark": "sandbox_spawn_to_hello",
                    "rounds": args.rounds,
                    "machine": {"python": platform.python_version(), "kernel": platform.release()},
                    "host_support": {k: v.detail for k, v in support.layers.items()},
                    "results": results,
                    "skipped": skipped,
                    "target_full_added_ms": FULL_STACK_TARGET_MS,
                    "full_meets_target": None
                    if full is None
                    else full["added_median_ms"] <= FULL_STACK_TARGET_MS,
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
