"""Run every benchmark script in this folder, one after another, and print one JSON object.

Each script prints its own JSON (its variants side by side, measured in one process so ratios hold on a
noisy machine); this collects them under the script's name, with the exit code and wall time. Name
scripts to run a subset: ``python benchmarks/run_all.py [--smoke] [NAME ...]`` (e.g. ``bench_envs``).
``--smoke`` passes ``--smoke`` to every script: tiny sizes, seconds each, so the test suite
(tests/test_benchmarks.py) proves every benchmark still runs; the figures mean nothing then.

At the end it gathers issue 17's figures from the scripts' own reports into ``issue_17`` (each figure as a
ratio, its target, whether it is met, and the issue's "before" figure) and prints them as a table on stderr;
a figure whose script did not run, or whose key is gone, says "missing" instead of failing.
``python benchmarks/run_all.py --summarize REPORT.json`` prints that summary again from a saved report.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
SCRIPT_TIMEOUT_S = 3600


def _lookup(report: dict[str, Any], path: str) -> tuple[float | None, str | None]:
    """The number at ``script.key.key...`` in a run_all report, or None and why it is not there."""
    script, *keys = path.split(".")
    entry = report.get(script)
    if not isinstance(entry, dict):
        return None, f"missing: {script} did not run"
    node: Any = entry.get("result")
    for key in keys:
        if isinstance(node, dict) and isinstance(node.get("skipped"), str):
            return None, f"skipped: {node['skipped']}"
        if not isinstance(node, dict) or key not in node:
            return None, f"missing: no {key!r} in {script}'s report (exit {entry.get('returncode')})"
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return None, f"missing: {path} is {type(node).__name__}, not a number"
    return float(node), None


class Figure(NamedTuple):
    """One issue-17 figure: the key of its best ratio (and of its ratio of medians) in a run_all report,
    its target as (comparison, value) with "~" for an expectation shown but not judged, or None when the
    issue states no goal, and the figure the issue measured before the work."""

    name: str
    key: str
    median_key: str | None
    target: tuple[str, float] | None
    issue_before: str


def _ratios(prefix: str) -> tuple[str, str]:
    return f"{prefix}.ratio", f"{prefix}.ratio_medians"


def _isolation(case: str, variant: str = "") -> tuple[str, str]:
    key = f"bench_runner.overhead_warm_runner_vs_in_process.{case}.isolation_{variant}ratio"
    return f"{key}.best", f"{key}.medians"


def _threads(kind: str, case: str, metric: str, ratio: str = "ratio") -> tuple[str, str]:
    key = f"bench_threads.{kind}.cases.{case}.{ratio}_{metric}"
    return key, f"{key}_medians"


_PIPE = "bench_runner.frame_throughput.pipe"
_SHM = "bench_runner.frame_throughput.shared_memory"
_NO_SHM = "no shared memory"
_ONE = ("~", 1.0)  # one runner: its budget is every CPU, so both sides run the same pools
_LE1 = ("<=", 1.0)
_LE105 = ("<=", 1.05)
_THREADS_WALL = "0.39 (one thread / default threads, a run under load: 0.47 s / 1.21 s)"
_THREADS_CPU = "0.43 (one thread / default threads in-process: 1 / 2.3)"
# "{many}" is bench_threads' case with the most runners (CPUs + 1 by default)
ISSUE_17 = [
    Figure("transport pipe 64 KiB / raw pipe", *_ratios(f"{_PIPE}.64KiB"), (">=", 0.60), "0.18"),
    Figure("transport pipe 1 MiB / raw pipe", *_ratios(f"{_PIPE}.1MiB"), (">=", 0.80), "0.48-0.56"),
    Figure("transport pipe 4 MiB / raw pipe", *_ratios(f"{_PIPE}.4MiB"), None, "-"),
    Figure("transport pipe 16 MiB / raw pipe", *_ratios(f"{_PIPE}.16MiB"), None, "-"),
    Figure(
        "transport shm 64 KiB / raw pipe (pipe: below threshold)", *_ratios(f"{_SHM}.64KiB"), None, _NO_SHM
    ),
    Figure("transport shm 1 MiB / raw pipe", *_ratios(f"{_SHM}.1MiB"), (">=", 2.0), _NO_SHM),
    Figure("transport shm 4 MiB / raw pipe", *_ratios(f"{_SHM}.4MiB"), (">=", 2.0), _NO_SHM),
    Figure("transport shm 16 MiB / raw pipe", *_ratios(f"{_SHM}.16MiB"), (">=", 2.0), _NO_SHM),
    # sample_memory="view": read-only views of the slots handed out, no host copy
    Figure("transport shm views 1 MiB / raw pipe", *_ratios(f"{_SHM}_view.1MiB"), (">=", 2.0), _NO_SHM),
    Figure("transport shm views 4 MiB / raw pipe", *_ratios(f"{_SHM}_view.4MiB"), (">=", 2.0), _NO_SHM),
    Figure("transport shm views 16 MiB / raw pipe", *_ratios(f"{_SHM}_view.16MiB"), (">=", 2.0), _NO_SHM),
    Figure("CLI --version / import numpy", "bench_startup.version_over_import_numpy", None, ("<=", 1.5), "4"),
    Figure("CLI list / import numpy", "bench_startup.list_over_import_numpy", None, ("<=", 3.0), "-"),
    Figure(
        "CLI PNG n=3000 / Session.generate",
        "bench_writer.cli_png_over_session_generate",
        None,
        ("<=", 1.3),
        "1.65",
    ),
    Figure("threads numpy, 1 runner: wall, budget / none", *_threads("numpy", "1_runner", "wall"), _ONE, "-"),
    Figure("threads numpy, 1 runner: CPU, budget / none", *_threads("numpy", "1_runner", "cpu"), _ONE, "-"),
    Figure(
        "threads numpy, CPUs+1 runners: wall, budget / none",
        *_threads("numpy", "{many}", "wall"),
        _LE1,
        _THREADS_WALL,
    ),
    Figure(
        "threads numpy, CPUs+1 runners: CPU, budget / none",
        *_threads("numpy", "{many}", "cpu"),
        _LE1,
        _THREADS_CPU,
    ),
    Figure("threads torch, 1 runner: wall, budget / none", *_threads("torch", "1_runner", "wall"), _ONE, "-"),
    Figure("threads torch, 1 runner: CPU, budget / none", *_threads("torch", "1_runner", "cpu"), _ONE, "-"),
    Figure(
        "threads torch, CPUs+1 runners: wall, budget / none", *_threads("torch", "{many}", "wall"), _LE1, "-"
    ),
    Figure(
        "threads torch, CPUs+1 runners: CPU, budget / none", *_threads("torch", "{many}", "cpu"), _LE1, "-"
    ),
    # the control: Session(threads=CPUs) has no_budget's pool sizes set explicitly, so it should be ~1.0
    Figure(
        "threads numpy, CPUs+1 runners: wall, control / none",
        *_threads("numpy", "{many}", "wall", "control_ratio"),
        _ONE,
        "-",
    ),
    Figure(
        "threads torch, CPUs+1 runners: wall, control / none",
        *_threads("torch", "{many}", "wall", "control_ratio"),
        _ONE,
        "-",
    ),
    # isolation alone: in-process seeded per batch as the runner seeds (the 1.05 target's ratio)
    Figure("warm runner / in-process, numpy zoo", *_isolation("default_malloc"), _LE105, "1.05"),
    Figure(
        "warm runner / in-process, numpy zoo, malloc pinned",
        *_isolation("malloc_thresholds_pinned_both_sides"),
        _LE105,
        "-",
    ),
    Figure("warm runner / in-process, torch model", *_isolation("torch_model"), _LE105, "1.07"),
    # against a plain script seeded once: isolation plus provenance's per-batch seeding
    Figure(
        "warm runner / in-process seeded once, numpy zoo",
        *_isolation("default_malloc", "plus_seeding_"),
        None,
        "1.05",
    ),
    Figure(
        "warm runner / in-process seeded once, torch model",
        *_isolation("torch_model", "plus_seeding_"),
        None,
        "1.07",
    ),
]


def _many_runners_case(report: dict[str, Any]) -> str:
    """bench_threads' case with the most runners (``3_runners`` on 2 CPUs), from its own report."""
    result = (report.get("bench_threads") or {}).get("result")
    cases = (result or {}).get("numpy", {}).get("cases", {}) if isinstance(result, dict) else {}
    counts = [case.get("runners") for case in cases.values() if isinstance(case, dict)]
    most = max((c for c in counts if isinstance(c, int)), default=0)
    return f"{most}_runners" if most > 1 else "N_runners"


