"""Model packages: fetch, verify and safely extract the zip (or directory) a catalogue entry points at.

This module owns everything between an entry's ``package_link`` and a read-only directory holding the
package's ``__init__.py``:

- sources: https, http (with a warning), ``file://`` URLs, local zips, local directories and paths relative
  to the catalogue file (bundled entries);
- downloads: requests streaming to ``<name>.part`` with timeouts, retries with backoff, resume with
  ``Range``/``If-Range`` when the server honours it, a size cap and a progress callback; one download per
  package across processes (a file lock under ``cache_layout().locks``);
- verification of ``package_sha256`` (and Zenodo's ``md5``) **before** anything is extracted;
- :func:`safe_extract`, which treats every archive as hostile;
- the content-addressed store ``packages/trees/<sha256>/`` (files 0o444, directories 0o555).

It never imports or executes anything from a package: the host only reads bytes and writes files. It
never prints (progress goes to a callback) and it imports nothing from ``catalogue``: an entry is anything
with the attributes of :class:`PackageEntry`.

Cache layout under ``cache_layout().packages``::

    downloads/<name>-<key>.zip.part      in-flight download (+ .part.json: URL and resume validator)
    index/<key>.json                     which sha256 a link produced (lets unpinned links work offline)
    trees/<sha256>/                      extracted, read-only package trees
    trees/.tmp-*                         extraction in progress (removed on failure)

``<key>`` is the first 24 hex digits of sha256(link). A tree's name is the sha256 of the archive it came
from, or :func:`tree_sha256` of the directory it was copied from. The two cannot be confused: a tree
hash's input starts with ``TREE_HASH_MAGIC``, and :func:`safe_extract` refuses any archive that does not
start with a zip local-file header (``PK\\x03\\x04``), so no accepted archive has a tree hash's input.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import struct
import tempfile
import time
import unicodedata
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Protocol

import filelock
import requests

from medigan_iso.errors import (
    PackageDownloadError,
    PackageIntegrityError,
    PackageLayoutError,
    UnpinnedPackageError,
    UnsafeArchiveError,
)
from medigan_iso.paths import CacheLayout, cache_layout

__all__ = [
    "DEFAULT_DOWNLOAD_OPTIONS",
    "DEFAULT_EXTRACT_LIMITS",
    "DownloadOptions",
    "ExtractLimits",
    "ModelPackage",
    "PackageEntry",
    "ProgressCallback",
    "download",
    "ensure_package",
    "rewrite_model_paths",
    "safe_extract",
    "sha256_file",
    "tree_sha256",
]

logger = logging.getLogger(__name__)

OFFLINE_ENV = "MEDIGAN_ISO_OFFLINE"
TREE_HASH_MAGIC = b"medigan-iso tree v1\n"
HASH_CHUNK_BYTES = 1 << 20
MAX_PACKAGE_BYTES = 8 << 30  # the largest upstream package is well under 2 GiB
LOCK_POLL_S = 0.1
_ZIP_LOCAL_MAGIC = b"PK\x03\x04"
_ZIP_EMPTY_MAGIC = b"PK\x05\x06"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
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

ProgressCallback = Callable[[int, "int | None"], None]
"""Called as ``progress(bytes_done, bytes_total_or_None)`` while a package downloads."""


class PackageEntry(Protocol):
    """What :func:`ensure_package` needs from a catalogue entry (``catalogue.ModelEntry`` satisfies it)."""

    @property
    def model_id(self) -> str: ...
    @property
    def package_name(self) -> str: ...
    @property
    def package_link(self) -> str: ...
    @property
    def model_name(self) -> str: ...
    @property
    def extension(self) -> str: ...
    @property
    def custom_defaults(self) -> Mapping[str, Any]: ...
    @property
    def package_sha256(self) -> str | None: ...
    @property
    def package_md5(self) -> str | None: ...
    @property
    def catalogue_dir(self) -> Path | None: ...


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


@dataclass(frozen=True)
class DownloadOptions:
    """How :func:`download` talks to a server."""

    connect_timeout_s: float = 15.0
    read_timeout_s: float = 60.0
    attempts: int = 5
    backoff_s: float = 1.0  # delay before the 2nd attempt; doubles up to backoff_max_s
    backoff_max_s: float = 30.0
    max_bytes: int = MAX_PACKAGE_BYTES
    chunk_bytes: int = 1 << 20


DEFAULT_EXTRACT_LIMITS = ExtractLimits()
DEFAULT_DOWNLOAD_OPTIONS = DownloadOptions()


@dataclass(frozen=True)
class ModelPackage:
    """An extracted, verified, read-only model package."""

    model_id: str
    root: Path  # read-only directory holding the package's __init__.py
    package_name: str
    model_file: Path  # root / (model_name + extension); may not exist for models that ignore it
    sha256: str  # of the archive, or tree_sha256 of the source directory
    custom_defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


# --- hashing ---------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file's bytes."""
    return _file_digests(Path(path))[0]


