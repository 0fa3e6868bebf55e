"""Model packages: fetch, verify and safely extract the zip (or directory) a catalogue entry points at.

This module owns the path from an entry's ``package_link`` to a read-only directory holding the
package's ``__init__.py`` (:func:`ensure_package` -> :class:`ModelPackage`):

- sources: https, http (with a warning), ``file://`` URLs, local zips, local directories and paths relative
  to the catalogue file (bundled entries); local links only for entries from a local catalogue file;
- one download per package across processes (a file lock under ``cache_layout().locks``), done by
  ``medigan_iso.downloads`` (streaming to ``<name>.part``, timeouts, retries, resume, size cap, progress);
- verification of ``package_sha256`` (and Zenodo's ``md5``) **before** anything is extracted;
- extraction by ``medigan_iso.archives.safe_extract``, which treats every archive as hostile;
- the content-addressed store ``packages/trees/<sha256>/`` (files 0o444, directories 0o555), the
  medigan layouts, the model file path and the ``models/<model_id>/`` rewriting of custom defaults.

It never imports or executes anything from a package: the host only reads bytes and writes files. It
never prints (progress goes to a callback) and it imports nothing from ``catalogue``: an entry is anything
with the attributes of :class:`PackageEntry`. ``safe_extract``, ``sha256_file``, ``tree_sha256`` and the
download names are re-exported here, where other modules look for them.

Cache layout under ``cache_layout().packages``::

    downloads/<name>-<key>.zip.part      in-flight download (+ .part.json: URL and resume validator)
    index/<key>.json                     which sha256 a link produced (lets unpinned links work offline)
    trees/<sha256>/                      extracted, read-only package trees
    trees/.<sha256>.tmp-*, .dir.tmp-*    extraction or copy in progress (removed on failure)

``<key>`` is the first 24 hex digits of sha256(link). A tree's name is the sha256 of the archive it came
from, or :func:`tree_sha256` of the directory it was copied from. The two cannot be confused: a tree
hash's input starts with ``TREE_HASH_MAGIC``, and :func:`safe_extract` refuses any archive that does not
start with a zip local-file header (``PK\\x03\\x04``), so no accepted archive has a tree hash's input.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import filelock

from medigan_iso.archives import (
    DEFAULT_EXTRACT_LIMITS,
    HASH_CHUNK_BYTES,
    ExtractLimits,
    file_digests,
    make_read_only,
    relative_parts,
    remove_tree,
    safe_extract,
    sha256_file,
    tree_sha256,
    walk_package_dir,
)
from medigan_iso.downloads import (
    DEFAULT_DOWNLOAD_OPTIONS,
    DownloadOptions,
    ProgressCallback,
    discard_partial,
    download,
)
from medigan_iso.errors import (
    MediganIsoError,
    PackageDownloadError,
    PackageIntegrityError,
    PackageLayoutError,
    UnpinnedPackageError,
)
from medigan_iso.paths import OFFLINE_ENV, CacheLayout, cache_layout, is_offline
from medigan_iso.untrusted import get_logger

__all__ = [
    "DEFAULT_DOWNLOAD_OPTIONS",
    "DEFAULT_EXTRACT_LIMITS",
    "DownloadOptions",
    "ExtractLimits",
    "ModelPackage",
    "PackageEntry",
    "ProgressCallback",
    "StoredPackageDate",
    "download",
    "ensure_package",
    "rewrite_model_paths",
    "safe_extract",
    "sha256_file",
    "stored_package_date",
    "tree_sha256",
]

logger = get_logger(__name__)

LOCK_POLL_S = 0.1
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


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
class ModelPackage:
    """An extracted, verified, read-only model package."""

    model_id: str
    root: Path  # read-only directory holding the package's __init__.py
    package_name: str
    model_file: Path  # root / (model_name + extension); may not exist for models that ignore it
    sha256: str  # of the archive, or tree_sha256 of the source directory
    custom_defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    newest_file_date: date | None = None  # of the archive's newest member (envs' as-of date source)


# --- package layout --------------------------------------------------------------------------------


def _package_root(tree: Path, *, model_id: str, package_name: str) -> Path:
    """The directory holding __init__.py, for every layout medigan accepts (and one it tolerates)."""
    if relative_parts(package_name) != (package_name,):
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


def _model_file(root: Path, *, model_id: str, model_name: str, extension: str) -> Path:
    # medigan concatenates: model_name may hold a sub-path and extension may be "" or ".pth.tar".
    file_name = f"{model_name}{extension}"
    parts = relative_parts(file_name)
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
        parts = relative_parts(rest)
        if parts is None:
            raise PackageLayoutError(model_id, f"custom default {value!r} points outside the package")
        return str(root.joinpath(*parts))
    if isinstance(value, Mapping):
        return {key: rewrite_model_paths(item, model_id=model_id, root=root) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rewrite_model_paths(item, model_id=model_id, root=root) for item in value]
    return value


def _model_package(entry: PackageEntry, tree: Path, sha256: str, layout: CacheLayout) -> ModelPackage:
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
        newest_file_date=_read_newest_date(layout.package_date(sha256)),
    )


def _read_newest_date(record: Path) -> date | None:
    """The date kept at ``record`` (``CacheLayout.package_date``), or None."""
    with contextlib.suppress(OSError, ValueError):
        return date.fromisoformat(record.read_text(encoding="ascii").strip())
    return None


def _newest_member_date(archive: Path) -> date | None:
    """The date of the archive's newest member (extraction does not keep mtimes), or None.

    Zip timestamps are local times without a zone; the day is what counts. 1980-01-01 (zip's epoch, which
    reproducible-build tools write) is no date at all.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            stamps = [info.date_time for info in zf.infolist() if info.date_time[0] > 1980]
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return date(*max(stamps)[:3]) if stamps else None


