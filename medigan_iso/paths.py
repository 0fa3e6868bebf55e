"""On-disk locations: every directory medigan_iso reads or writes is named here and nowhere else.

The root is ``$MEDIGAN_ISO_HOME`` when set, else platformdirs' user cache dir for ``medigan-iso``.
The uv cache lives under the root by default so that it shares a filesystem with the envs (uv then
hardlinks files into envs instead of copying them); ``$MEDIGAN_ISO_UV_CACHE`` moves it (tests and CI
point it at one persistent folder so TensorFlow is downloaded once, not on every run).

This module creates directories and the ``CACHEDIR.TAG`` file; it never deletes anything.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

__all__ = ["BUNDLE_ENV", "CACHEDIR_TAG_NAME", "OFFLINE_ENV", "CacheLayout", "cache_layout", "is_offline"]

HOME_ENV = "MEDIGAN_ISO_HOME"
UV_CACHE_ENV = "MEDIGAN_ISO_UV_CACHE"
OFFLINE_ENV = "MEDIGAN_ISO_OFFLINE"
BUNDLE_ENV = "MEDIGAN_ISO_BUNDLE"  # an air-gap bundle folder Session installs once (medigan_iso.bundle)
_TRUE = frozenset({"1", "true", "yes", "on"})
CACHEDIR_TAG_NAME = "CACHEDIR.TAG"
# https://bford.info/cachedir/ : backup tools skip directories holding this file.
_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by medigan-iso.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)


@dataclass(frozen=True)
class CacheLayout:
    """The cache directories under one root. Build it with :func:`cache_layout`."""

    root: Path
    catalogues: Path  # cached remote catalogues (+ ETag metadata)
    packages: Path  # downloaded package archives and extracted, content-addressed trees
    envs: Path  # one virtualenv per env key; build temp dirs live here too (same filesystem)
    uv_cache: Path  # uv's cache
    locks: Path  # file locks for builds and downloads
    logs: Path  # env build logs and runner stderr logs

    def ensure(self) -> CacheLayout:
        """Create every directory and the CACHEDIR.TAG at the root; return self."""
        for path in (
            self.root,
            self.catalogues,
            self.packages,
            self.envs,
            self.uv_cache,
            self.locks,
            self.logs,
        ):
            path.mkdir(parents=True, exist_ok=True)
        tag = self.root / CACHEDIR_TAG_NAME
        if not tag.exists():
            tag.write_text(_CACHEDIR_TAG, encoding="ascii")
        return self

    # --- envs (medigan_iso.envs) ---
    def env_dir(self, key: str) -> Path:
        return self.envs / key

    def env_log(self, key: str) -> Path:
        return self.logs / f"env-{key}.log"

    def env_lock(self, key: str) -> Path:
        """Held while env ``key`` is built, refreshed or removed."""
        return self.locks / f"env-{key}.lock"

    def env_users_lock(self, key: str) -> Path:
        return self.locks / f"env-{key}.users.lock"

    def resolved_lock(self, rkey: str) -> Path:
        """A cached resolution (the lock text) for resolution key ``rkey``."""
        return self.envs / ".resolved" / f"{rkey}.txt"

    def interpreter_choice(self, ckey: str) -> Path:
        """Which interpreter a dated resolution chose (the first whose compiled packages had wheels)."""
        return self.envs / ".resolved" / f"{ckey}.python.json"

    def resolve_lock(self, rkey: str) -> Path:
        return self.locks / f"resolve-{rkey}.lock"

    def env_name_record(self, name_hash: str) -> Path:
        """Which env a named spec (a model id) used last."""
        return self.envs / ".names" / f"{name_hash}.json"

    @property
    def interpreters_file(self) -> Path:
        """Interpreters found for python_requires ranges and as-of dates (a cache of discovery)."""
        return self.envs / ".interpreters.json"

    @property
    def build_area(self) -> Path:
        """Where envs are built before they are renamed into ``envs``: inside the uv cache, so a build
        confined to one writable mount (the uv cache) can still hardlink wheel files into the env. One
        folder per cache root: several roots may share a uv cache, and each prunes only its own."""
        root_id = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:16]
        return self.uv_cache / ".medigan-iso-builds" / root_id

    # --- packages (medigan_iso.packages) ---
    @property
    def package_trees(self) -> Path:
        """Extracted, read-only package trees, one per archive sha256 (or tree hash of a directory)."""
        return self.packages / "trees"

    def package_tree(self, sha256: str) -> Path:
        return self.package_trees / sha256

    def package_date(self, sha256: str) -> Path:
        """The newest member date of the archive extracted to ``package_tree(sha256)`` (an as-of source)."""
        return self.packages / "dates" / sha256

    @property
    def package_index(self) -> Path:
        """Which sha256 each link produced (lets unpinned links work offline)."""
        return self.packages / "index"

    def package_index_record(self, link_key: str) -> Path:
        return self.package_index / f"{link_key}.json"

    @property
    def package_downloads(self) -> Path:
        """In-flight downloads and copies of archives."""
        return self.packages / "downloads"

    def package_download(self, name: str, link_key: str) -> Path:
        return self.package_downloads / f"{name}-{link_key}.zip.part"

    def package_lock(self, name: str) -> Path:
        """Held while a link is downloaded or a tree extracted (``name``: link key or sha256)."""
        return self.locks / f"package-{name}.lock"

    # --- runners (medigan_iso.generation) ---
    def runner_log(self, model_id: str, *, started: str, pid: int, serial: int) -> Path:
        """The stderr log of one runner: model id (made file-name safe), start time, host pid and the
        runner's serial number in that host process (two runners started in one second differ)."""
        safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)[:80] or "model"
        return self.logs / f"runner-{safe_id}-{started}-{pid}-{serial}.log"


def is_offline(offline: bool | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """``offline`` if given, else whether ``$MEDIGAN_ISO_OFFLINE`` is set to 1/true/yes/on.

    The one reading of that variable: catalogues, packages and envs all ask here.
    """
    if offline is not None:
        return offline
    env = os.environ if environ is None else environ
    return env.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def cache_layout(home: str | os.PathLike[str] | None = None) -> CacheLayout:
    """Return the layout rooted at ``home``, else ``$MEDIGAN_ISO_HOME``, else the user cache dir.

    Nothing is created; call :meth:`CacheLayout.ensure` before writing.
    """
    if home is None:
        home = os.environ.get(HOME_ENV) or platformdirs.user_cache_dir("medigan-iso", appauthor=False)
    root = Path(home).expanduser().absolute()
    uv_cache_env = os.environ.get(UV_CACHE_ENV)
    uv_cache = Path(uv_cache_env).expanduser().absolute() if uv_cache_env else root / "uv-cache"
    return CacheLayout(
        root=root,
        catalogues=root / "catalogues",
        packages=root / "packages",
        envs=root / "envs",
        uv_cache=uv_cache,
        locks=root / "locks",
        logs=root / "logs",
    )
