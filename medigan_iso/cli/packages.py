"""``medigan-iso fetch`` and ``medigan-iso hash``: get model packages into the cache, and pin them.

``fetch MODEL...`` downloads, verifies and extracts each model's package (no env is built), resolving
ids through the catalogue; ``fetch --link URL_OR_PATH [--sha256 HEX]`` does the same for a package that
is not in a catalogue yet. ``hash FILE_OR_DIR`` prints the ``"package_sha256"`` line for a catalogue entry
(a zip's sha256, or a package directory's tree hash). A progress bar goes to stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from medigan_iso.packages import (
    PackageEntry,
    ProgressCallback,
    ensure_package,
    sha256_file,
    tree_sha256,
)

__all__ = ["register"]

PROGRESS_REFRESH_S = 0.2


def register(subparsers: Any) -> None:
    fetch = subparsers.add_parser(
        "fetch",
        help="download, verify and unpack model packages (no env is built)",
        description="Download, verify and safely unpack the packages of the given models into the cache.",
    )
    fetch.add_argument("models", nargs="*", metavar="MODEL", help="model ids (e.g. 00001 or 1)")
    fetch.add_argument("--link", metavar="URL_OR_PATH", help="fetch this package link instead of a model id")
    fetch.add_argument("--sha256", metavar="HEX", help="pinned sha256 for --link")
    fetch.add_argument("--md5", metavar="HEX", help="Zenodo md5 for --link")
    fetch.add_argument("--package-name", help="package folder name inside the zip, for --link")
    fetch.add_argument(
        "--require-hashes", action="store_true", help="refuse packages without a pinned package_sha256"
    )
    mode = fetch.add_mutually_exclusive_group()
    mode.add_argument(
        "--offline", dest="offline", action="store_true", default=None, help="use only the cache"
    )
    mode.add_argument("--online", dest="offline", action="store_false", help="ignore MEDIGAN_ISO_OFFLINE")
    fetch.set_defaults(handler=_fetch)

    hash_ = subparsers.add_parser(
        "hash",
        help="print the package_sha256 line for a package zip or directory",
        description="Print the sha256 of a package zip (or the tree hash of a package directory) as the "
        "line to paste into a catalogue entry's execution section.",
    )
    hash_.add_argument("path", metavar="FILE_OR_DIR")
    hash_.set_defaults(handler=_hash)


@dataclass(frozen=True)
class _LinkEntry:
    """A catalogue-less entry for ``fetch --link``."""

    model_id: str
    package_link: str
    package_name: str
    package_sha256: str | None
    package_md5: str | None
    model_name: str = ""
    extension: str = ""
    custom_defaults: Mapping[str, Any] = field(default_factory=dict)
    catalogue_dir: Path | None = None


def _link_entry(args: argparse.Namespace) -> _LinkEntry:
    link: str = args.link
    stem = PurePosixPath(urllib.parse.urlsplit(link).path).name
    for suffix in (".zip",):
        stem = stem.removesuffix(suffix)
    name = args.package_name or stem or "package"
    return _LinkEntry(
        model_id=name,
        package_link=link,
        package_name=name,
        package_sha256=args.sha256,
        package_md5=args.md5,
        catalogue_dir=Path.cwd(),  # the user typed the link: local paths are theirs to give
    )


def _catalogue_entries(models: list[str], *, offline: bool | None) -> list[PackageEntry]:
    # Imported lazily: only `fetch MODEL` needs the catalogue (and its network/ETag cache).
    catalogue_module = importlib.import_module("medigan_iso.catalogue")
    catalogue = catalogue_module.load_catalogue(offline=offline)
    return [catalogue.resolve(model) for model in models]


class _ProgressBar:
    """A one-line progress bar on a terminal stream."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_REFRESH_S and done != total:
            return
        self.last = now
        mib = done / (1 << 20)
        if total:
            width = 30
            filled = int(width * done / total)
            bar = "#" * filled + "-" * (width - filled)
            text = f"\r{self.label} [{bar}] {100 * done / total:5.1f}% {mib:.1f}/{total / (1 << 20):.1f} MiB"
        else:
            text = f"\r{self.label} {mib:.1f} MiB"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.last:
            self.stream.write("\n")
            self.stream.flush()


def _fetch(args: argparse.Namespace) -> int:
    if bool(args.link) == bool(args.models):
        print("medigan-iso fetch: give model ids or --link URL_OR_PATH (not both)", file=sys.stderr)
        return 2
    if (args.sha256 or args.md5 or args.package_name) and not args.link:
        print("medigan-iso fetch: --sha256/--md5/--package-name only apply to --link", file=sys.stderr)
        return 2
    entries: list[PackageEntry] = (
        [_link_entry(args)] if args.link else _catalogue_entries(args.models, offline=args.offline)
    )
    for entry in entries:
        bar = _ProgressBar(entry.model_id, sys.stderr) if sys.stderr.isatty() else None
        progress: ProgressCallback | None = bar
        try:
            pkg = ensure_package(
                entry, offline=args.offline, require_hashes=args.require_hashes, progress=progress
            )
        finally:
            if bar is not None:
                bar.close()
        print(f"{pkg.model_id}: {pkg.root} (sha256 {pkg.sha256})")
    return 0


def _hash(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        digest = tree_sha256(path)
    elif path.is_file():
        digest = sha256_file(path)
    else:
        print(f"medigan-iso hash: no such file or directory: {path}", file=sys.stderr)
        return 1
    print(f'"package_sha256": "{digest}"')
    return 0
