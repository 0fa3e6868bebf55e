"""Archive safety and content hashes: the code that touches untrusted zip bytes and package trees.

This module owns :func:`safe_extract` (every zip is hostile until it has passed every check), the
hashes catalogues pin (:func:`sha256_file` for a zip, :func:`tree_sha256` for a package directory) and
the helpers that make a tree read-only or remove one. It never runs, imports or follows anything from an
archive (no symlinks are ever created), knows nothing about catalogues, caches or the network, and never
prints. ``medigan_iso.packages`` re-exports the public names.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import struct
import tempfile
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from medigan_iso.errors import UnsafeArchiveError

__all__ = [
    "DEFAULT_EXTRACT_LIMITS",
    "HASH_CHUNK_BYTES",
    "TREE_HASH_MAGIC",
    "ZIP_MAGICS",
    "ExtractLimits",
    "file_digests",
    "make_read_only",
    "relative_parts",
    "remove_tree",
    "safe_extract",
    "sha256_file",
    "tree_sha256",
    "walk_package_dir",
]

TREE_HASH_MAGIC = b"medigan-iso tree v1\n"
HASH_CHUNK_BYTES = 1 << 20
_ZIP_LOCAL_MAGIC = b"PK\x03\x04"
_ZIP_EMPTY_MAGIC = b"PK\x05\x06"
ZIP_MAGICS = (_ZIP_LOCAL_MAGIC, _ZIP_EMPTY_MAGIC)  # how a plain zip file starts (an empty one: end record)
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_IGNORED_DIRS = frozenset({"__pycache__"})
_IGNORED_SUFFIXES = (".pyc",)
# Zip general-purpose flag bits (APPNOTE 4.4.4): 0 = encrypted, 3 = sizes in a data descriptor,
# 6 = strong encryption, 11 = UTF-8 names, 13 = encrypted central directory.
_FLAG_ENCRYPTED = 0x0001
_FLAG_DATA_DESCRIPTOR = 0x0008
_FLAG_STRONG_ENCRYPTION = 0x0040
_FLAG_CD_ENCRYPTED = 0x2000
_FLAG_UTF8 = 0x0800
_ALLOWED_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
_EOCD = struct.Struct("<4sHHHHIIH")  # 22 bytes, then the comment
_ZIP64_LOCATOR = struct.Struct("<4sIQI")  # 20 bytes
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")  # 56 bytes


@dataclass(frozen=True)
class ExtractLimits:
    """Caps :func:`safe_extract` enforces; an archive over any of them is refused before writing."""

    max_entries: int = 50_000
    max_total_bytes: int = 16 << 30  # sum of declared (and actual) uncompressed sizes
    max_ratio: float = 200.0  # uncompressed / compressed, per entry above ratio_floor_bytes
    ratio_floor_bytes: int = 1 << 20  # entries this small cannot hurt, whatever their ratio
    max_central_directory_bytes: int = 16 << 20  # zipfile holds one ZipInfo per record in memory
    max_name_bytes: int = 1024
    max_component_bytes: int = 255
    chunk_bytes: int = 1 << 20


DEFAULT_EXTRACT_LIMITS = ExtractLimits()


# --- hashing ---------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file's bytes."""
    return file_digests(Path(path))[0]


def file_digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def walk_package_dir(directory: Path) -> list[tuple[str, Path]]:
    """Sorted (relative POSIX path, path) of every regular file, skipping __pycache__ and *.pyc.

    Symlinks, devices, FIFOs and sockets are refused: a package directory holds regular files only.
    """
    found: list[tuple[str, Path]] = []
    stack = [directory]
    while stack:
        current = stack.pop()
        with os.scandir(current) as it:
            for item in it:
                path = Path(item.path)
                rel = path.relative_to(directory).as_posix()
                mode = item.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    if item.name not in _IGNORED_DIRS:
                        stack.append(path)
                elif stat.S_ISREG(mode):
                    if not item.name.endswith(_IGNORED_SUFFIXES):
                        found.append((rel, path))
                else:
                    kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file or directory"
                    raise UnsafeArchiveError(str(directory), f"{kind} in a package directory", member=rel)
    found.sort(key=lambda item: item[0].encode("utf-8", "surrogateescape"))
    return found


