"""What safe extraction costs: safe_extract vs zipfile.extractall, and tree_sha256 vs sha256_file.

Builds one package in a temp dir (a large incompressible weights file plus many small files, like an
upstream model with sample images), then times each variant in this process and prints one JSON object.
Usage: python benchmarks/packages_extract.py [--weights-mib 64] [--small-files 2000] [--repeat 3] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from medigan_iso.packages import safe_extract, sha256_file, tree_sha256


def _build(root: Path, *, weights_mib: int, small_files: int) -> Path:
    archive = root / "pkg.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pkg/__init__.py", "def generate(*a, **k):\n    return []\n")
        zf.writestr("pkg/weights.pth", os.urandom(weights_mib << 20))
        for i in range(small_files):
            zf.writestr(f"pkg/images/{i:05d}.png", os.urandom(2048))
    return archive


def _best_of(repeat: int, func: Callable[[int], object]) -> float:
    best = float("inf")
    for i in range(repeat):
        start = time.perf_counter()
        func(i)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights-mib", type=int, default=64)
    parser.add_argument("--small-files", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script runs (tests)")
    args = parser.parse_args()
    if args.smoke:
        args.weights_mib, args.small_files, args.repeat = 1, 20, 1
    root = Path(tempfile.mkdtemp(prefix="bench-packages-"))
    try:
        archive = _build(root, weights_mib=args.weights_mib, small_files=args.small_files)

        def extractall(i: int) -> None:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(root / f"plain-{i}")

        def safe(i: int) -> None:
            safe_extract(archive, root / f"safe-{i}")

        def safe_ro(i: int) -> None:
            safe_extract(archive, root / f"ro-{i}", read_only=True)

        results = {
            "archive_bytes": archive.stat().st_size,
            "entries": args.small_files + 2,
            "zipfile_extractall_s": _best_of(args.repeat, extractall),
            "safe_extract_s": _best_of(args.repeat, safe),
            "safe_extract_read_only_s": _best_of(args.repeat, safe_ro),
            "sha256_file_s": _best_of(args.repeat, lambda _i: sha256_file(archive)),
            "tree_sha256_s": _best_of(args.repeat, lambda _i: tree_sha256(root / "safe-0")),
        }
        results["safe_over_plain"] = results["safe_extract_s"] / results["zipfile_extractall_s"]
        print(json.dumps(results, indent=2))
    finally:
        for path in root.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
