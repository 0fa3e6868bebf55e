"""Index settings: the user's pip configuration, translated once, given to uv and to pip alike."""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medigan_iso.paths import is_offline
from medigan_iso.untrusted import get_logger, neutralise

logger = get_logger(__name__)


# pip's configuration files, lowest precedence first: global, then user (skipped when $PIP_CONFIG_FILE
# names an existing file), then the site file of the host's environment; $PIP_CONFIG_FILE wins over all.
PIP_GLOBAL_CONFIG_FILES = (Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf"))
PIP_USER_CONFIG_FILES = (Path("~/.pip/pip.conf"), Path("~/.config/pip/pip.conf"))


@dataclass(frozen=True)
class IndexSettings:
    """Where packages come from, for uv and for pip alike. Built by :func:`index_settings`.

    The one description of the index settings: :meth:`uv_args`/:meth:`uv_env` give it to uv and
    :meth:`pip_args`/:meth:`pip_env` give the same settings to pip (the fallback builder and bundling),
    which runs inside bubblewrap with an empty home and so reads no pip configuration of its own.
    ``uv_reads`` names the fields whose value came from uv's own variables (``UV_INDEX_URL``,
    ``SSL_CERT_FILE``...): uv reads those itself, so they are not passed to it as flags, but pip gets them.
    """

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    constraints: tuple[Path, ...] = ()
    no_index: bool = False
    offline: bool = False
    index_strategy: str | None = None
    cert: str | None = None
    client_cert: str | None = None
    trusted_hosts: tuple[str, ...] = ()
    timeout_s: str | None = None
    sources: tuple[str, ...] = ()  # which pip settings were translated, for logs
    wheels_only: bool = False  # strict supply chain: no sdist build scripts run at install time
    uv_reads: frozenset[str] = frozenset()  # fields uv takes from its own variables (see the class doc)

    def _for_uv(self, name: str) -> Any:
        """A field as uv is told it: empty when uv reads the setting from its own variable."""
        value = getattr(self, name)
        if name not in self.uv_reads:
            return value
        return () if isinstance(value, tuple) else (False if isinstance(value, bool) else None)

    def uv_args(self, *, constraints: bool = True) -> list[str]:
        args: list[str] = []
        index_url: str | None = self._for_uv("index_url")
        if index_url:
            args += ["--index-url", index_url]
        for url in self._for_uv("extra_index_urls"):
            args += ["--extra-index-url", url]
        for link in self._for_uv("find_links"):
            args += ["--find-links", link]
        if self.index_strategy:
            args += ["--index-strategy", self.index_strategy]
        if self._for_uv("no_index"):
            args.append("--no-index")
        for host in self._for_uv("trusted_hosts"):
            args += ["--allow-insecure-host", host]
        if constraints:
            for path in self._for_uv("constraints"):
                args += ["--constraint", str(path)]
        if self.offline:
            args.append("--offline")
        if self.wheels_only:
            args.append("--no-build")
        return args

    def uv_env(self) -> dict[str, str]:
        """Variables for uv: the settings uv takes only from its environment (CA bundle, client
        certificate, timeout), unless uv's own variable already holds them."""
        env: dict[str, str] = {}
        if self._for_uv("cert"):
            env["SSL_CERT_FILE"] = os.path.expanduser(self.cert or "")  # noqa: PTH111
        if self._for_uv("client_cert"):
            env["SSL_CLIENT_CERT"] = os.path.expanduser(self.client_cert or "")  # noqa: PTH111
        if self._for_uv("timeout_s"):
            env["UV_HTTP_TIMEOUT"] = self.timeout_s or ""
        return env

    def pip_args(self, *, constraints: bool = True) -> list[str]:
        """The same settings as pip options. pip is run with :meth:`pip_env`, so these are all it uses:
        envs are built (and the pip fallback runs) inside bubblewrap with an empty home, where pip would
        not find the user's pip.conf anyway, and unconfined it must not read a second copy of it."""
        args: list[str] = []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for link in self.find_links:
            args += ["--find-links", link]
        if self.no_index or self.offline or "offline" in self.uv_reads:
            args.append("--no-index")  # pip has no offline mode: no index, only find-links
        for host in self.trusted_hosts:
            args += ["--trusted-host", host]
        if self.cert:
            args += ["--cert", os.path.expanduser(self.cert)]  # noqa: PTH111
        if self.client_cert:
            args += ["--client-cert", os.path.expanduser(self.client_cert)]  # noqa: PTH111
        if self.timeout_s:
            args += ["--timeout", self.timeout_s]
        if constraints:
            for path in self.constraints:
                args += ["--constraint", str(path)]
        if self.wheels_only:
            args += ["--only-binary", ":all:"]
        return args

    def pip_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` for a pip process: no ``PIP_*`` variable of the user's and no configuration file
        (``PIP_CONFIG_FILE=/dev/null``, pip's documented way), so only :meth:`pip_args` apply. The
        certificates and the timeout are also set as ``PIP_*`` variables: pip passes its index options to
        the pip that installs an sdist's build dependencies, but not those."""
        env = {k: v for k, v in base.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
        for var, value in (("PIP_CERT", self.cert), ("PIP_CLIENT_CERT", self.client_cert)):
            if value:
                env[var] = os.path.expanduser(value)  # noqa: PTH111
        if self.timeout_s:
            env["PIP_TIMEOUT"] = self.timeout_s
        return env

    def fingerprint(self) -> dict[str, Any]:
        """What resolution depends on (constraint files by content; uv's own UV_* index variables)."""
        return {
            "index_url": self._for_uv("index_url"),
            "extra_index_urls": list(self._for_uv("extra_index_urls")),
            "find_links": list(self._for_uv("find_links")),
            "no_index": self._for_uv("no_index"),
            "index_strategy": self.index_strategy,
            "constraints": [_file_sha256_or_missing(p) for p in self._for_uv("constraints")],
            "uv_env": {k: v for k, v in sorted(os.environ.items()) if k in _UV_RESOLUTION_VARIABLES},
        } | ({"wheels_only": True} if self.wheels_only else {})

    def describe(self) -> str:
        """The index settings for a message or a log: uv's flags, credentials in URLs hidden."""
        text = " ".join(shlex.quote(redact(a)) for a in self.uv_args()) or "(uv defaults)"
        if self.uv_reads:
            text += " and uv's own variables for " + ", ".join(sorted(self.uv_reads))
        return neutralise(text)


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
            # configparser quotes the offending line, which may hold an index URL's password
            logger.warning("ignoring unreadable pip configuration %s: %s", path, redact(str(exc)))
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
    """Translate the user's pip settings (and per-call overrides) into one :class:`IndexSettings`.

    Precedence per setting, highest first: the per-call argument; uv's own variable (``UV_INDEX_URL``,
    ``UV_DEFAULT_INDEX``, ``UV_EXTRA_INDEX_URL``, ``UV_INDEX``, ``UV_FIND_LINKS``, ``UV_CONSTRAINT``,
    ``UV_NO_INDEX``, ``UV_INSECURE_HOST``, ``UV_HTTP_TIMEOUT``, ``SSL_CERT_FILE``, ``SSL_CLIENT_CERT``:
    uv reads it itself and pip is given its value); ``PIP_*`` variables; pip.conf ``[global]``/``[install]``
    from pip's files in pip's order (``$PIP_CONFIG_FILE`` last). Per-call find-links are added to the
    translated ones. ``environ`` and ``pip_config_files`` are seams for tests.
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

    uv_reads: set[str] = set()

    def uv_own(field: str, *names: str) -> str | None:
        """The value of the first of uv's own ``names`` that is set (uv reads it; pip is given it)."""
        for name in names:
            if env.get(name):
                uv_reads.add(field)
                return env[name]
        return None

    resolved_index = index_url
    if resolved_index is None:
        own = uv_own("index_url", "UV_DEFAULT_INDEX", "UV_INDEX_URL")
        resolved_index = _uv_index_url(own) if own is not None else pip_value("index-url")
    own_extra = [uv_own("extra_index_urls", n) for n in ("UV_INDEX", "UV_EXTRA_INDEX_URL")]
    if "extra_index_urls" in uv_reads:
        extra = tuple(_uv_index_url(u) for value in own_extra for u in (value or "").split())
    else:
        extra = tuple((pip_value("extra-index-url") or "").split())
    links = tuple(os.fspath(f) for f in find_links)
    own_links = uv_own("find_links", "UV_FIND_LINKS")
    if own_links is not None:
        links += tuple(x for x in (x.strip() for x in own_links.split(",")) if x and x not in links)
        if find_links:
            uv_reads.discard("find_links")  # uv ignores UV_FIND_LINKS once --find-links is given: pass all
    else:
        links += tuple(x for x in (pip_value("find-links") or "").split() if x not in links)
    own_constraints = uv_own("constraints", "UV_CONSTRAINT")
    constraints = tuple(
        Path(c).expanduser() for c in (own_constraints or pip_value("constraint") or "").split()
    )
    own_no_index = uv_own("no_index", "UV_NO_INDEX")
    no_index = _truthy(own_no_index if own_no_index is not None else pip_value("no-index"))
    if _truthy(env.get("UV_OFFLINE")):
        uv_reads.add("offline")
    own_hosts = uv_own("trusted_hosts", "UV_INSECURE_HOST")
    hosts = tuple((own_hosts if own_hosts is not None else pip_value("trusted-host") or "").split())
    offline = is_offline(offline, environ=env)
    # pip picks the best version across all its indexes; uv by default stops at the first index that has
    # the package (its defence against dependency confusion). Translated pip extra indexes keep pip's
    # semantics, or a mirror holding only some wheels of a package hides the rest (seen here: msgpack
    # cp311-only on a local extra index made every cp312 env unresolvable).
    strategy = (
        "unsafe-best-match"
        if extra and "extra_index_urls" not in uv_reads and not env.get("UV_INDEX_STRATEGY")
        else None
    )
    return IndexSettings(
        index_url=resolved_index or None,
        extra_index_urls=extra,
        index_strategy=strategy,
        find_links=links,
        constraints=constraints,
        no_index=no_index,
        offline=offline,
        cert=uv_own("cert", "SSL_CERT_FILE") or pip_value("cert"),
        client_cert=uv_own("client_cert", "SSL_CLIENT_CERT") or pip_value("client-cert"),
        trusted_hosts=hosts,
        timeout_s=uv_own("timeout_s", "UV_HTTP_TIMEOUT")
        or pip_value("timeout")
        or env.get("PIP_DEFAULT_TIMEOUT"),
        sources=tuple(dict.fromkeys(sources)),
        uv_reads=frozenset(uv_reads),
    )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _uv_index_url(value: str) -> str:
    """The URL of a uv index given as ``URL`` or ``NAME=URL`` (``UV_INDEX``, ``UV_DEFAULT_INDEX``)."""
    name, sep, url = value.partition("=")
    if sep and "://" in url and "/" not in name and ":" not in name:
        return url
    return value


# userinfo of a URL anywhere in a text: ``scheme://user:password@`` or ``scheme://token@``
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/@]+)@")


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it hidden, as pip shows them: ``user:***@`` for a
    user and password, ``***@`` for a lone token (index URLs may carry either)."""

    def hide(match: re.Match[str]) -> str:
        user, sep, _password = match["userinfo"].partition(":")
        return match["scheme"] + (f"{user}:***@" if sep else "***@")

    return _URL_USERINFO.sub(hide, text)


def _file_sha256_or_missing(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return f"missing:{path}"
