"""``medigan-iso generate`` writing PNGs vs the same request through ``Session.generate``; prints JSON.

Usage: ``python benchmarks/bench_writer.py [--samples N] [--rounds R] [--smoke]`` from the tox
``py``/``bench`` env. The bundled demo-numpy model (64x64 uint8) in a temporary MEDIGAN_ISO_HOME (env built
once, before the clock); each variant is a fresh process (start-up, runner spawn, model load included on
both sides), run interleaved ``--rounds`` times (default 3), medians compared:

- ``session_generate``: ``Session().generate("demo-numpy", N, batch_size=32, seed=0)`` in memory;
- ``cli_png``: ``medigan-iso generate demo-numpy -n N --batch-size 32 --seed 0 -o DIR`` (PNG files, manifest).

Target (issue 17): ``cli_png / session_generate`` <= 1.3 at N = 3000.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "demo-numpy"
TARGET = 1.3
SESSION = (
    "import sys\n"
    "from medigan_iso import Session\n"
    "with Session() as s:\n"
    "    assert len(s.generate(sys.argv[1], int(sys.argv[2]), batch_size=32, seed=0)) == int(sys.argv[2])\n"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script runs (tests)")
    args = parser.parse_args()
    n, rounds = (64, 1) if args.smoke else (args.samples, args.rounds)
    work = Path(tempfile.mkdtemp(prefix="medigan-iso-bench-writer-"))
    env = dict(os.environ, MEDIGAN_ISO_HOME=str(work / "home"), MEDIGAN_ISO_CATALOGUE_URL="")
    for key in ("MEDIGAN_ISO_CONFIG", "MEDIGAN_ISO_BUILD"):
        env.pop(key, None)
    script = Path(sys.executable).with_name("medigan-iso")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "medigan_iso"]
    try:
        subprocess.run([sys.executable, "-c", SESSION, MODEL, "32"], env=env, check=True, capture_output=True)
        times: dict[str, list[float]] = {"session_generate": [], "cli_png": []}
        for round_ in range(rounds):
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", SESSION, MODEL, str(n)], env=env, check=True, capture_output=True
            )
            times["session_generate"].append(time.perf_counter() - started)
            out = work / f"out-{round_}"
            argv = [
                *cli,
                "generate",
                MODEL,
                "-n",
                str(n),
                "--batch-size",
                "32",
                "--seed",
                "0",
                "-o",
                str(out),
            ]
            started = time.perf_counter()
            subprocess.run(argv, env=env, check=True, capture_output=True)
            times["cli_png"].append(time.perf_counter() - started)
            pngs = sum(1 for p in out.iterdir() if p.suffix == ".png")
            assert pngs == n, f"{pngs} PNGs for {n} samples"
            # the outputs stay until the end: deleting 3000 files here made the next rounds' file creation
            # dearer (ext4 skips recently freed inodes when it allocates), a cost of the bench, not the CLI
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    report = {
        "benchmark": "writer",
        "model": MODEL,
        "n": n,
        "rounds": rounds,
        "median_s": {name: round(value, 3) for name, value in medians.items()},
        "cli_png_over_session_generate": round(medians["cli_png"] / medians["session_generate"], 3),
        "target": TARGET,
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
