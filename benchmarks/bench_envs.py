"""Model env costs, printed as JSON: cache hit, new torch env (uv vs virtualenv+pip) with a warm cache.

Run: MEDIGAN_ISO_UV_CACHE=~/.cache/medigan-iso-tests/uv python benchmarks/bench_envs.py [--smoke]
(``--smoke``: a numpy env instead of torch and three cache hits; proves the script runs, for the tests.)
Targets (issue 3): hit <= 50 ms; new uv torch-2.13 env <= 1.5 s and <= 50 MB of disk not shared with the
uv cache. The virtualenv+pip fallback is measured in the same run for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from medigan_iso.archives import remove_tree
from medigan_iso.envs import EnvSpec, ensure_env, resolve
from medigan_iso.paths import cache_layout

TORCH = EnvSpec(["torch==2.13.0"], name="bench-torch")
SMOKE = EnvSpec(["numpy"], name="bench-smoke")
HIT_REPEATS = 30
SMOKE_HIT_REPEATS = 3


def inodes(root: Path) -> set[tuple[int, int]]:
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))  # noqa: PTH118
            seen.add((st.st_dev, st.st_ino))
    return seen


def extra_mb(env: Path, shared: set[tuple[int, int]]) -> float:
    """Disk blocks of the env's inodes that the uv cache does not hold (each inode counted once)."""
    counted: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(env):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))  # noqa: PTH118
            ident = (st.st_dev, st.st_ino)
            if ident not in shared and ident not in counted:
                counted.add(ident)
                total += st.st_blocks * 512
    return round(total / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script runs (tests)")
    args = parser.parse_args()
    spec, repeats, label = (
        (SMOKE, SMOKE_HIT_REPEATS, "numpy") if args.smoke else (TORCH, HIT_REPEATS, "torch")
    )
    root = Path(tempfile.mkdtemp(prefix="bench-envs-"))
    try:
        os.environ.pop("MEDIGAN_ISO_OFFLINE", None)
        warm_home, new_home = root / "warm", root / "new"
        results: dict[str, object] = {"python": sys.version.split()[0]}

        started = time.perf_counter()
        ensure_env(spec, home=warm_home)  # warms the uv cache (wheels and their bytecode)
        results["warmup_s"] = round(time.perf_counter() - started, 2)

        hits = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ensure_env(spec, home=warm_home)
            hits.append((time.perf_counter() - t0) * 1000)
        results["cache_hit_ms"] = {"median": round(statistics.median(hits), 2), "max": round(max(hits), 2)}

        t0 = time.perf_counter()
        resolve(spec, home=new_home)
        results["resolve_uncached_s"] = round(time.perf_counter() - t0, 2)
        shared = inodes(cache_layout(new_home).uv_cache)
        for builder in ("uv", "virtualenv"):
            t0 = time.perf_counter()
            env = ensure_env(spec, home=new_home, builder=builder)
            elapsed = time.perf_counter() - t0
            results[f"new_{label}_env_{builder}"] = {
                "build_s": round(elapsed, 2),
                "extra_disk_mb": extra_mb(env.path, shared),
                "key": env.key,
            }
        print(json.dumps(results, indent=2))
    finally:
        remove_tree(root)  # env and package trees are read-only


if __name__ == "__main__":
    main()
