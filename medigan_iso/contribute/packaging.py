"""Deterministic model package zips: the same folder gives the same bytes, and their sha256 and md5.

This module owns turning a contributor's package folder into the zip that is tested, deposited and pinned
in the catalogue entry. Entries are the folder's regular files under ``<package_name>/`` (medigan's
layout), in sorted order, with fixed timestamps (1980-01-01, zip's epoch), fixed permissions and a fixed
compression level, so the archive depends on file names and contents only: re-running a contribution,
or a reviewer rebuilding the zip from the same folder, gives the same ``package_sha256``. Bytecode caches
and VCS folders are left out (bytecode embeds timestamps). Symlinks, devices and FIFOs are refused: a
package is plain files (and :func:`~medigan_iso.archives.safe_extract` would refuse them on the other
side anyway). It reads files and writes one zip; it never imports or runs anything from the folder.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from medigan_iso.errors import ContributionError

__all__ = ["EXCLUDED_NAMES", "BuiltPackage", "build_package", "package_files"]

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644  # regular file, rw-r--r--, whatever the contributor's umask was
CHUNK_BYTES = 1 << 20
EXCLUDED_NAMES = frozenset(
    {"__pycache__", ".git", ".hg", ".svn", ".DS_Store", ".ipynb_checkpoints", ".mypy_cache", ".pytest_cache"}
)
EXCLUDED_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class BuiltPackage:
    """A package zip and the digests the entry and Zenodo need."""

    path: Path
    package_name: str
    sha256: str
    md5: str
    size: int
    files: tuple[str, ...]  # archive names, in archive order

    @property
    def filename(self) -> str:
        return self.path.name


def package_files(folder: Path, *, model_id: str) -> list[tuple[str, Path]]:
    """(relative POSIX name, path) of every file to package, sorted; refuses anything but plain files."""
    found: list[tuple[str, Path]] = []
    for current, dirs, files in os.walk(folder, followlinks=False):
        here = Path(current)
        for name in list(dirs):
            if (here / name).is_symlink():
                raise ContributionError(
                    model_id,
                    f"{here / name} is a symlink; a package holds plain files only",
                    remedy="replace the link with the files it points to",
                )
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_NAMES)
        for name in sorted(files):
            if name in EXCLUDED_NAMES or name.endswith(EXCLUDED_SUFFIXES):
                continue
            path = here / name
            mode = path.lstat().st_mode
            if not stat.S_ISREG(mode):
                kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
                raise ContributionError(
                    model_id,
                    f"{path} is {kind}; a package holds plain files only",
                    remedy="replace it with a regular file or move it out of the package folder",
                )
            found.append((path.relative_to(folder).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return found


def build_package(
    folder: str | os.PathLike[str], destination: str | os.PathLike[str], *, model_id: str, package_name: str
) -> BuiltPackage:
    """Zip ``folder`` into ``destination`` (replaced atomically) as ``<package_name>/<file>`` entries."""
    source = Path(folder)
    target = Path(destination)
    if not (source / "__init__.py").is_file():
        raise ContributionError(
            model_id,
            f"{source} has no __init__.py",
            remedy="point at the package folder that holds the model's __init__.py",
        )
    if "/" in package_name or "\\" in package_name or package_name in ("", ".", ".."):
        raise ContributionError(
            model_id,
            f"package_name {package_name!r} is not a single folder name",
            remedy="set execution.package_name to the package folder's name",
        )
    files = package_files(source, model_id=model_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    names: list[str] = []
    try:
        with zipfile.ZipFile(tmp, "w") as archive:
            for rel, path in files:
                info = zipfile.ZipInfo(f"{package_name}/{rel}", date_time=ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # Unix, so external_attr is read as a mode everywhere
                info.external_attr = FILE_MODE << 16
                size = path.stat().st_size
                with path.open("rb") as src, archive.open(info, "w", force_zip64=size >= 1 << 31) as dst:
                    while chunk := src.read(CHUNK_BYTES):
                        dst.write(chunk)
                names.append(info.filename)
        sha256 = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False)
        with tmp.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                sha256.update(chunk)
                md5.update(chunk)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BuiltPackage(
        path=target,
        package_name=package_name,
        sha256=sha256.hexdigest(),
        md5=md5.hexdigest(),
        size=target.stat().st_size,
        files=tuple(names),
    )
