"""Byte-level zip writer for tests: builds the archives zipfile refuses to write (hostile ones included).

``build_zip([RawEntry(...), ...])`` writes local headers, data, central directory and end record by hand,
so a test can set any name bytes, flags, mode bits, CRC or header offset it likes. ``package_zip`` builds an
ordinary, well-formed model package with zipfile for the positive tests.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STORED = 0
DEFLATED = 8
S_IFREG = 0o100000
S_IFDIR = 0o040000
S_IFLNK = 0o120000
S_IFCHR = 0o020000


@dataclass(frozen=True)
class RawEntry:
    name: bytes
    data: bytes = b""
    method: int = DEFLATED
    flags: int = 0
    mode: int = S_IFREG | 0o644
    create_system: int = 3  # Unix
    crc: int | None = None  # override: a lying CRC (written to both headers)
    point_at: int | None = None  # central directory offset = this other entry's local header
    at: int | None = None  # central directory record only, pointing at this absolute offset


def _compress(data: bytes, method: int) -> bytes:
    if method == STORED:
        return data
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    return comp.compress(data) + comp.flush()


def build_zip(
    entries: Sequence[RawEntry],
    *,
    prefix: bytes = b"",
    zip64_end: bool = False,
    declared_count: int | None = None,
) -> bytes:
    out = io.BytesIO()
    out.write(prefix)
    offsets: list[int] = []
    records: list[tuple[RawEntry, int, int, int]] = []
    for entry in entries:
        payload = _compress(entry.data, entry.method)
        crc = entry.crc if entry.crc is not None else zlib.crc32(entry.data)
        if entry.at is not None:
            offsets.append(entry.at)
            records.append((entry, crc, len(payload), len(entry.data)))
            continue
        offsets.append(out.tell())
        out.write(
            struct.pack(
                "<4sHHHHHIIIHH",
                b"PK\x03\x04",
                20,
                entry.flags,
                entry.method,
                0,
                0x21,
                crc,
                len(payload),
                len(entry.data),
                len(entry.name),
                0,
            )
        )
        out.write(entry.name)
        out.write(payload)
        records.append((entry, crc, len(payload), len(entry.data)))
    cd_start = out.tell()
    for index, (entry, crc, csize, usize) in enumerate(records):
        offset = offsets[entry.point_at] if entry.point_at is not None else offsets[index]
        out.write(
            struct.pack(
                "<4sHHHHHHIIIHHHHHII",
                b"PK\x01\x02",
                (entry.create_system << 8) | 20,
                20,
                entry.flags,
                entry.method,
                0,
                0x21,
                crc,
                csize,
                usize,
                len(entry.name),
                0,
                0,
                0,
                0,
                (entry.mode << 16) & 0xFFFFFFFF,
                offset,
            )
        )
        out.write(entry.name)
    cd_size = out.tell() - cd_start
    count = len(records) if declared_count is None else declared_count
    if zip64_end:
        record_at = out.tell()
        out.write(
            struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_start)
        )
        out.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, record_at, 1))
        out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
    else:
        out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_start, 0))
    return out.getvalue()


def package_zip(files: Mapping[str, bytes], *, dirs: Sequence[str] = ()) -> bytes:
    """A well-formed zip (zipfile's own writer) holding ``files`` and explicit directory entries."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for d in dirs:
            zf.writestr(zipfile.ZipInfo(d.rstrip("/") + "/"), b"")
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


@dataclass(frozen=True)
class Entry:
    """A catalogue entry as far as ``packages.ensure_package`` cares (satisfies ``PackageEntry``)."""

    model_id: str
    package_link: str
    package_name: str = "demo_pkg"
    model_name: str = "weights"
    extension: str = ".npy"
    custom_defaults: Mapping[str, Any] = field(default_factory=dict)
    package_sha256: str | None = None
    package_md5: str | None = None
    catalogue_dir: Path | None = None


INIT_PY = b"def generate(model_file, num_samples, output_path, save_images, **custom):\n    return []\n"


def model_zip(
    package_name: str = "demo_pkg",
    *,
    nested: bool = True,
    model_file: str = "weights.npy",
    extra: Mapping[str, bytes] | None = None,
) -> bytes:
    """A medigan-style package: ``<package_name>/__init__.py`` (nested) or ``__init__.py`` at the root."""
    prefix = f"{package_name}/" if nested else ""
    files = {f"{prefix}__init__.py": INIT_PY, f"{prefix}{model_file}": b"\x93NUMPY fake weights " * 50}
    for name, data in (extra or {}).items():
        files[prefix + name] = data
    return package_zip(files)
