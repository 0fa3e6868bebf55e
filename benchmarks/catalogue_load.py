"""How long load_catalogue takes on each path users hit, side by side in one process; prints JSON.

Variants: offline (MEDIGAN_ISO_OFFLINE=1), online with the official catalogue unreachable (the network
path a machine without GitHub takes on every call), online with a fresh cached copy (no request), and
validation alone. Usage: ``python benchmarks/catalogue_load.py [CATALOGUE.json] [--repeat N] [--smoke]``
(``--smoke``: two repeats, and no attempt to reach the official catalogue's host).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

from medigan_iso.catalogue import OFFICIAL_CATALOGUE_URL, load_catalogue, validate_catalogue

DEFAULT_FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "medigan_global.json"


def _time(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(statistics.median(samples), 2), "max_ms": round(max(samples), 2)}


def _serve(body: bytes) -> tuple[str, ThreadingHTTPServer]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}/global.json", httpd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("catalogue", nargs="?", default=str(DEFAULT_FIXTURE))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script runs (tests)")
    args = parser.parse_args()
    if args.smoke:
        args.repeat = 2
    logging.disable(logging.WARNING)
    path = Path(args.catalogue)
    data = json.loads(path.read_text())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/global.json"
    url, httpd = _serve(path.read_bytes())
    with tempfile.TemporaryDirectory() as home:
        os.environ.pop("MEDIGAN_ISO_OFFLINE", None)
        load_catalogue([], home=home, official_url=url)  # fill the cache
        variants = {
            "offline": lambda: load_catalogue(path, home=home, offline=True),
            "official_unreachable_dns": lambda: load_catalogue(
                path, home=home, offline=False, official_url=OFFICIAL_CATALOGUE_URL
            ),
            "official_connection_refused": lambda: load_catalogue(
                path, home=home, offline=False, official_url=closed
            ),
            "official_cached_fresh": lambda: load_catalogue([], home=home, offline=False, official_url=url),
            "official_refetched": lambda: load_catalogue(
                [], home=home, offline=False, official_url=url, max_age_s=0
            ),
            "validate_only_lenient": lambda: validate_catalogue(data, source="x"),
        }
        if args.smoke:  # tests reach nothing but 127.0.0.1
            del variants["official_unreachable_dns"]
        results = {name: _time(fn, args.repeat) for name, fn in variants.items()}
    httpd.shutdown()
    print(json.dumps({"benchmark": "catalogue_load", "models": len(data), "results": results}, indent=2))


if __name__ == "__main__":
    main()
