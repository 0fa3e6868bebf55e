"""Coverage-guided fuzzing of the hostile-input parsers with atheris (``tox -e fuzz``).

Usage: ``python tests/fuzz_atheris.py TARGET [libFuzzer flags]`` with TARGET one of frame, zip, catalogue,
e.g. ``-atheris_runs=200000`` or ``-max_total_time=120``. A crash prints the input and exits non-zero.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import atheris

# Instrument our parsers only (numpy, msgpack, zipfile stay fast); they are imported inside the block.
with atheris.instrument_imports(include=["medigan_iso", "medigan_iso_runner", "_fuzz_targets"]):
    import _fuzz_targets

    for _module in ("medigan_iso_runner.protocol", "medigan_iso.archives", "medigan_iso.catalogue"):
        importlib.import_module(_module)


def _seeds(target: str) -> list[bytes]:
    """Valid inputs to start from, so the fuzzer mutates real structure instead of finding it."""
    if target == "frame":
        import numpy as np
        from medigan_iso_runner import protocol

        tree, arrays = protocol.pack_samples([np.zeros((2, 2), np.uint8), ("label", 1.5, {"k": None})])
        batch = protocol.encode_frame({"kind": "batch", "request": 1, "samples": tree}, arrays)
        hello = protocol.encode_frame({"kind": "hello", "protocol": 1, "pid": 7})
        return [b"".join(bytes(b) for b in batch), b"".join(bytes(b) for b in hello)]
    if target == "zip":
        from _zipcraft import model_zip

        return [model_zip("demo_pkg"), model_zip("demo_pkg", extra={"w.npy": b"x" * 100})]
    from medigan_iso.catalogue import BUNDLED_CATALOGUE_NAME  # noqa: F401 - proves the package imports

    bundled = Path(__import__("medigan_iso").__file__).parent / "data" / "bundled_catalogue.json"
    return [bundled.read_bytes(), b"{}"]


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in _fuzz_targets.TARGETS:
        sys.exit(f"usage: fuzz_atheris.py {{{','.join(_fuzz_targets.TARGETS)}}} [libFuzzer flags]")
    name = sys.argv[1]
    target = _fuzz_targets.TARGETS[name]
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-corpus-"))
    for i, seed in enumerate(_seeds(name)):
        (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *sys.argv[2:], str(corpus)], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