def _file_digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def _walk_package_dir(directory: Path) -> list[tuple[str, Path]]:
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
    for rel, path in _walk_package_dir(root):
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


def _remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) tree we created."""
    if not path.exists():
        return
    with contextlib.suppress(OSError):
        path.chmod(0o755)
    _make_writable(path)
    shutil.rmtree(path, ignore_errors=True)


def _make_read_only(path: Path) -> None:
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
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
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
                    _make_read_only(tmp)
                if dest_path.exists():
                    dest_path.rmdir()  # empty, checked above
                tmp.rename(dest_path)
            except BaseException:
                _remove_tree(tmp)
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


# --- package layout --------------------------------------------------------------------------------


def _package_root(tree: Path, *, model_id: str, package_name: str) -> Path:
    """The directory holding __init__.py, for every layout medigan accepts (and one it tolerates)."""
    if _relative_parts(package_name) != (package_name,):
        # "../<other sha>/pkg" would run another cached package's code under this entry's pin.
        raise PackageLayoutError(model_id, f"package_name {package_name!r} is not a single folder name")
    tried: list[str] = []
    candidates: list[tuple[str, Path]] = [
        ("__init__.py at the archive root", tree),
        (f"{package_name}/__init__.py", tree / package_name),
    ]
    top = [p for p in tree.iterdir() if p.is_dir() and p.name != "__MACOSX"]
    files_at_top = [p for p in tree.iterdir() if not p.is_dir()]
    if len(top) == 1 and not files_at_top and top[0].name != package_name:
        candidates.append((f"a single top-level directory ({top[0].name}/__init__.py)", top[0]))
    for description, root in candidates:
        tried.append(description)
        init = root / "__init__.py"
        if init.is_file() and not init.is_symlink():
            return root
    raise PackageLayoutError(
        model_id,
        "the package has no __init__.py; tried " + "; ".join(tried),
        path=tree,
    )


def _relative_parts(text: str) -> tuple[str, ...] | None:
    """Components of a relative POSIX path that stays inside its base, else None."""
    if text.startswith("/") or "\\" in text or "\x00" in text or _DRIVE_RE.match(text):
        return None
    parts = tuple(p for p in text.split("/") if p not in ("", "."))
    if ".." in parts:
        return None
    return parts


def _model_file(root: Path, *, model_id: str, model_name: str, extension: str) -> Path:
    # medigan concatenates: model_name may hold a sub-path and extension may be "" or ".pth.tar".
    file_name = f"{model_name}{extension}"
    parts = _relative_parts(file_name)
    if parts == ():
        return root  # no model file named (e.g. `fetch --link`): the package directory itself
    if parts is None:
        raise PackageLayoutError(
            model_id, f"model_name + extension {file_name!r} is not a relative path inside the package"
        )
    path = root.joinpath(*parts)
    if not path.exists():
        logger.warning("model %s: model file %s is not in the package", model_id, path)
    return path


def rewrite_model_paths(value: Any, *, model_id: str, root: Path) -> Any:
    """Return ``value`` with every ``models/<model_id>[/...]`` string replaced by a path under ``root``.

    Walks dicts, lists and tuples (copies; the input is not modified). medigan resolves these strings
    against its working directory, where it unpacks each package to ``models/<model_id>/``; here the
    package lives in the content-addressed store instead. A rewritten path that would leave ``root``
    raises :class:`PackageLayoutError`.
    """
    prefix = f"models/{model_id}"
    if isinstance(value, str):
        if value != prefix and not value.startswith(prefix + "/"):
            return value
        rest = value[len(prefix) :].lstrip("/")
        parts = _relative_parts(rest)
        if parts is None:
            raise PackageLayoutError(model_id, f"custom default {value!r} points outside the package")
        return str(root.joinpath(*parts))
    if isinstance(value, Mapping):
        return {key: rewrite_model_paths(item, model_id=model_id, root=root) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [rewrite_model_paths(item, model_id=model_id, root=root) for item in value]
    return value


def _model_package(entry: PackageEntry, tree: Path, sha256: str) -> ModelPackage:
    root = _package_root(tree, model_id=entry.model_id, package_name=entry.package_name)
    custom = rewrite_model_paths(dict(entry.custom_defaults), model_id=entry.model_id, root=root)
    return ModelPackage(
        model_id=entry.model_id,
        root=root,
        package_name=entry.package_name,
        model_file=_model_file(
            root, model_id=entry.model_id, model_name=entry.model_name, extension=entry.extension
        ),
        sha256=sha256,
        custom_defaults=MappingProxyType(custom),
    )


# --- sources ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    kind: str  # "url", "file" or "dir"
    link: str  # as written in the catalogue
    url: str = ""  # for kind "url"
    path: Path | None = None  # for kind "file" / "dir"


def _classify(entry: PackageEntry) -> _Source:
    link = entry.package_link.strip()
    if not link:
        raise PackageDownloadError("<empty>", f"model {entry.model_id} has no package_link")
    parsed = urllib.parse.urlsplit(link)
    scheme = parsed.scheme.lower()
    if scheme in ("https", "http"):
        if scheme == "http":
            logger.warning(
                "model %s: package_link %s uses plain http; the download can be altered in transit%s",
                entry.model_id,
                link,
                "" if entry.package_sha256 else " and no package_sha256 is pinned to detect it",
            )
        return _Source("url", link, url=link)
    if scheme not in ("", "file") and len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise PackageDownloadError(
            link, f"unsupported scheme {scheme!r}", remedy="use https://, file://, or a local path"
        )
    if entry.catalogue_dir is None:
        # An entry from a remote catalogue (or none) must not make the host copy local files into a
        # package tree, where the model's code could read them: `"package_link": "~/.ssh"`.
        raise PackageDownloadError(
            link,
            f"model {entry.model_id} has a local package_link but does not come from a catalogue file "
            "on this machine",
            remedy="local links are honoured only in local catalogue files; put the entry in one "
            "(MEDIGAN_ISO_CONFIG=path/to/catalogue.json) or use `medigan-iso fetch --link PATH`",
        )
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise PackageDownloadError(
                link, f"file:// URL with a remote host {parsed.netloc!r} is not supported"
            )
        path = Path(urllib.request.url2pathname(parsed.path))
    else:
        path = Path(link).expanduser()
        if not path.is_absolute():
            path = entry.catalogue_dir / path
    if path.is_dir():
        return _Source("dir", link, path=path)
    if path.is_file():
        return _Source("file", link, path=path)
    raise PackageDownloadError(
        link,
        f"no such file or directory: {path}",
        remedy="check the entry's package_link (relative links resolve against the catalogue's folder)",
    )


def _pinned(entry: PackageEntry, source: str) -> tuple[str | None, str | None]:
    sha = (entry.package_sha256 or "").strip().lower() or None
    md5 = (entry.package_md5 or "").strip().lower().removeprefix("md5:") or None
    if sha is not None and not _SHA256_RE.match(sha):
        raise UnpinnedPackageError(
            entry.model_id, source, f"package_sha256 {entry.package_sha256!r} is not 64 hex digits"
        )
    if md5 is not None and not _MD5_RE.match(md5):
        raise UnpinnedPackageError(
            entry.model_id, source, f"package_md5 {entry.package_md5!r} is not 32 hex digits"
        )
    return sha, md5


def _link_key(link: str) -> str:
    return hashlib.sha256(link.encode("utf-8")).hexdigest()[:24]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:64] or "package"


def _offline_default() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# --- downloads -------------------------------------------------------------------------------------


class _TransientError(Exception):
    """A failure worth retrying (connection drop, timeout, 5xx, 429)."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after_s = retry_after_s


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _discard(part: Path) -> None:
    for path in (part, _sidecar(part)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _resume_state(part: Path, url: str) -> tuple[int, str | None]:
    """Bytes already in ``part`` for this URL, and the validator to send as If-Range."""
    try:
        meta = json.loads(_sidecar(part).read_text(encoding="utf-8"))
        size = part.stat().st_size
    except (OSError, ValueError):
        _discard(part)
        return 0, None
    if not isinstance(meta, dict) or meta.get("url") != url:
        _discard(part)
        return 0, None
    validator = meta.get("validator")
    return size, validator if isinstance(validator, str) else None


def _content_range_start(header: str) -> tuple[int, int | None] | None:
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", header)
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def _download_once(
    session: requests.Session,
    url: str,
    part: Path,
    *,
    options: DownloadOptions,
    progress: ProgressCallback | None,
) -> None:
    have, validator = _resume_state(part, url)
    headers = {"Accept-Encoding": "identity", "User-Agent": "medigan-iso"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator:
            headers["If-Range"] = validator
    try:
        resp = session.get(
            url,
            headers=headers,
            stream=True,
            timeout=(options.connect_timeout_s, options.read_timeout_s),
        )
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _TransientError(f"{type(exc).__name__}: {exc}") from exc
    except requests.RequestException as exc:
        raise PackageDownloadError(url, f"{type(exc).__name__}: {exc}") from exc
    with resp:
        status = resp.status_code
        if status == 416 and have:
            _discard(part)  # our partial file no longer matches the resource: start again
            raise _TransientError("the server refused to resume (HTTP 416); restarting", status=status)
        if status in (408, 425, 429) or status >= 500:
            raise _TransientError(
                f"HTTP {status} {resp.reason}", status=status, retry_after_s=_retry_after(resp)
            )
        if status >= 300 or status not in (200, 206):
            _discard(part)
            raise PackageDownloadError(
                url,
                f"HTTP {status} {resp.reason}",
                status=status,
                remedy="check the entry's package_link; the package may have moved",
            )
        content_type = resp.headers.get("Content-Type", "").lower()
        if content_type.startswith(("text/html", "application/xhtml")):
            _discard(part)
            raise PackageDownloadError(
                url,
                f"the server returned an HTML page (Content-Type {content_type}), not a zip archive",
                status=status,
                remedy="open the link in a browser: it may need a login, or the record may be gone",
            )
        if resp.url.startswith("http://") and url.startswith("https://"):
            logger.warning("download of %s was redirected to plain http: %s", url, resp.url)
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        total: int | None = None
        if status == 206:
            content_range = _content_range_start(resp.headers.get("Content-Range", ""))
            if not have or content_range is None or content_range[0] != have:
                _discard(part)
                raise _TransientError(
                    f"the server answered Range bytes={have}- with Content-Range "
                    f"{resp.headers.get('Content-Range')!r}; restarting"
                )
            total = content_range[1]
            mode = "ab"
        else:
            if have:
                logger.info("%s: the server does not resume downloads; restarting from byte 0", url)
            have = 0
            mode = "wb"
            length = resp.headers.get("Content-Length", "")
            if encoding in ("", "identity") and length.isdigit():
                total = int(length)
        if total is not None and total > options.max_bytes:
            _discard(part)
            raise PackageDownloadError(
                url,
                f"the package is {total} bytes, above the cap of {options.max_bytes}",
                status=status,
                remedy="raise DownloadOptions.max_bytes if this package is really that large",
            )
        # Weak ETags (W/...) may not be used with If-Range (RFC 9110 13.1.5).
        etag = resp.headers.get("ETag", "")
        new_validator = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")
        resumable = encoding in ("", "identity")
        part.parent.mkdir(parents=True, exist_ok=True)
        _sidecar(part).write_text(
            json.dumps({"url": url, "validator": new_validator if resumable else None}), encoding="utf-8"
        )
        done = have
        head = b""
        try:
            with part.open(mode) as out:
                for chunk in resp.iter_content(options.chunk_bytes):
                    if done < 4 and len(head) < 4:
                        head += chunk[:4]
                        if len(head) >= 4 and done == 0:
                            _check_head(url, head, status)
                    done += len(chunk)
                    if done > options.max_bytes:
                        raise PackageDownloadError(
                            url,
                            f"the download exceeded the cap of {options.max_bytes} bytes",
                            status=status,
                            remedy="raise DownloadOptions.max_bytes if this package is really that large",
                        )
                    out.write(chunk)
                    if progress is not None:
                        progress(done, total)
        except PackageDownloadError:
            _discard(part)
            raise
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            if not resumable:
                _discard(part)
            raise _TransientError(f"connection lost after {done} bytes ({type(exc).__name__})") from exc
        if total is not None and done < total:
            raise _TransientError(f"connection closed after {done} of {total} bytes")
        if done == 0 or (have == 0 and len(head) < 4):
            try:
                _check_head(url, head, status)
            except PackageDownloadError:
                _discard(part)
                raise


def _check_head(url: str, head: bytes, status: int) -> None:
    if head.startswith((_ZIP_LOCAL_MAGIC, _ZIP_EMPTY_MAGIC)):
        return
    looks_html = head.lstrip().lower().startswith((b"<!do", b"<htm", b"<hea", b"<bod"))
    raise PackageDownloadError(
        url,
        "the server returned an HTML page, not a zip archive"
        if looks_html
        else f"the response is not a zip archive (it starts with {head[:4]!r})",
        status=status,
        remedy="open the link in a browser: it may need a login, or the record may be gone",
    )


def download(
    url: str,
    part: str | os.PathLike[str],
    *,
    options: DownloadOptions = DEFAULT_DOWNLOAD_OPTIONS,
    progress: ProgressCallback | None = None,
    session: requests.Session | None = None,
) -> Path:
    """Download ``url`` into the file ``part``, resuming a previous partial download of the same URL.

    Retries connection errors, timeouts, HTTP 408/425/429/5xx with exponential backoff; resumes with
    ``Range`` (and ``If-Range`` with the first response's strong ETag or Last-Modified) and checks the
    answer's ``206`` + ``Content-Range``; anything else restarts from byte 0. Permanent failures (other
    4xx, an HTML page, a non-zip body, the size cap) delete the partial file so it cannot poison a retry;
    after the last failed attempt of a transient error the partial file is kept for the next call.
    """
    part_path = Path(part)
    own_session = session is None
    sess = requests.Session() if session is None else session
    try:
        for attempt in range(1, max(options.attempts, 1) + 1):
            try:
                _download_once(sess, url, part_path, options=options, progress=progress)
                return part_path
            except _TransientError as exc:
                if attempt >= options.attempts:
                    raise PackageDownloadError(
                        url,
                        f"{exc} (gave up after {attempt} attempts)",
                        status=exc.status,
                        remedy="check the network and run the command again; the download resumes",
                    ) from exc
                delay = min(options.backoff_s * 2 ** (attempt - 1), options.backoff_max_s)
                if exc.retry_after_s is not None:
                    delay = min(max(delay, exc.retry_after_s), options.backoff_max_s)
                logger.warning(
                    "%s: %s; retrying in %.1f s (attempt %d/%d)",
                    url,
                    exc,
                    delay,
                    attempt + 1,
                    options.attempts,
                )
                time.sleep(delay)
    finally:
        if own_session:
            sess.close()
    raise AssertionError("unreachable")  # pragma: no cover


# --- the store -------------------------------------------------------------------------------------


def _trees(layout: CacheLayout) -> Path:
    return layout.packages / "trees"


def _lock(layout: CacheLayout, name: str) -> filelock.FileLock:
    return filelock.FileLock(str(layout.locks / f"package-{name}.lock"))


@contextlib.contextmanager
def _locked(layout: CacheLayout, name: str, what: str) -> Iterator[None]:
    lock = _lock(layout, name)
    try:
        lock.acquire(timeout=LOCK_POLL_S)
    except filelock.Timeout:
        logger.info("waiting for another process to finish %s", what)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _verify(
    path: Path, *, source: str, sha: str | None, md5: str | None, actual: tuple[str, str] | None = None
) -> str:
    """Check a downloaded/copied archive against its pins; delete it on a mismatch. Returns its sha256."""
    actual_sha, actual_md5 = actual if actual is not None else _file_digests(path)
    if sha is not None and actual_sha != sha:
        path.unlink(missing_ok=True)
        raise PackageIntegrityError(source, algorithm="sha256", expected=sha, actual=actual_sha)
    if md5 is not None and actual_md5 != md5:
        path.unlink(missing_ok=True)
        raise PackageIntegrityError(source, algorithm="md5", expected=md5, actual=actual_md5)
    return actual_sha


def _install_tree(archive: Path, sha: str, layout: CacheLayout, limits: ExtractLimits) -> Path:
    tree = _trees(layout) / sha
    if tree.is_dir():
        return tree
    # Two links may serve the same bytes: the tree is locked by its hash, not by the link.
    with _locked(layout, sha, f"extracting {archive.name}"):
        if not tree.is_dir():
            # Holding the lock, any temp dir for this hash is a leftover of a killed extraction.
            for stale in tree.parent.glob(f".{sha}.tmp-*"):
                logger.info("removing a leftover extraction %s", stale)
                _remove_tree(stale)
            safe_extract(archive, tree, limits=limits, read_only=True)
    return tree


def _write_index(layout: CacheLayout, link: str, sha: str) -> None:
    index = layout.packages / "index"
    index.mkdir(parents=True, exist_ok=True)
    record = index / f"{_link_key(link)}.json"
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"link": link, "sha256": sha}), encoding="utf-8")
    tmp.replace(record)


