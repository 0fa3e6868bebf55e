"""Make small real wheels (a zip with dist-info, RECORD hashes) and sdists for find-links folders in tests."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest},{len(data)}"


def make_wheel(
    folder: Path, name: str, version: str, files: Mapping[str, str], *, top_level: str | None = None
) -> Path:
    """Write ``{name}-{version}-py3-none-any.whl`` holding ``files`` into ``folder``; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    contents = {path: text.encode() for path, text in files.items()}
    contents[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    contents[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: medigan-iso-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    if top_level is not None:
        contents[f"{info}/top_level.txt"] = top_level.encode()
    record = "".join(f"{path},{_record_hash(data)}\n" for path, data in contents.items())
    record += f"{info}/RECORD,,\n"
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in contents.items():
            zf.writestr(member, data)
        zf.writestr(f"{info}/RECORD", record)
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_sdist(directory: Path, project: str, version: str, setup_py: str) -> Path:
    """A source distribution ``<project>-<version>.tar.gz`` (``-`` as ``_``) of a setup.py and PKG-INFO."""
    stem = f"{project.replace('-', '_')}-{version}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.tar.gz"
    files = {
        f"{stem}/setup.py": setup_py,
        f"{stem}/PKG-INFO": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