def tree_sha256(directory: str | os.PathLike[str]) -> str:
    """Hash a package directory: sorted relative POSIX paths and file bytes; __pycache__/*.pyc ignored.

    Empty directories and permission bits do not count. Symlinks and special files are refused with
    :class:`UnsafeArchiveError`.
    """
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"tree_sha256 needs a directory: {root}")
    digest = hashlib.sha256(TREE_HASH_MAGIC)
    for rel, path in walk_package_dir(root):
        name = rel.encode("utf-8", "surrogateescape")
        digest.update(struct.pack(">Q", len(name)) + name)
        digest.update(bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


# --- safe extraction -------------------------------------------------------------------------------


def _member_path(raw_name: str, archive: str, limits: ExtractLimits) -> tuple[str, ...]:
    """Validate one member name; return its path components (empty and "." components dropped)."""

    def refuse(reason: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(archive, reason, member=raw_name)

    if "\x00" in raw_name:
        raise refuse("NUL byte in the entry name")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in raw_name):
        raise refuse("control character in the entry name")
    if "\\" in raw_name:
        raise refuse("backslash in the entry name (a Windows path separator)")
    if raw_name.startswith("/"):
        raise refuse("absolute path")
    if _DRIVE_RE.match(raw_name):
        raise refuse("drive letter in the entry name")
    if len(raw_name.encode("utf-8", "surrogateescape")) > limits.max_name_bytes:
        raise refuse(f"entry name longer than {limits.max_name_bytes} bytes")
    parts = tuple(p for p in raw_name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise refuse("'..' in the entry path (zip slip)")
    if not parts:
        raise refuse("empty entry name")
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > limits.max_component_bytes:
            raise refuse(f"a path component is longer than {limits.max_component_bytes} bytes")
    return parts


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]
    is_dir: bool


def _check_archive(fh: IO[bytes], zf: zipfile.ZipFile, archive: str, limits: ExtractLimits) -> list[_Member]:
    """Every structural check, before a single byte is written. Returns the members in archive order."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise UnsafeArchiveError(archive, f"{len(infos)} entries, above the cap of {limits.max_entries}")
    members: list[_Member] = []
    seen: dict[str, str] = {}
    dirs: set[tuple[str, ...]] = set()
    files: set[tuple[str, ...]] = set()
    total = 0
    for info in infos:
        name = info.orig_filename
        parts = _member_path(name, archive, limits)
        is_dir = name.endswith("/")
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(archive, "symbolic link entry", member=name)
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(archive, f"special file entry (mode {mode:#o})", member=name)
        if kind == stat.S_IFDIR:
            is_dir = True
        if info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION | _FLAG_CD_ENCRYPTED):
            raise UnsafeArchiveError(archive, "encrypted entry", member=name)
        if info.compress_type not in _ALLOWED_METHODS:
            raise UnsafeArchiveError(
                archive, f"unsupported compression method {info.compress_type}", member=name
            )
        # Duplicates are judged case-folded and NFC-normalised: on macOS and Windows "Model.pt" and
        # "model.pt" are one file, so an archive holding both would extract differently per platform.
        key = unicodedata.normalize("NFC", "/".join(parts)).casefold()
        if key in seen:
            raise UnsafeArchiveError(
                archive, f"duplicate entry name (same as {seen[key]!r} when case-folded)", member=name
            )
        seen[key] = name
        if is_dir:
            dirs.add(parts)
            members.append(_Member(info, parts, is_dir=True))
            continue
        files.add(parts)
        if info.file_size > limits.max_total_bytes:
            raise UnsafeArchiveError(
                archive,
                f"declares {info.file_size} bytes, above the cap of {limits.max_total_bytes}",
                member=name,
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise UnsafeArchiveError(
                archive, f"declared total size exceeds the cap of {limits.max_total_bytes} bytes", member=name
            )
        if info.file_size > limits.ratio_floor_bytes:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > limits.max_ratio:
                raise UnsafeArchiveError(
                    archive,
                    f"compression ratio {ratio:.0f}:1 is above the cap of {limits.max_ratio:.0f}:1 "
                    "(zip bomb)",
                    member=name,
                )
        members.append(_Member(info, parts, is_dir=False))
    for parts in files | dirs:
        for depth in range(1, len(parts)):
            if parts[:depth] in files:
                raise UnsafeArchiveError(
                    archive,
                    f"{'/'.join(parts[:depth])!r} is both a file and a directory",
                    member="/".join(parts),
                )
    _check_layout_on_disk(fh, zf, infos, archive)
    return members


def _check_layout_on_disk(
    fh: IO[bytes], zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], archive: str
) -> None:
    """Local headers must agree with the central directory and entries must not overlap.

    Overlapping entries are how a 42 kB file becomes a 4.5 PB "non-recursive" bomb: many central
    directory records point at one compressed kernel. zipfile only notices this on recent patch releases.
    """
    fh.seek(0)
    if fh.read(4) not in (_ZIP_LOCAL_MAGIC, _ZIP_EMPTY_MAGIC):
        raise UnsafeArchiveError(archive, "data before the first zip entry (not a plain zip file)")
    cd_start: int = zf.start_dir
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        name = info.orig_filename
        # zipfile derives header_offset from the record minus any prefix: it can come out negative, and
        # seek() then raises a bare OSError (found by tests/fuzz_atheris.py)
        if not 0 <= info.header_offset < cd_start:
            raise UnsafeArchiveError(
                archive, "local header offset outside the archive's entries", member=name
            )
        fh.seek(info.header_offset)
        header = fh.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size:
            raise UnsafeArchiveError(archive, "local header beyond the end of the file", member=name)
        (magic, _version, flags, method, _t, _d, crc, csize, usize, name_len, extra_len) = (
            _LOCAL_HEADER.unpack(header)
        )
        if magic != _ZIP_LOCAL_MAGIC:
            raise UnsafeArchiveError(archive, "central directory points at no local header", member=name)
        if method != info.compress_type:
            raise UnsafeArchiveError(
                archive, "local header and central directory disagree on the compression method", member=name
            )
        if (
            not flags & _FLAG_DATA_DESCRIPTOR
            and csize != 0xFFFFFFFF
            and usize != 0xFFFFFFFF
            and ((crc, csize, usize) != (info.CRC, info.compress_size, info.file_size))
        ):
            raise UnsafeArchiveError(
                archive, "local header and central directory disagree on sizes or CRC", member=name
            )
        # zipfile compares these names too, but only when the entry is opened: check before writing.
        expected_name = info.orig_filename.encode("utf-8" if info.flag_bits & _FLAG_UTF8 else "cp437")
        if fh.read(name_len) != expected_name:
            raise UnsafeArchiveError(
                archive, "local header and central directory disagree on the name", member=name
            )
        start = info.header_offset
        end = start + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
        if end > cd_start:
            raise UnsafeArchiveError(archive, "entry data runs into the central directory", member=name)
        spans.append((start, end, name))
    spans.sort()
    for (_s1, end1, name1), (start2, _e2, name2) in zip(spans, spans[1:]):
        if start2 < end1:
            raise UnsafeArchiveError(
                archive, f"entry overlaps entry {name1!r} (overlapping-entry bomb)", member=name2
            )


def _check_end_record(fh: IO[bytes], archive: str, limits: ExtractLimits) -> int:
    """Read the entry count and central directory size from the end record before zipfile does.

    zipfile builds a ZipInfo for every central-directory record up front, so a forged directory of
    millions of entries costs gigabytes of memory before any per-entry cap could run.
    """
    size = fh.seek(0, os.SEEK_END)
    tail_len = min(size, _EOCD.size + 0xFFFF)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) - pos < _EOCD.size:
        raise UnsafeArchiveError(archive, "not a readable zip archive (no end of central directory record)")
    _sig, _disk, _cd_disk, _n_here, count, cd_size, _cd_offset, _comment = _EOCD.unpack_from(tail, pos)
    if count == 0xFFFF or cd_size == 0xFFFFFFFF:
        locator_at = size - tail_len + pos - _ZIP64_LOCATOR.size
        if locator_at >= 0:
            fh.seek(locator_at)
            locator = fh.read(_ZIP64_LOCATOR.size)
            if len(locator) == _ZIP64_LOCATOR.size and locator[:4] == b"PK\x06\x07":
                record_at = _ZIP64_LOCATOR.unpack(locator)[2]
                fh.seek(record_at)
                record = fh.read(_ZIP64_EOCD.size)
                if len(record) == _ZIP64_EOCD.size and record[:4] == b"PK\x06\x06":
                    fields = _ZIP64_EOCD.unpack(record)
                    count, cd_size = fields[7], fields[8]
    if count > limits.max_entries:
        raise UnsafeArchiveError(archive, f"{count} entries, above the cap of {limits.max_entries}")
    if cd_size > limits.max_central_directory_bytes:
        raise UnsafeArchiveError(
            archive,
            f"central directory of {cd_size} bytes, above the cap of {limits.max_central_directory_bytes}",
        )
    return int(count)


def _make_writable(path: Path) -> None:
    for dirpath, dirnames, _files in os.walk(path):
        for d in dirnames:
            with contextlib.suppress(OSError):
                Path(dirpath, d).chmod(0o755)
    with contextlib.suppress(OSError):
        path.chmod(0o755)


def remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) tree we created."""
    if not path.exists():
        return
    with contextlib.suppress(OSError):
        path.chmod(0o755)
    _make_writable(path)
    shutil.rmtree(path, ignore_errors=True)


def make_read_only(path: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            Path(dirpath, name).chmod(0o444)
        Path(dirpath).chmod(0o555)


def safe_extract(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    limits: ExtractLimits = DEFAULT_EXTRACT_LIMITS,
    read_only: bool = False,
) -> Path:
    """Extract a zip into ``dest`` (which must not exist, or be an empty directory); return ``dest``.

    Refused with :class:`UnsafeArchiveError` (naming the entry) before anything reaches ``dest``: more
    entries, bytes or compression ratio than ``limits`` allow; absolute paths, ``..``, NUL or control
    characters, backslashes, drive letters; symlinks, devices and other special files (by the Unix mode in
    ``external_attr``); encrypted entries; duplicate names (case-folded, see below); a name that is both a
    file and a directory; local headers that disagree with the central directory; overlapping entries;
    data before the first entry; a bad CRC or an entry whose actual size differs from its declared size.

    Duplicates are compared case-folded and NFC-normalised so the tree is the same on case-insensitive
    filesystems. Files are written with ``open(..., "xb")`` into a temporary sibling directory that is
    renamed onto ``dest`` only after every entry has been written and checked; on any failure the
    temporary directory is removed. Permissions from the archive are ignored; with ``read_only`` files
    become 0o444 and directories 0o555 before the rename.
    """
    archive_path = Path(archive)
    dest_path = Path(dest)
    label = str(archive_path)
    if dest_path.exists() and (not dest_path.is_dir() or any(dest_path.iterdir())):
        raise FileExistsError(f"safe_extract destination exists and is not an empty directory: {dest_path}")
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    with archive_path.open("rb") as fh:
        declared_count = _check_end_record(fh, label, limits)
        try:
            zf = zipfile.ZipFile(fh)
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            ValueError,
            EOFError,
            NotImplementedError,  # found by tests/test_fuzz.py: an entry claiming zip version 23.5
            struct.error,
            UnicodeDecodeError,
        ) as exc:
            raise UnsafeArchiveError(label, f"not a readable zip archive ({exc})") from exc
        with zf:
            if len(zf.infolist()) != declared_count:
                raise UnsafeArchiveError(
                    label,
                    f"the central directory holds {len(zf.infolist())} entries but the end record "
                    f"declares {declared_count}",
                )
            members = _check_archive(fh, zf, label, limits)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest_path.name}.tmp-", dir=dest_path.parent))
            try:
                _write_members(zf, members, tmp, label, limits)
                if read_only:
                    make_read_only(tmp)
                if dest_path.exists():
                    dest_path.rmdir()  # empty, checked above
                tmp.rename(dest_path)
            except BaseException:
                remove_tree(tmp)
                raise
    return dest_path


