"""demo-tf1 (TensorFlow 1.15.5 on Python 3.7) costs and agreement, printed as JSON.

Run: MEDIGAN_ISO_UV_CACHE=~/.cache/medigan-iso-tests/uv python benchmarks/bench_demo_tf1.py [--cold] [--smoke]
(``--smoke``: 4 samples instead of 64; proves the script runs, for the tests.)
Measures, in a fresh medigan_iso home: the env build of the bundled demo-tf1 entry (resolve + install) with
the given uv cache, or with ``--cold`` an empty one (TensorFlow 1.15.5 and its dependencies come from the
index); the first generate (runner spawn, TF import, graph load, 64 samples); and the largest absolute
difference of the seeded float output from demo-numpy's (target: <= 1e-4). Needs a Python 3.7 (pyenv's is
found); without one it prints the reason as {"skipped": ...}.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N = 64
SMOKE_N = 4
SEED = 11


def main(argv: list[str]) -> int:
    n = SMOKE_N if "--smoke" in argv else N
    root = Path(tempfile.mkdtemp(prefix="bench-demo-tf1-"))
    os.environ["MEDIGAN_ISO_HOME"] = str(root / "home")
    os.environ["MEDIGAN_ISO_CATALOGUE_URL"] = ""
    os.environ.pop("MEDIGAN_ISO_CONFIG", None)
    os.environ.pop("MEDIGAN_ISO_OFFLINE", None)
    if "--cold" in argv:
        os.environ["MEDIGAN_ISO_UV_CACHE"] = str(root / "uv-cache")
    from medigan_iso import Session
    from medigan_iso.catalogue import load_catalogue
    from medigan_iso.envs import ensure_env
    from medigan_iso.errors import InterpreterNotFoundError

    try:
        entry = load_catalogue([]).resolve("demo-tf1")
        started = time.perf_counter()
        try:
            env = ensure_env(entry, home=root / "home", offline=False)
        except InterpreterNotFoundError as exc:  # run_all.py runs every script: say why, do not fail
            print(json.dumps({"skipped": f"demo-tf1 needs Python 3.7: {exc}"}, indent=2))
            return 0
        build_s = time.perf_counter() - started
        with Session(offline=False) as session:
            started = time.perf_counter()
            tf1 = np.stack(session.generate("demo-tf1", n, seed=SEED, output="float"))
            first_generate_s = time.perf_counter() - started
            started = time.perf_counter()
            np.stack(session.generate("demo-tf1", n, seed=SEED, output="float"))
            warm_generate_s = time.perf_counter() - started
            reference = np.stack(session.generate("demo-numpy", n, seed=SEED, output="float"))
            info = session.runner_info("demo-tf1")
        print(
            json.dumps(
                {
                    "uv_cache": "cold" if "--cold" in argv else "as given",
                    "env_build_s": round(build_s, 2),
                    "first_generate_s": round(first_generate_s, 2),
                    "warm_generate_s": round(warm_generate_s, 3),
                    "samples": n,
                    "max_abs_diff_vs_demo_numpy": float(np.abs(tf1 - reference).max()),
                    "python": info["python"],
                    "tensorflow": info["packages"].get("tensorflow"),
                    "numpy": info["numpy"],
                    "env": str(env.path),
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
