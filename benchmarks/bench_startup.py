"""CLI and package start-up as ratios to ``python -c "import numpy"``, side by side; prints JSON.

Usage: ``python benchmarks/bench_startup.py [--rounds N] [--smoke]`` from the tox ``py``/``bench`` env. Each
round runs every command once, interleaved, in a fresh process; the medians are compared. ``list`` runs
against a temporary home holding only the bundled catalogue (no official catalogue: no network), after one
warm-up run that fills the validation cache, as every run after the first finds it.

Targets (issue 17): ``medigan-iso --version`` <= 1.5x and ``medigan-iso list`` <= 3x ``import numpy``.
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

VERSION_TARGET = 1.5
LIST_TARGET = 3.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--smoke", action="store_true", help="two rounds: proves the script runs (tests)")
    args = parser.parse_args()
    rounds = 2 if args.smoke else args.rounds
    script = Path(sys.executable).with_name("medigan-iso")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "medigan_iso"]
    home = Path(tempfile.mkdtemp(prefix="medigan-iso-bench-startup-"))
    env = dict(os.environ, MEDIGAN_ISO_HOME=str(home), MEDIGAN_ISO_CATALOGUE_URL="", MEDIGAN_ISO_OFFLINE="1")
    env.pop("MEDIGAN_ISO_CONFIG", None)
    commands = {
        "import_numpy": [sys.executable, "-c", "import numpy"],
        "import_medigan_iso": [sys.executable, "-c", "import medigan_iso"],
        "version": [*cli, "--version"],
        "list": [*cli, "list"],
    }
    try:
        subprocess.run(commands["list"], env=env, check=True, capture_output=True)  # fills the caches
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(rounds):
            for name, argv in commands.items():
                started = time.perf_counter()
                subprocess.run(argv, env=env, check=True, capture_output=True)
                times[name].append(time.perf_counter() - started)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    numpy_s = medians["import_numpy"]
    report = {
        "benchmark": "startup",
        "rounds": rounds,
        "median_s": {name: round(value, 4) for name, value in medians.items()},
        "version_over_import_numpy": round(medians["version"] / numpy_s, 2),
        "list_over_import_numpy": round(medians["list"] / numpy_s, 2),
        "import_medigan_iso_over_import_numpy": round(medians["import_medigan_iso"] / numpy_s, 2),
        "targets": {"version": VERSION_TARGET, "list": LIST_TARGET},
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
