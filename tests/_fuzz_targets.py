"""Fuzz targets shared by the bounded hypothesis run (tests/test_fuzz.py) and atheris (tests/fuzz_atheris.py).

Each target takes bytes and checks the boundary's contract, raising AssertionError (or letting an
unexpected exception through) when it breaks:

- ``frame_decoder``: ``read_frame`` then ``unpack_samples`` raise only ``ProtocolError`` and never read
  past the caps; the same bytes read through a ``ShapeCache`` (shared by every input, so inputs meet the
  structures earlier ones left in it) give the same frames and samples, or the same refusal (issue 17).
- ``safe_extract``: a zip either extracts into ``dest`` with only regular files and directories inside it,
  or is refused with ``UnsafeArchiveError`` leaving nothing behind (no ``dest``, no temporary sibling).
- ``catalogue_loader``: a catalogue file either loads (every entry normalised, every text neutralisable)
  or fails with a ``CatalogueError``.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from medigan_iso_runner import protocol

SMALL_LIMITS = protocol.Limits(max_header_bytes=1 << 16, max_payload_bytes=1 << 20, max_arrays=64)


# shared by every fuzz input: a frame must be refused or decoded alike whatever structures are cached
_SHAPES = protocol.ShapeCache(max_entries=256)


def _decode_all(data: bytes, cache: protocol.ShapeCache | None) -> tuple[list[Any], str | None]:
    """Every frame of ``data`` as (kind, header bytes, arrays, samples), then the refusal (None: EOF)."""
    reader = protocol.bytes_reader(data)
    frames: list[Any] = []
    try:
        while True:
            frame = protocol.read_frame(reader, SMALL_LIMITS, cache=cache)
            if frame is None:
                return frames, None
            assert sum(a.nbytes for a in frame.arrays) <= SMALL_LIMITS.max_payload_bytes
            samples = None
            if frame.kind == "batch":
                if cache is None:
                    samples = protocol.unpack_samples(frame.header.get("samples"), frame.arrays, SMALL_LIMITS)
                else:
                    samples = protocol.frame_samples(frame, SMALL_LIMITS)
            header = msgpack.packb(sorted(frame.header.items()), use_bin_type=True)
            frames.append((frame.kind, header, frame.arrays, samples))
    except protocol.ProtocolError as exc:
        return frames, exc.reason


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, (np.ndarray, np.generic)):
        return bool(a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes())
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return bool(a == b)


def frame_decoder(data: bytes) -> None:
    plain, refused = _decode_all(data, None)
    cached, cached_refused = _decode_all(data, _SHAPES)
    if (cached_refused is not None and refused is None) or len(cached) < len(plain):
        # the cached reader is stricter in one rule only: a header may not repeat a key
        assert cached_refused is not None and "repeats the key" in cached_refused, (refused, cached_refused)
        plain = plain[: len(cached)]
    else:
        assert (refused is None) == (cached_refused is None), (refused, cached_refused)
        assert len(cached) == len(plain), (len(plain), len(cached))
    for (kind, header, arrays, samples), (ckind, cheader, carrays, csamples) in zip(plain, cached):
        assert kind == ckind and header == cheader, (header, cheader)
        assert _same(arrays, carrays) and _same(samples, csamples), (arrays, carrays, samples, csamples)


def frame_from_parts(header: bytes, payload: bytes, declared_payload: int | None = None) -> bytes:
    """A frame with ``header`` as the raw msgpack bytes (valid or not) and ``payload`` after it."""
    size = len(payload) if declared_payload is None else declared_payload
    return struct.pack(">4sIQ", protocol.MAGIC, len(header), size) + header + payload


def safe_extract(data: bytes) -> None:
    from medigan_iso.archives import ExtractLimits
    from medigan_iso.archives import safe_extract as extract
    from medigan_iso.errors import UnsafeArchiveError

    limits = ExtractLimits(max_entries=64, max_total_bytes=1 << 20, max_central_directory_bytes=1 << 16)
    with tempfile.TemporaryDirectory(prefix="fuzz-zip-") as tmp:
        root = Path(tmp)
        archive = root / "in.zip"
        archive.write_bytes(data)
        dest = root / "out" / "pkg"
        dest.parent.mkdir()
        try:
            extract(archive, dest, limits=limits)
        except UnsafeArchiveError:
            assert not dest.exists() or not any(dest.iterdir()), "a refused archive left files"
            assert sorted(p.name for p in dest.parent.iterdir()) in ([], ["pkg"]), "temporary dir left"
            return
        for path in dest.rglob("*"):
            assert not path.is_symlink(), f"symlink extracted: {path}"
            assert path.is_file() or path.is_dir(), f"special file extracted: {path}"
            assert path.resolve().is_relative_to(dest.resolve()), f"escaped: {path}"


def catalogue_loader(data: bytes) -> None:
    from medigan_iso.api import ModelInfo
    from medigan_iso.catalogue import load_catalogue
    from medigan_iso.errors import CatalogueError
    from medigan_iso.untrusted import neutralise

    with tempfile.TemporaryDirectory(prefix="fuzz-cat-") as tmp:
        path = Path(tmp) / "catalogue.json"
        path.write_bytes(data)
        old = {k: os.environ.get(k) for k in ("MEDIGAN_ISO_BUNDLED", "MEDIGAN_ISO_HOME")}
        os.environ["MEDIGAN_ISO_BUNDLED"] = "0"
        os.environ["MEDIGAN_ISO_HOME"] = str(Path(tmp) / "home")
        try:
            try:
                catalogue = load_catalogue(str(path), offline=True)
            except CatalogueError:
                return
            for entry in catalogue:
                info = ModelInfo.from_entry(entry)
                text = neutralise(f"{info.model_id} {info.title} {entry.dependencies}")
                assert all(ch.isprintable() for ch in text)
                json.dumps(info.to_dict())
        finally:
            for key, value in old.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


TARGETS = {"frame": frame_decoder, "zip": safe_extract, "catalogue": catalogue_loader}


def run_quietly(target: str, data: bytes) -> None:
    with Path(os.devnull).open("w") as sink, contextlib.redirect_stderr(sink):
        TARGETS[target](data)
