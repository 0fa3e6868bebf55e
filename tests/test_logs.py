"""Runner logs are capped (head and tail kept) and old logs are pruned (issue 16, finding 3).

The flood comes from a real runner of the hostile package; pruning runs on real files and through the CLI.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from _envs_for_tests import build_runner_env
from _hostile import write_hostile

from medigan_iso.cli import main
from medigan_iso.logfiles import AUTO_PRUNE_INTERVAL_S, LOG_IN_USE_S, auto_prune, prune_logs
from medigan_iso.runner_process import CappedLog, RunnerProcess

MIB = 1024 * 1024
DAY_S = 24 * 3600


@pytest.fixture(scope="module")
def numpy_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_runner_env(tmp_path_factory.mktemp("env-numpy"), ["numpy", "msgpack"])


def test_a_64_mib_stderr_flood_leaves_a_log_within_the_cap_with_head_and_tail(
    numpy_env: Path, tmp_path: Path
) -> None:
    hostile = write_hostile(tmp_path / "hostile")
    log = tmp_path / "logs" / "runner-flood.log"
    with RunnerProcess.start(numpy_env, log_path=log, max_log_bytes=2 * MIB) as proc:
        proc.load(hostile, model_file=hostile / "weights.npy", package_name="hostile")
        batches = list(proc.generate(1, batch_size=1, kwargs={"attack": "stderr_flood", "mib": 64}))
        assert len(batches[0]) == 1  # the model still answered
    size = log.stat().st_size
    assert size <= 2 * MIB + 200
    data = log.read_bytes()
    assert b"bytes of runner stderr dropped]" in data
    dropped = int(data.split(b"\n[medigan-iso: ")[1].split(b" ")[0])
    assert dropped == 64 * MIB - 2 * MIB
    assert sorted(p.name for p in log.parent.iterdir()) == ["runner-flood.log"]  # no .tail files left


def test_capped_log_keeps_the_first_and_last_halves(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "x.log", max_bytes=100)
    for i in range(100):
        log.write(f"{i:04d}\n".encode())  # 500 bytes
    log.close()
    data = (tmp_path / "x.log").read_bytes()
    head, _, tail = data.partition(b"\n[medigan-iso: 400 bytes of runner stderr dropped]\n")
    assert head == b"".join(f"{i:04d}\n".encode() for i in range(10))
    assert tail == b"".join(f"{i:04d}\n".encode() for i in range(90, 100))


def _log(path: Path, size: int, age_s: float) -> Path:
    path.write_bytes(b"x" * size)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_prune_removes_old_logs_then_the_oldest_beyond_the_total(tmp_path: Path) -> None:
    old = _log(tmp_path / "runner-a.log", 10, 30 * DAY_S)
    big_old = _log(tmp_path / "runner-b.log", 600, 3 * DAY_S)
    newer = _log(tmp_path / "env-c.log", 600, 2 * DAY_S)
    live = _log(tmp_path / "runner-live.log", 5000, 10)  # being written: never removed
    other = _log(tmp_path / "notes.txt", 10, 300 * DAY_S)
    report = prune_logs(tmp_path, max_total_bytes=1000 + 5000)
    assert sorted(report.removed) == sorted([old, big_old])
    assert report.freed_bytes == 610
    assert newer.exists() and live.exists() and other.exists()


def test_auto_prune_runs_at_most_once_per_interval(tmp_path: Path) -> None:
    old = _log(tmp_path / "runner-a.log", 10, 30 * DAY_S)
    first = auto_prune(tmp_path)
    assert first is not None and first.removed == [old]
    _log(tmp_path / "runner-b.log", 10, 30 * DAY_S)
    assert auto_prune(tmp_path) is None
    assert auto_prune(tmp_path, now=time.time() + AUTO_PRUNE_INTERVAL_S + LOG_IN_USE_S) is not None
    assert not (tmp_path / "runner-b.log").exists()


def test_logs_prune_cli(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = home / "logs"
    logs.mkdir(parents=True)
    old = _log(logs / "runner-x.log", 100, 20 * DAY_S)
    keep = _log(logs / "runner-y.log", 100, 2 * DAY_S)
    assert main(["logs", "prune", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == [str(old)]
    assert old.exists()
    assert main(["logs", "prune", "--older-than", "7"]) == 0
    out = capsys.readouterr().out
    assert f"removed {old}" in out and "removed 1 log(s)" in out
    assert not old.exists() and keep.exists()
    assert main(["logs", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(logs)
