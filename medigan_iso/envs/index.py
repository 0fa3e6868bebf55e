"""Index settings: the user's pip configuration translated into uv flags."""

from __future__ import annotations

import configparser
import hashlib
import os
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from medigan_iso.paths import is_offline
from medigan_iso.untrusted import get_logger

logger = get_logger(__name__)


# pip's configuration files, lowest precedence first: global, then user (skipped when $PIP_CONFIG_FILE
# names an existing file), then the site file of the host's environment; $PIP_CONFIG_FILE wins over all.
PIP_GLOBAL_CONFIG_FILES = (Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf"))
PIP_USER_CONFIG_FILES = (Path("~/.pip/pip.conf"), Path("~/.config/pip/pip.conf"))


@dataclass(frozen=True)
class IndexSettings:
    """Where packages come from, as uv flags. Built by :func:`index_settings`."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    constraints: tuple[Path, ...] = ()
    no_index: bool = False
    offline: bool = False
    index_strategy: str | None = None
    cert: str | None = None
    timeout_s: str | None = None
    sources: tuple[str, ...] = ()  # which pip settings were translated, for logs
    wheels_only: bool = False  # strict supply chain: no sdist build scripts run at install time

    def uv_args(self, *, constraints: bool = True) -> list[str]:
        args: list[str] = []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for link in self.find_links:
            args += ["--find-links", link]
        if self.index_strategy:
            args += ["--index-strategy", self.index_strategy]
        if self.no_index:
            args.append("--no-index")
        if constraints:
            for path in self.constraints:
                args += ["--constraint", str(path)]
        if self.offline:
            args.append("--offline")
        if self.wheels_only:
            args.append("--no-build")
        return args

    def pip_args(self) -> list[str]:
        # pip reads its own configuration; only per-call settings and offline mode are added.
        args: list[str] = []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for link in self.find_links:
            args += ["--find-links", link]
        if self.offline or self.no_index:
            args.append("--no-index")
        if self.wheels_only:
            args += ["--only-binary", ":all:"]
        return args

    def uv_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.cert and "SSL_CERT_FILE" not in os.environ:
            env["SSL_CERT_FILE"] = self.cert
        if self.timeout_s and "UV_HTTP_TIMEOUT" not in os.environ:
            env["UV_HTTP_TIMEOUT"] = self.timeout_s
        return env

    def fingerprint(self) -> dict[str, Any]:
        """What resolution depends on (constraint files by content; uv's own UV_* index variables)."""
        return {
            "index_url": self.index_url,
            "extra_index_urls": list(self.extra_index_urls),
            "find_links": list(self.find_links),
            "no_index": self.no_index,
            "index_strategy": self.index_strategy,
            "constraints": [_file_sha256_or_missing(p) for p in self.constraints],
            "uv_env": {k: v for k, v in sorted(os.environ.items()) if k in _UV_RESOLUTION_VARIABLES},
        } | ({"wheels_only": True} if self.wheels_only else {})

    def describe(self) -> str:
        return " ".join(shlex.quote(_redact(a)) for a in self.uv_args()) or "(uv defaults)"


_UV_RESOLUTION_VARIABLES = frozenset(
    {
        "UV_INDEX",
        "UV_DEFAULT_INDEX",
        "UV_INDEX_URL",
        "UV_EXTRA_INDEX_URL",
        "UV_FIND_LINKS",
        "UV_NO_INDEX",
        "UV_INDEX_STRATEGY",
        "UV_CONSTRAINT",
        "UV_OVERRIDE",
        "UV_PRERELEASE",
        "UV_RESOLUTION",
        "UV_EXCLUDE_NEWER",
        "UV_TORCH_BACKEND",
    }
)


def _read_pip_config(files: Iterable[Path]) -> tuple[dict[str, str], list[str]]:
    """Merge pip's ``[global]`` then ``[install]`` sections across ``files`` (later files win)."""
    merged: dict[str, str] = {}
    sources: list[str] = []
    for file in files:
        path = file.expanduser()
        if not path.is_file():
            continue
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError) as exc:
            logger.warning("ignoring unreadable pip configuration %s: %s", path, exc)
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                for option, value in parser.items(section):
                    merged[option.replace("_", "-")] = value
                    sources.append(f"{path}[{section}]{option}")
    return merged, sources


def index_settings(
    *,
    index_url: str | None = None,
    find_links: Sequence[str | os.PathLike[str]] = (),
    offline: bool | None = None,
    environ: Mapping[str, str] | None = None,
    pip_config_files: Sequence[Path] | None = None,
) -> IndexSettings:
    """Translate the user's pip settings (and per-call overrides) into uv flags.

    Precedence per setting, highest first: the per-call argument; uv's own variable (``UV_INDEX_URL``,
    ``UV_DEFAULT_INDEX``, ``UV_EXTRA_INDEX_URL``, ``UV_INDEX``, ``UV_FIND_LINKS``, ``UV_CONSTRAINT``,
    ``UV_NO_INDEX``: when set, we pass nothing and uv reads it); ``PIP_*`` variables; pip.conf
    ``[global]``/``[install]`` from pip's files in pip's order (``$PIP_CONFIG_FILE`` last). Per-call
    find-links are added to the translated ones. ``environ`` and ``pip_config_files`` are seams for tests.
    """
    env = os.environ if environ is None else environ
    if pip_config_files is None:
        env_file = Path(env["PIP_CONFIG_FILE"]).expanduser() if env.get("PIP_CONFIG_FILE") else None
        files = list(PIP_GLOBAL_CONFIG_FILES)
        if env_file is None or not env_file.is_file():
            files += PIP_USER_CONFIG_FILES
        files.append(Path(sys.prefix) / "pip.conf")
        if env_file is not None:
            files.append(env_file)
    else:
        files = list(pip_config_files)
    if env.get("PIP_CONFIG_FILE") == os.devnull:
        files = []  # pip's documented way to read no configuration file
    config, sources = _read_pip_config(files)

    def pip_value(name: str) -> str | None:
        var = "PIP_" + name.upper().replace("-", "_")
        if env.get(var):
            sources.append(var)
            return env[var]
        return config.get(name)

    def uv_has(*names: str) -> bool:
        return any(env.get(n) for n in names)

    resolved_index = index_url
    if resolved_index is None and not uv_has("UV_INDEX_URL", "UV_DEFAULT_INDEX"):
        resolved_index = pip_value("index-url")
    extra: tuple[str, ...] = ()
    if not uv_has("UV_EXTRA_INDEX_URL", "UV_INDEX"):
        extra = tuple((pip_value("extra-index-url") or "").split())
    links = tuple(os.fspath(f) for f in find_links)
    if not uv_has("UV_FIND_LINKS"):
        links += tuple(x for x in (pip_value("find-links") or "").split() if x not in links)
    constraints: tuple[Path, ...] = ()
    if not uv_has("UV_CONSTRAINT"):
        constraints = tuple(Path(c).expanduser() for c in (pip_value("constraint") or "").split())
    no_index = False
    if not uv_has("UV_NO_INDEX"):
        no_index = (pip_value("no-index") or "").strip().lower() in {"1", "true", "yes", "on"}
    offline = is_offline(offline, environ=env)
    # pip picks the best version across all its indexes; uv by default stops at the first index that has
    # the package (its defence against dependency confusion). Translated pip extra indexes keep pip's
    # semantics, or a mirror holding only some wheels of a package hides the rest (seen here: msgpack
    # cp311-only on a local extra index made every cp312 env unresolvable).
    strategy = "unsafe-best-match" if extra and not uv_has("UV_INDEX_STRATEGY") else None
    return IndexSettings(
        index_url=resolved_index or None,
        extra_index_urls=extra,
        index_strategy=strategy,
        find_links=links,
        constraints=constraints,
        no_index=no_index,
        offline=offline,
        cert=pip_value("cert"),
        timeout_s=pip_value("timeout") or env.get("PIP_DEFAULT_TIMEOUT"),
        sources=tuple(dict.fromkeys(sources)),
    )


def _redact(text: str) -> str:
    """Hide passwords in URLs (index URLs may carry credentials)."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if parts.password is None:
        return text
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _file_sha256_or_missing(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return f"missing:{path}"