def issue_17_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Every issue-17 figure of a run_all report, as a ratio with its target (see ISSUE_17)."""
    many = _many_runners_case(report)
    figures = []
    for figure in ISSUE_17:
        key = figure.key.replace("{many}", many)
        value, why = _lookup(report, key)
        median = _lookup(report, figure.median_key.replace("{many}", many))[0] if figure.median_key else None
        target, met = figure.target, None
        if value is not None and target is not None and target[0] != "~":
            met = value >= target[1] if target[0] == ">=" else value <= target[1]
        figures.append(
            {
                "figure": figure.name,
                "ratio": value if why is None else why,
                "ratio_medians": median,
                "target": None if target is None else f"{target[0]} {target[1]}",
                "met": met,
                "issue_before": figure.issue_before,
                "key": key,
            }
        )
    loads = [
        entry["result"].get(key)
        for entry in report.values()
        if isinstance(entry, dict) and isinstance(entry.get("result"), dict)
        for key in ("load_average", "load_average_at_end")
        if entry["result"].get(key) is not None
    ]
    return {"figures": figures, "load_averages_seen": loads}


def print_summary(summary: dict[str, Any], out: Any = sys.stderr) -> None:
    print("issue 17 (ratio = best of rounds; medians in brackets):", file=out)
    for row in summary["figures"]:
        ratio, why = row["ratio"], ""
        if isinstance(ratio, float):
            shown = f"{ratio:.3f}"
        else:
            shown, _, why = str(ratio).partition(": ")
            why = f"  [{why}]"
        if row["ratio_medians"] is not None:
            shown += f" ({row['ratio_medians']:.3f})"
        verdict = {True: "met", False: "NOT met", None: ""}[row["met"]]
        target, before = row["target"] or "-", row["issue_before"]
        print(
            f"  {row['figure']:<56} {shown:<16} target {target:<8} {verdict:<8} issue: {before}{why}",
            file=out,
        )


def main(argv: list[str]) -> int:
    if argv[:1] == ["--summarize"]:
        if len(argv) != 2:
            print("usage: run_all.py --summarize REPORT.json", file=sys.stderr)
            return 2
        saved = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
        summary = issue_17_summary(saved)
        print_summary(summary, sys.stdout)
        return 0
    smoke = "--smoke" in argv
    wanted = {arg for arg in argv if arg != "--smoke"}
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in ("run_all.py", "__init__.py"))
    if wanted:
        scripts = [p for p in scripts if p.stem in wanted or p.name in wanted]
    report: dict[str, Any] = {}
    failed = False
    run_started = time.perf_counter()
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
    report["issue_17"] = issue_17_summary(report)
    report["total_wall_s"] = round(time.perf_counter() - run_started, 1)
    print_summary(report["issue_17"])
    print(f"all scripts: {report['total_wall_s']} s", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