def _read_index(layout: CacheLayout, link: str) -> str | None:
    record = layout.packages / "index" / f"{_link_key(link)}.json"
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("link") == link:
        sha = data.get("sha256")
        if isinstance(sha, str) and _SHA256_RE.match(sha):
            return sha
    return None


def _cached_tree(layout: CacheLayout, link: str, sha: str | None) -> tuple[Path, str] | None:
    known = sha or _read_index(layout, link)
    if known is None:
        return None
    tree = _trees(layout) / known
    return (tree, known) if tree.is_dir() else None


def _fetch_url(
    entry: PackageEntry,
    source: _Source,
    layout: CacheLayout,
    *,
    sha: str | None,
    md5: str | None,
    offline: bool,
    options: DownloadOptions,
    limits: ExtractLimits,
    progress: ProgressCallback | None,
) -> tuple[Path, str]:
    cached = _cached_tree(layout, source.link, sha)
    if cached is not None:
        return cached
    if offline:
        raise PackageDownloadError(
            source.url,
            f"offline mode, and model {entry.model_id}'s package is not in the cache ({layout.packages})",
            remedy=f"run `medigan-iso fetch {entry.model_id}` once while online "
            f"(unset {OFFLINE_ENV}), then work offline",
        )
    key = _link_key(source.link)
    with _locked(layout, key, f"downloading {source.url}"):
        cached = _cached_tree(layout, source.link, sha)  # another process may have finished meanwhile
        if cached is not None:
            return cached
        part = layout.packages / "downloads" / f"{_safe_name(entry.package_name)}-{key}.zip.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        download(source.url, part, options=options, progress=progress)
        digests = _file_digests(part)
        try:
            actual = _verify(part, source=source.url, sha=sha, md5=md5, actual=digests)
        finally:
            if not part.exists():
                _sidecar(part).unlink(missing_ok=True)
        try:
            tree = _install_tree(part, actual, layout, limits)
        finally:
            _discard(part)
        _write_index(layout, source.link, actual)
        return tree, actual


