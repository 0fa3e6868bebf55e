"""A package that only the user's pip configuration can find: a real PEP 503 index on 127.0.0.1, named as an
*extra* index (with credentials in its URL) by a pip.conf that ``$PIP_CONFIG_FILE`` points to, with a
trusted host and a CA bundle of its own. Env builds, the pip fallback and bundling must all find it.
"""

from __future__ import annotations

import os
import shutil
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import certifi
from _pkgserver import PackageServer, serve, serve_simple_index
from _wheelcraft import make_wheel

PROJECT = "pipargs-extra"
WHEEL = "pipargs_extra-1.0-py3-none-any.whl"
USER, PASSWORD = "alice", "s3cret"
# what a test drops from the environment so that the pip.conf is the only source of these settings
SHADOWING = (
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "SSL_CERT_FILE",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
)


@dataclass(frozen=True)
class ExtraIndex:
    server: PackageServer
    pip_conf: Path
    ca: Path
    port: str

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with ``$PIP_CONFIG_FILE`` pointing at the pip.conf and nothing that shadows it."""
        env = {k: v for k, v in base.items() if k not in SHADOWING}
        env["PIP_CONFIG_FILE"] = str(self.pip_conf)
        return env

    def fetched_by_pip(self, path: str) -> list[dict[str, str]]:
        """Headers of the GETs of ``path`` that pip made (its User-Agent starts with ``pip/``)."""
        return [
            r.headers
            for r in self.server.state.gets(path)
            if r.headers.get("User-Agent", "").startswith("pip/")
        ]


@contextmanager
def extra_index(folder: Path) -> Iterator[ExtraIndex]:
    wheel = make_wheel(
        folder / "wheels",
        PROJECT,
        "1.0",
        {"pipargs_extra.py": "VALUE = 'extra'\n"},
        top_level="pipargs_extra",
    )
    assert wheel.name == WHEEL
    # the machine's CA bundle (a TLS-inspecting proxy's root may be in it), copied outside /etc/ssl: a
    # confined build must be given it to reach any HTTPS index at all
    ca = folder / "ca" / "bundle.pem"
    ca.parent.mkdir(parents=True)
    source = (
        os.environ.get("SSL_CERT_FILE")
        or os.environ.get("PIP_CERT")
        or ssl.get_default_verify_paths().cafile
        or certifi.where()
    )
    shutil.copyfile(source, ca)
    with serve() as server:
        url = serve_simple_index(server, [wheel]).replace("http://", f"http://{USER}:{PASSWORD}@")
        conf = folder / "pip.conf"
        conf.write_text(f"[global]\nextra-index-url = {url}\ntrusted-host = 127.0.0.1\ncert = {ca}\n")
        yield ExtraIndex(server, conf, ca, server.base_url.rsplit(":", 1)[1])