def _write_members(
    zf: zipfile.ZipFile, members: list[_Member], tmp: Path, archive: str, limits: ExtractLimits
) -> None:
    written_total = 0
    for member in members:
        target = tmp.joinpath(*member.parts)
        name = member.info.orig_filename
        if member.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        declared = member.info.file_size
        written = 0
        try:
            with zf.open(member.info) as src, target.open("xb") as out:
                while chunk := src.read(limits.chunk_bytes):
                    written += len(chunk)
                    written_total += len(chunk)
                    if written > declared:
                        raise UnsafeArchiveError(archive, "more data than its declared size", member=name)
                    if written_total > limits.max_total_bytes:
                        raise UnsafeArchiveError(
                            archive,
                            f"total size exceeds the cap of {limits.max_total_bytes} bytes",
                            member=name,
                        )
                    out.write(chunk)
        except FileExistsError as exc:  # names were checked unique; defence in depth
            raise UnsafeArchiveError(archive, "entry would overwrite another entry", member=name) from exc
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            # zipfile raises BadZipFile("Bad CRC-32 ...") at EOF when the CRC lies.
            raise UnsafeArchiveError(archive, f"corrupt entry data ({exc})", member=name) from exc
        if written != declared:
            raise UnsafeArchiveError(
                archive, f"entry holds {written} bytes but declares {declared}", member=name
            )


def relative_parts(text: str) -> tuple[str, ...] | None:
    """Components of a relative POSIX path that stays inside its base, else None."""
    if text.startswith("/") or "\\" in text or "\x00" in text or _DRIVE_RE.match(text):
        return None
    parts = tuple(p for p in text.split("/") if p not in ("", "."))
    if ".." in parts:
        return None
    return parts