def _fetch_file(
    entry: PackageEntry,
    source: _Source,
    layout: CacheLayout,
    *,
    sha: str | None,
    md5: str | None,
    limits: ExtractLimits,
) -> tuple[Path, str]:
    assert source.path is not None
    if sha is not None and (_trees(layout) / sha).is_dir():
        return _trees(layout) / sha, sha
    # Copy first, then hash and extract the copy: the file cannot change between check and use.
    downloads = layout.packages / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{_safe_name(entry.package_name)}-", suffix=".zip", dir=downloads)
    copy = Path(name)
    try:
        sha_h, md5_h = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        with source.path.open("rb") as src, os.fdopen(fd, "wb") as out:
            while chunk := src.read(HASH_CHUNK_BYTES):
                sha_h.update(chunk)
                md5_h.update(chunk)
                out.write(chunk)
        actual = _verify(
            copy, source=str(source.path), sha=sha, md5=md5, actual=(sha_h.hexdigest(), md5_h.hexdigest())
        )
        tree = _install_tree(copy, actual, layout, limits)
    finally:
        copy.unlink(missing_ok=True)
    return tree, actual


def _fetch_dir(
    entry: PackageEntry, source: _Source, layout: CacheLayout, *, sha: str | None
) -> tuple[Path, str]:
    assert source.path is not None
    trees = _trees(layout)
    if sha is not None and (trees / sha).is_dir():
        return trees / sha, sha
    trees.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dir.tmp-", dir=trees))
    try:
        for rel, path in _walk_package_dir(source.path):
            target = tmp.joinpath(*rel.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            with path.open("rb") as src, target.open("xb") as out:
                shutil.copyfileobj(src, out, HASH_CHUNK_BYTES)
        actual = tree_sha256(tmp)  # of the copy: what we hash is what we keep
        if sha is not None and actual != sha:
            raise PackageIntegrityError(
                str(source.path), algorithm="tree-sha256", expected=sha, actual=actual
            )
        if entry.package_md5:
            logger.warning(
                "model %s: package_md5 does not apply to a directory link; ignored", entry.model_id
            )
        tree = trees / actual
        _make_read_only(tmp)
        with _locked(layout, actual, f"installing {source.path}"):
            if not tree.is_dir():
                tmp.rename(tree)
    finally:
        _remove_tree(tmp)
    return tree, actual


def ensure_package(
    entry: PackageEntry,
    *,
    home: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    require_hashes: bool = False,
    progress: ProgressCallback | None = None,
    options: DownloadOptions = DEFAULT_DOWNLOAD_OPTIONS,
    limits: ExtractLimits = DEFAULT_EXTRACT_LIMITS,
) -> ModelPackage:
    """Return the verified, extracted, read-only package for ``entry``, fetching it if needed.

    ``offline=None`` reads ``$MEDIGAN_ISO_OFFLINE``; offline, only cached trees and local links are used.
    With ``require_hashes`` an entry without ``package_sha256`` is refused before anything is fetched
    (an md5 alone is not a pin). A downloaded archive is checked against ``package_sha256`` and then
    ``package_md5`` before extraction; a mismatch deletes it and raises :class:`PackageIntegrityError`.
    """
    layout = cache_layout(home).ensure()
    is_offline = _offline_default() if offline is None else offline
    source = _classify(entry)
    sha, md5 = _pinned(entry, source.link)
    if require_hashes and sha is None:
        raise UnpinnedPackageError(
            entry.model_id,
            source.link,
            "no package_sha256 is pinned and require_hashes is on"
            + (" (package_md5 alone is not accepted)" if md5 else ""),
        )
    if source.kind == "url":
        tree, actual = _fetch_url(
            entry,
            source,
            layout,
            sha=sha,
            md5=md5,
            offline=is_offline,
            options=options,
            limits=limits,
            progress=progress,
        )
    elif source.kind == "file":
        tree, actual = _fetch_file(entry, source, layout, sha=sha, md5=md5, limits=limits)
    else:
        tree, actual = _fetch_dir(entry, source, layout, sha=sha)
    if sha is None:
        logger.info(
            'model %s: package is not pinned; to pin it add "package_sha256": "%s"', entry.model_id, actual
        )
    return _model_package(entry, tree, actual)