def _record_newest_date(archive: Path, target: Path) -> None:
    """Keep the date of the archive's newest member at ``target`` (``CacheLayout.package_date``)."""
    newest = _newest_member_date(archive)
    if newest is not None:
        with contextlib.suppress(OSError):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(newest.isoformat(), encoding="ascii")


@dataclass(frozen=True)
class StoredPackageDate:
    """What the store knows of a package's archive date without fetching anything.

    ``known``: the package is available here (in the store, or a local file or directory), so ``date`` is
    what a build will use (None: its archive has no dated member, or it is a directory). Not ``known``: a
    download is needed first, and a build reads the date of what it downloads.
    """

    known: bool
    date: date | None = None


def stored_package_date(
    entry: PackageEntry, *, home: str | os.PathLike[str] | None = None
) -> StoredPackageDate:
    """The newest member date of ``entry``'s package as a build would see it, reading only local bytes.

    A downloaded package's date comes from the store (``CacheLayout.package_date``); a local zip file's from
    its central directory; a directory has none. Nothing is downloaded, copied or extracted.
    """
    layout = cache_layout(home)
    try:
        source = _classify(entry)
        sha, _md5 = _pinned(entry, source.link)
    except MediganIsoError:
        return StoredPackageDate(False)
    if source.kind == "url":
        cached = _cached_tree(layout, source.link, sha)
        if cached is None:
            return StoredPackageDate(False)
        return StoredPackageDate(True, _read_newest_date(layout.package_date(cached[1])))
    if source.kind == "file":
        assert source.path is not None
        if sha is not None and layout.package_tree(sha).is_dir():
            return StoredPackageDate(True, _read_newest_date(layout.package_date(sha)))
        return StoredPackageDate(source.path.is_file(), _newest_member_date(source.path))
    return StoredPackageDate(True, None)


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


# --- the store -------------------------------------------------------------------------------------


