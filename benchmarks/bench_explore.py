"""The explorer's request latencies on a real server, next to the same work done in-process.

Starts ``medigan-iso explore --port 0`` (real uvicorn on 127.0.0.1) over the bundled demo models with a
fresh home, then measures with requests:

- ``first_grid_s``: the first 16-sample grid of demo-numpy (env build or reuse, runner spawn, model load);
- ``warm_grid_ms``: median of the next grids (warm runner; a new seed each time);
- ``warm_sample_post_ms``: median of slider requests (POST /sample with one latent edit);
- ``index_ms`` and ``search_ms``: median of the index page and of ``/api/models?q=phantom``;
- ``in_process_grid_ms``: median of the same grids made by ``Explorer.grid_png`` in this process (its own
  Session and warm runner): what HTTP, the access checks and the server add is the difference.

Prints one JSON object. ``--smoke``: fewer repetitions (the figures then mean nothing).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

TOKEN = "bench-explore-token-0123456789abcdef"
N = 16


def start(home: Path) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    env.update(
        {
            "MEDIGAN_ISO_HOME": str(home),
            "MEDIGAN_ISO_CATALOGUE_URL": "",
            "MEDIGAN_ISO_EXPLORE_TOKEN": TOKEN,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("MEDIGAN_ISO_CONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "medigan_iso", "explore", "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        line = lines.get(timeout=300)
        if " at http://" in line:
            url = line.rsplit(" at ", 1)[1].strip()
            return process, url.split("/?", 1)[0]


def median_ms(action, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        action(i)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 1)


def main() -> None:
    smoke = "--smoke" in sys.argv
    repeats = 3 if smoke else 15
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with tempfile.TemporaryDirectory(prefix="bench-explore-") as tmp:
        home = Path(tmp) / "home"
        process, base = start(home)
        try:
            http = requests.Session()
            http.headers.update(auth)

            def grid(i: int) -> None:
                response = http.get(
                    f"{base}/api/models/demo-numpy/grid.png?n={N}&seed={1000 + i}", timeout=600
                )
                response.raise_for_status()

            started = time.perf_counter()
            grid(-1)
            first_grid_s = round(time.perf_counter() - started, 2)
            warm_grid = median_ms(grid, repeats)

            def sample(i: int) -> None:
                body = {"seed": 7, "n": N, "latent_edits": {"0": -3.0 + 0.4 * i}}
                http.post(f"{base}/api/models/demo-numpy/sample", json=body, timeout=600).raise_for_status()

            warm_sample = median_ms(sample, repeats)
            index = median_ms(lambda i: http.get(f"{base}/", timeout=60).raise_for_status(), repeats)
            search = median_ms(
                lambda i: http.get(f"{base}/api/models?q=phantom", timeout=60).raise_for_status(), repeats
            )
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)
            if process.stdout is not None:
                process.stdout.close()

        from medigan_iso import Session
        from medigan_iso.explore.service import Explorer

        os.environ["MEDIGAN_ISO_HOME"] = str(home)
        os.environ["MEDIGAN_ISO_CATALOGUE_URL"] = ""
        with Session() as session:
            explorer = Explorer(session)
            session.generate("demo-numpy", 1, seed=0)

            def in_process(i: int) -> None:
                request = explorer.request_from_query("demo-numpy", {"n": str(N), "seed": str(1000 + i)})
                explorer.grid_png("demo-numpy", request)

            in_process_grid = median_ms(in_process, repeats)
    print(
        json.dumps(
            {
                "benchmark": "explore",
                "samples_per_grid": N,
                "repeats": repeats,
                "first_grid_s": first_grid_s,
                "warm_grid_ms": warm_grid,
                "warm_sample_post_ms": warm_sample,
                "index_ms": index,
                "search_ms": search,
                "in_process_grid_ms": in_process_grid,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
