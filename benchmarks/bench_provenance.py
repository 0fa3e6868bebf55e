"""What provenance costs: a manifest line, verifying a folder, and generate-to-disk beside generate-in-memory.

Prints JSON:
- ``record_us_per_line``: microseconds per ``ManifestWriter.record`` (sha256 of a 4 KiB file's bytes, one
  JSON line appended with one write);
- ``verify_files_per_s``: files per second ``medigan_iso.verify`` hashes and checks (4 KiB files);
- ``generate_png_with_manifest_s`` / ``session_generate_s``: demo-numpy, N samples, seed 1: the whole
  ``medigan-iso generate`` path (PNG files, manifest, run.json) in-process vs ``Session.generate`` into
  memory, both on a warm env (the difference is PNG encoding plus provenance).

``--smoke``: tiny sizes, so tests/test_benchmarks.py proves the script runs; the figures mean nothing then.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    smoke = "--smoke" in argv
    lines = 200 if smoke else 20_000
    files = 50 if smoke else 5_000
    samples = 8 if smoke else 512
    os.environ.setdefault("MEDIGAN_ISO_CATALOGUE_URL", "")

    import medigan_iso
    from medigan_iso.cli import main as cli
    from medigan_iso.manifest import ManifestWriter, RunContext

    payload = os.urandom(4096)
    result: dict[str, object] = {"smoke": smoke, "lines": lines, "files": files, "samples": samples}
    with tempfile.TemporaryDirectory(prefix="bench-provenance-") as tmp:
        root = Path(tmp)
        context = RunContext({"model_id": "bench", "batch_size": 32, "seed": 1, "kwargs": {}})
        (root / "record").mkdir()
        with ManifestWriter(root / "record", context) as writer:
            started = time.perf_counter()
            for i in range(lines):
                writer.record(f"sample_{i:05d}.png", data=payload, sample_index=i)
            elapsed = time.perf_counter() - started
        result["record_us_per_line"] = round(elapsed / lines * 1e6, 1)

        folder = root / "verify"
        folder.mkdir()
        with ManifestWriter(folder, context) as writer:
            for i in range(files):
                name = f"sample_{i:05d}.png"
                (folder / name).write_bytes(payload)
                writer.record(name, sample_index=i)
        started = time.perf_counter()
        report = medigan_iso.verify(folder)
        elapsed = time.perf_counter() - started
        assert report.ok and report.files == files
        result["verify_files_per_s"] = round(files / elapsed)

        with medigan_iso.Session() as session:
            session.generate("demo-numpy", 1, seed=1)  # warm: env built, runner loaded
            started = time.perf_counter()
            session.generate("demo-numpy", samples, seed=1)
            result["session_generate_s"] = round(time.perf_counter() - started, 3)
        with contextlib.redirect_stdout(sys.stderr):  # the CLI's report must not mix with this JSON
            cli(["generate", "demo-numpy", "-n", "1", "-o", str(root / "warm"), "--seed", "1"])
            started = time.perf_counter()
            code = cli(["generate", "demo-numpy", "-n", str(samples), "-o", str(root / "cli"), "--seed", "1"])
            result["generate_png_with_manifest_s"] = round(time.perf_counter() - started, 3)
        assert code == 0
        result["note"] = "generate_png_with_manifest_s includes a runner start; session_generate_s does not"
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