def _lock(layout: CacheLayout, name: str) -> filelock.FileLock:
    return filelock.FileLock(str(layout.package_lock(name)))


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
    actual_sha, actual_md5 = actual if actual is not None else file_digests(path)
    if sha is not None and actual_sha != sha:
        path.unlink(missing_ok=True)
        raise PackageIntegrityError(source, algorithm="sha256", expected=sha, actual=actual_sha)
    if md5 is not None and actual_md5 != md5:
        path.unlink(missing_ok=True)
        raise PackageIntegrityError(source, algorithm="md5", expected=md5, actual=actual_md5)
    return actual_sha


def _install_tree(archive: Path, sha: str, layout: CacheLayout, limits: ExtractLimits) -> Path:
    tree = layout.package_tree(sha)
    if tree.is_dir():
        return tree
    # Two links may serve the same bytes: the tree is locked by its hash, not by the link.
    with _locked(layout, sha, f"extracting {archive.name}"):
        if not tree.is_dir():
            # Holding the lock, any temp dir for this hash is a leftover of a killed extraction.
            for stale in tree.parent.glob(f".{sha}.tmp-*"):
                logger.info("removing a leftover extraction %s", stale)
                remove_tree(stale)
            safe_extract(archive, tree, limits=limits, read_only=True)
            _record_newest_date(archive, layout.package_date(sha))
    return tree


def _write_index(layout: CacheLayout, link: str, sha: str) -> None:
    record = layout.package_index_record(_link_key(link))
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"link": link, "sha256": sha}), encoding="utf-8")
    tmp.replace(record)


def _read_index(layout: CacheLayout, link: str) -> str | None:
    record = layout.package_index_record(_link_key(link))
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
    tree = layout.package_tree(known)
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
        part = layout.package_download(_safe_name(entry.package_name), key)
        part.parent.mkdir(parents=True, exist_ok=True)
        download(source.url, part, options=options, progress=progress)
        try:
            actual = _verify(part, source=source.url, sha=sha, md5=md5)
            tree = _install_tree(part, actual, layout, limits)
        finally:
            discard_partial(part)  # verified and extracted, or refused: either way it is done with
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
    if sha is not None and layout.package_tree(sha).is_dir():
        return layout.package_tree(sha), sha
    # Copy first, then hash and extract the copy: the file cannot change between check and use.
    downloads = layout.package_downloads
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
    entry: PackageEntry,
    source: _Source,
    layout: CacheLayout,
    *,
    sha: str | None,
    limits: ExtractLimits = DEFAULT_EXTRACT_LIMITS,
) -> tuple[Path, str]:
    assert source.path is not None
    trees = layout.package_trees
    if sha is not None and (trees / sha).is_dir():
        return trees / sha, sha
    # Issue 16: an unpinned directory link ("/", a home folder) was copied whole into the store before its
    # layout was rejected. The layout is checked on the source first; the copy stops at the extract caps.
    _package_root(source.path, model_id=entry.model_id, package_name=entry.package_name)
    trees.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dir.tmp-", dir=trees))
    entries = 0
    total = 0
    try:
        for rel, path in walk_package_dir(source.path):
            entries += 1
            total += path.stat().st_size
            if entries > limits.max_entries or total > limits.max_total_bytes:
                raise PackageLayoutError(
                    entry.model_id,
                    f"the package directory holds more than {limits.max_entries} files or "
                    f"{limits.max_total_bytes} bytes; is the link the package folder?",
                    path=source.path,
                )
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
        make_read_only(tmp)
        with _locked(layout, actual, f"installing {source.path}"):
            if not tree.is_dir():
                tmp.rename(tree)
    finally:
        remove_tree(tmp)
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
    offline_now = is_offline(offline)
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
            offline=offline_now,
            options=options,
            limits=limits,
            progress=progress,
        )
    elif source.kind == "file":
        tree, actual = _fetch_file(entry, source, layout, sha=sha, md5=md5, limits=limits)
    else:
        tree, actual = _fetch_dir(entry, source, layout, sha=sha, limits=limits)
    if sha is None:
        logger.info(
            'model %s: package is not pinned; to pin it add "package_sha256": "%s"', entry.model_id, actual
        )
    return _model_package(entry, tree, actual, layout)
