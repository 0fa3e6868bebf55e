"""Run every benchmark script in this folder, one after another, and print one JSON object.

Each script prints its own JSON (its variants side by side, measured in one process so ratios hold on a
noisy machine); this collects them under the script's name, with the exit code and wall time. Name
scripts to run a subset: ``python benchmarks/run_all.py [--smoke] [NAME ...]`` (e.g. ``bench_envs``).
``--smoke`` passes ``--smoke`` to every script: tiny sizes, seconds each, so the test suite
(tests/test_benchmarks.py) proves every benchmark still runs; the figures mean nothing then.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT_TIMEOUT_S = 3600


def main(argv: list[str]) -> int:
    smoke = "--smoke" in argv
    wanted = {arg for arg in argv if arg != "--smoke"}
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in ("run_all.py", "__init__.py"))
    if wanted:
        scripts = [p for p in scripts if p.stem in wanted or p.name in wanted]
    report: dict[str, object] = {}
    failed = False
    for script in scripts:
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(script), *(["--smoke"] if smoke else [])],
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
        )
        elapsed = round(time.perf_counter() - started, 1)
        try:
            result: object = json.loads(proc.stdout)
        except ValueError:
            result = {"unparsed_stdout": proc.stdout[-2000:], "stderr_tail": proc.stderr[-2000:]}
        failed = failed or proc.returncode != 0
        report[script.stem] = {"returncode": proc.returncode, "wall_s": elapsed, "result": result}
        print(f"{script.name}: exit {proc.returncode} in {elapsed} s", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
