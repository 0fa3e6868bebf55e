"""Soak: many requests on one warm Session with runner crashes injected; prints JSON.

Usage: ``python benchmarks/bench_soak.py [--requests N] [--crash-every K] [--sandbox POLICY] [--smoke]``.
Defaults: 10,000 requests, a crash (the model calls ``os._exit(3)``) every 500th, sandbox ``auto``. It writes
a numpy model package and a catalogue in a temp dir, builds the env with uv (warm cache: seconds), runs, and
deletes everything it wrote.

Target (issue 16): host RSS, open fds, threads and child processes flat at the end: the figures after the
warm-up and at the end are printed side by side with their difference; each crash must cost one respawn and
leave nothing behind (no runner processes, no cgroup, no private temp dir). ``--smoke`` runs 60 requests
with a crash every 20 so the test suite proves the script still works; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from _model_fixtures import write_numpy_zoo, zoo_execution  # noqa: E402

from medigan_iso import Session  # noqa: E402
from medigan_iso.errors import RunnerCrashedError  # noqa: E402
from medigan_iso.packages import tree_sha256  # noqa: E402

MODEL_ID = "soak-zoo"
WARMUP_REQUESTS = 100


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _descendants() -> int:
    """Processes descending from this one (runners, launchers, anything they left behind)."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):  # noqa: PTH208
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        parents.setdefault(int(stat.rsplit(b")", 1)[1].split()[1]), []).append(int(name))
    count, level = 0, [os.getpid()]
    while level:
        level = [child for pid in level for child in parents.get(pid, [])]
        count += len(level)
    return count


def _private_dirs() -> int:
    return len(list(Path(tempfile.gettempdir()).glob("medigan-iso-runner-*")))


def sample() -> dict[str, int]:
    return {
        "rss_kb": _status_kb("VmRSS"),
        "fds": len(os.listdir("/proc/self/fd")),  # noqa: PTH208
        "threads": _status_kb("Threads"),
        "python_threads": threading.active_count(),
        "descendants": _descendants(),
        "runner_temp_dirs": _private_dirs(),
    }


def _catalogue(root: Path) -> Path:
    package = write_numpy_zoo(root / "catalogue" / "models" / "zoo")
    entry = {
        "execution": zoo_execution(
            "models/zoo", tree_sha256(package), custom={"behaviour": "plain", "size": 8}
        ),
        "selection": {},
        "description": {"title": "soak"},
    }
    path = root / "catalogue" / "catalogue.json"
    path.write_text(json.dumps({MODEL_ID: entry}), encoding="utf-8")
    return path


def run(requests: int, crash_every: int, sandbox: str) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="medigan-iso-soak-"))
    os.environ["MEDIGAN_ISO_CATALOGUE_URL"] = ""
    # runner temp dirs land here, so leftovers are ours to count (other processes share /tmp)
    (root / "tmp").mkdir()
    tempfile.tempdir = str(root / "tmp")
    try:
        catalogue = _catalogue(root)
        before_session = sample()
        crashes = 0
        timeline: list[dict[str, Any]] = []
        with Session(config=str(catalogue), home=root / "home", offline=False, sandbox=sandbox) as session:
            started = time.perf_counter()
            session.generate(MODEL_ID, 1)  # env build, package, first spawn
            first_s = time.perf_counter() - started
            warm = None
            started = time.perf_counter()
            for i in range(1, requests + 1):
                if crash_every and i % crash_every == 0:
                    try:
                        session.generate(MODEL_ID, 1, behaviour="exits")
                    except RunnerCrashedError:
                        crashes += 1
                    else:
                        raise AssertionError("the injected crash did not crash the runner")
                else:
                    [image] = session.generate(MODEL_ID, 1)
                    assert image.shape == (8, 8, 3)
                if i == min(WARMUP_REQUESTS, requests):
                    warm = sample()
                step = max(2, requests // 10)
                if i % step == step - 1:  # between crashes: a warm runner is up
                    timeline.append({"request": i, **sample()})
            elapsed = time.perf_counter() - started
            session.generate(MODEL_ID, 1)  # the last request may have been a crash: end on a warm runner
            end = sample()
        after_close = sample()
        assert warm is not None
        return {
            "requests": requests,
            "crash_every": crash_every,
            "crashes": crashes,
            "sandbox": sandbox,
            "first_request_s": round(first_s, 2),
            "requests_per_s": round(requests / elapsed, 1),
            "elapsed_s": round(elapsed, 1),
            "before_session": before_session,
            "after_warmup": warm,
            "end": end,
            "end_minus_warmup": {key: end[key] - warm[key] for key in end},
            "after_close": after_close,
            "timeline": timeline,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--crash-every", type=int, default=500)
    parser.add_argument("--sandbox", default="auto", choices=("off", "auto", "require"))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.requests, args.crash_every = 60, 20
    result = run(args.requests, args.crash_every, args.sandbox)
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
