"""Every benchmark script still runs (issue 19): ``benchmarks/run_all.py --smoke`` at tiny sizes.

The figures of a smoke run mean nothing (the real ones come from ``tox -e bench``); what is checked is
that each script exits 0 and prints the JSON its report promises, so a benchmark broken by a change to
the code it measures fails the test run instead of rotting unseen. No wall-clock assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# The keys each script's JSON must hold: a script that prints something else has changed its report.
EXPECTED_KEYS = {
    "bench_demo_tf1": {"env_build_s", "first_generate_s", "max_abs_diff_vs_demo_numpy", "tensorflow"},
    "bench_explore": {"first_grid_s", "warm_grid_ms", "warm_sample_post_ms", "in_process_grid_ms"},
    "bench_envs": {"cache_hit_ms", "resolve_uncached_s", "new_numpy_env_uv", "new_numpy_env_virtualenv"},
    "bench_provenance": {
        "record_us_per_line",
        "verify_files_per_s",
        "generate_png_with_manifest_s",
        "session_generate_s",
    },
    "bench_ray": {"plain", "startup", "ray_1_node"},
    "bench_runner": {"host_rss_streaming", "overhead_warm_runner_vs_in_process", "frame_throughput"},
    "bench_sandbox": {"benchmark", "results", "host_support"},
    "bench_startup": {"version_over_import_numpy", "list_over_import_numpy", "median_s"},
    "bench_threads": {"numpy", "torch", "machine", "cleared_from_environment"},
    "bench_soak": {"requests", "crashes", "after_warmup", "end", "end_minus_warmup", "after_close"},
    "bench_writer": {"cli_png_over_session_generate", "median_s"},
    "bench_torch": {
        "session_generate",
        "dataloader_map_w2",
        "dataloader_stream_w2",
        "first_batch_100k",
        "rss",
    },
    "catalogue_load": {"benchmark", "models", "results"},
    "packages_extract": {"safe_extract_s", "tree_sha256_s", "safe_over_plain"},
}


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    if not BENCHMARKS.is_dir():
        pytest.skip("benchmarks/ is not beside the tests (running from an installed copy)")
    env = dict(os.environ, MEDIGAN_ISO_HOME=str(tmp_path_factory.mktemp("bench-home")))
    env.pop("MEDIGAN_ISO_OFFLINE", None)  # a cold uv cache may need the index for numpy
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_all.py"), "--smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report: dict[str, dict[str, object]] = json.loads(proc.stdout)
    return report


def test_every_benchmark_script_is_known_here() -> None:
    scripts = {p.stem for p in BENCHMARKS.glob("*.py") if p.name not in ("run_all.py", "__init__.py")}
    assert scripts == set(EXPECTED_KEYS), "a new benchmark needs --smoke and an EXPECTED_KEYS line here"


@pytest.mark.parametrize("script", sorted(EXPECTED_KEYS))
def test_benchmark_smoke_run_prints_its_report(
    smoke_report: dict[str, dict[str, object]], script: str
) -> None:
    entry = smoke_report[script]
    assert entry["returncode"] == 0, entry
    result = entry["result"]
    assert isinstance(result, dict) and "unparsed_stdout" not in result, result
    # bench_demo_tf1 on a machine without Python 3.7 says why in "skipped"; bench_sandbox's "skipped" is a
    # map of the layer combinations it could not time, and its report stands either way
    if isinstance(result.get("skipped"), str) and not os.environ.get("CI"):
        pytest.skip(f"{script}: {result['skipped']}")
    assert EXPECTED_KEYS[script] <= set(result), sorted(result)


def test_bench_threads_compares_the_default_budget_with_none(
    smoke_report: dict[str, dict[str, object]],
) -> None:
    # issue 17 item 6: the runners really got the default budget (usable CPUs // warm runners), the
    # Session(threads=0) runners none, and the budget reached the BLAS pool (fewer threads in the runner)
    from medigan_iso.runner_process import usable_cpus

    result = smoke_report["bench_threads"]["result"]
    assert isinstance(result, dict)
    cpus = usable_cpus()
    assert result["machine"]["usable_cpus"] == cpus
    kinds = ["numpy"] if isinstance(result["torch"].get("skipped"), str) and not os.environ.get("CI") else []
    for kind in kinds or ["numpy", "torch"]:
        report = result[kind]
        assert report["thread_budgets"] == {
            "budget": [cpus, max(1, cpus // 2)],
            "no_budget": [None, None],
            "every_cpu": [cpus, cpus],
        }
        tasks = report["runner_tasks"]
        assert all(count > 1 for count in tasks["budget"] + tasks["no_budget"]), (
            tasks
        )  # the runner's own threads
        if cpus > 1:  # a budget of 1 starts no pool workers; no budget starts a thread per core
            assert tasks["budget"][1] < tasks["no_budget"][1], tasks
        assert set(report["cases"]) == {"1_runner", "2_runners"}
        for case in report["cases"].values():
            for metric in ("wall_s", "cpu_s"):
                for variant in ("budget", "no_budget", "every_cpu"):
                    stats = case[metric][variant]
                    assert 0 < stats["best"] <= stats["median"], case
            for prefix in ("ratio", "control_ratio"):
                for ratio in ("wall", "cpu", "wall_medians", "cpu_medians"):
                    assert case[f"{prefix}_{ratio}"] > 0, case


def test_frame_throughput_reports_cpu_per_array_on_both_sides(
    smoke_report: dict[str, dict[str, object]],
) -> None:
    # the wall-clock ratio moves with the machine's load; CPU per array tells a dearer transport apart
    result = smoke_report["bench_runner"]["result"]
    assert isinstance(result, dict)
    throughput = result["frame_throughput"]
    for variant in ("pipe", "shared_memory", "shared_memory_view"):
        for size, case in throughput[variant].items():
            for side in ("host", "runner"):
                value = case[f"{side}_cpu_us_per_array"]
                assert isinstance(value, float) and value > 0, (variant, size, case)


def test_run_all_gathers_every_issue_17_figure(smoke_report: dict[str, dict[str, object]]) -> None:
    # `tox -e bench` prints each of issue 17's figures as a ratio: after a full (smoke) run none is missing,
    # so a benchmark that renames a key the summary reads fails here
    summary = smoke_report["issue_17"]
    assert isinstance(summary, dict)
    rows = summary["figures"]
    assert len(rows) >= 20
    for row in rows:
        if isinstance(row["ratio"], str) and row["ratio"].startswith("skipped") and not os.environ.get("CI"):
            continue  # a torch env that could not be built says so
        assert isinstance(row["ratio"], float) and row["ratio"] > 0, row
        assert row["met"] in (True, False, None), row
        if row["target"] is not None and not row["target"].startswith("~"):
            assert row["met"] == _judge(row["ratio"], row["target"]), row


def _judge(ratio: float, target: str) -> bool:
    op, value = target.split()
    return ratio >= float(value) if op == ">=" else ratio <= float(value)


def test_run_all_summary_says_missing_for_a_script_that_did_not_run() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_all.py"), "--summarize", "/dev/stdin"],
        input=json.dumps({"bench_startup": {"returncode": 0, "result": {"version_over_import_numpy": 0.5}}}),
        capture_output=True,
        text=True,
        check=True,
    )
    lines = {line.split("  ")[1].strip(): line for line in proc.stdout.splitlines()[1:]}
    assert (
        "0.500" in lines["CLI --version / import numpy"] and " met " in lines["CLI --version / import numpy"]
    )
    assert "missing" in lines["CLI list / import numpy"]
    assert "[no 'list_over_import_numpy' in bench_startup's report" in lines["CLI list / import numpy"]
    assert "[bench_runner did not run]" in lines["transport pipe 1 MiB / raw pipe"]
