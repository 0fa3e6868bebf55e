"""Remote catalogues: a real http.server on 127.0.0.1 serving JSON, broken JSON, HTML, 404 and ETag 304."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from medigan_iso.catalogue import load_catalogue
from medigan_iso.errors import CatalogueSourceError
from medigan_iso.paths import cache_layout

# Catalogue counts and medigan 1.0 comparisons are about upstream entries: leave the demo models out.
pytestmark = pytest.mark.usefixtures("upstream_only")

ENTRY: dict[str, Any] = {
    "execution": {
        "package_name": "demo",
        "package_link": "https://example.org/demo.zip",
        "model_name": "weights",
        "extension": ".npz",
        "dependencies": ["numpy"],
        "generate_method": {"name": "generate"},
    },
    "selection": {"modality": ["MRI"]},
}
CATALOGUE = json.dumps({"00001_REMOTE": ENTRY}).encode()
ETAG = '"v1"'


@dataclass
class Served:
    """What the server answers per path, and what it saw."""

    routes: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, If-None-Match)
    base: str = ""
    stop: Callable[[], None] = lambda: None
    # While down, the server accepts and hangs up without answering: unreachable, yet the port stays
    # ours (restarting on a closed port could find it taken on a busy machine; issue 19).
    down: bool = False

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def server() -> Iterator[Served]:
    served = Served(
        routes={
            "/global.json": (200, "application/json", CATALOGUE),
            "/broken.json": (200, "application/json", b'{"00001_X": {'),
            "/page.html": (200, "text/html; charset=utf-8", b"<html><body>Sign in</body></html>"),
            "/html-as-json": (200, "application/json", b"<!doctype html><html></html>"),
            "/list.json": (200, "application/json", b"[]"),
        }
    )

    class Handler(BaseHTTPRequestHandler):
        def handle(self) -> None:
            if not served.down:
                super().handle()

        def do_GET(self) -> None:
            served.requests.append((self.path, self.headers.get("If-None-Match")))
            if self.path not in served.routes:
                self.send_error(404, "Not Found")
                return
            status, content_type, body = served.routes[self.path]
            if status == 200 and self.path == "/global.json" and self.headers.get("If-None-Match") == ETAG:
                self.send_response(304)
                self.send_header("ETag", ETAG)
                self.end_headers()
                return
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", ETAG)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    running: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start() -> None:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        served.base = f"http://127.0.0.1:{httpd.server_address[1]}"
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running.append((httpd, thread))

    def stop() -> None:
        while running:
            httpd, thread = running.pop()
            httpd.shutdown()
            httpd.server_close()
            thread.join(5)

    served.stop = stop
    start()
    try:
        yield served
    finally:
        stop()


@pytest.fixture
def online(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh home with the network allowed and no official catalogue (the tests name their URLs)."""
    monkeypatch.delenv("MEDIGAN_ISO_OFFLINE")
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    return home


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/global.json"


def test_remote_catalogue_is_fetched_and_cached(server: Served, online: Path) -> None:
    catalogue = load_catalogue(server.url("/global.json"))
    assert catalogue.ids() == ("00001_REMOTE",)
    assert catalogue.resolve(1).source == server.url("/global.json")
    assert catalogue.resolve(1).catalogue_dir is None
    cached = sorted(p.name for p in cache_layout(online).catalogues.iterdir())
    assert len(cached) == 2 and any(name.endswith(".meta.json") for name in cached)
    # a fresh cached copy is used without asking the server again
    load_catalogue(server.url("/global.json"))
    assert server.requests == [("/global.json", None)]


def test_stale_cache_is_revalidated_with_etag_and_304(server: Served, online: Path) -> None:
    load_catalogue(server.url("/global.json"))
    again = load_catalogue(server.url("/global.json"), max_age_s=0)
    assert again.ids() == ("00001_REMOTE",)
    assert server.requests == [("/global.json", None), ("/global.json", ETAG)]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (
            "/broken.json",
            "is not valid JSON (line 1 column 14: Expecting property name enclosed in double quotes)",
        ),
        ("/page.html", "returned an HTML page (text/html; charset=utf-8), not a JSON catalogue"),
        ("/html-as-json", "is an HTML page, not a JSON catalogue"),
        ("/list.json", "holds a JSON list, not an object mapping model ids to entries"),
        ("/missing.json", "HTTP 404 Not Found"),
    ],
)
def test_bad_remote_sources_raise_one_line_errors_naming_the_url(
    server: Served, online: Path, path: str, reason: str
) -> None:
    with pytest.raises(CatalogueSourceError) as info:
        load_catalogue(server.url(path))
    assert info.value.source == server.url(path)
    assert info.value.reason == reason
    assert str(info.value).splitlines()[0] == f"catalogue source {server.url(path)}: {reason}"
    assert info.value.__cause__ is None or not isinstance(info.value.__cause__, CatalogueSourceError)
    assert not list(cache_layout(online).catalogues.glob("*"))  # nothing cached, not even for a 404


def test_unreachable_url_without_cache_is_an_error(online: Path) -> None:
    url = _closed_port_url()
    with pytest.raises(CatalogueSourceError) as info:
        load_catalogue(url)
    assert info.value.source == url
    assert info.value.reason.startswith("unreachable (")
    assert "Connection refused" in info.value.reason
    assert "MEDIGAN_ISO_OFFLINE=1" in str(info.value)
    assert info.value.__cause__ is not None


def test_unreachable_url_falls_back_to_the_cached_copy_and_says_so(
    server: Served, online: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.url("/global.json")
    load_catalogue(url)
    server.stop()
    caplog.set_level(logging.WARNING, logger="medigan_iso.catalogue")
    catalogue = load_catalogue(url, max_age_s=0)
    assert catalogue.ids() == ("00001_REMOTE",)
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith(f"cannot reach {url} (") and "Connection refused" in m and "using the copy cached" in m
        for m in messages
    ), messages


def test_offline_uses_the_cache_without_touching_the_network(server: Served, online: Path) -> None:
    url = server.url("/global.json")
    load_catalogue(url)
    assert load_catalogue(url, offline=True, max_age_s=0).ids() == ("00001_REMOTE",)
    assert len(server.requests) == 1


def test_offline_without_a_cached_copy_is_an_error(server: Served, online: Path) -> None:
    url = server.url("/global.json")
    with pytest.raises(CatalogueSourceError) as info:
        load_catalogue(url, offline=True)
    assert info.value.reason == "offline ($MEDIGAN_ISO_OFFLINE) and never fetched before"
    assert "unset MEDIGAN_ISO_OFFLINE" in str(info.value)
    assert server.requests == []


def test_official_catalogue_is_fetched_first_and_skipped_when_unreachable(
    server: Served, online: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"00002_MINE": ENTRY}))
    catalogue = load_catalogue(mine, official_url=server.url("/global.json"))
    assert catalogue.ids() == ("00001_REMOTE", "00002_MINE")
    caplog.set_level(logging.WARNING, logger="medigan_iso.catalogue")
    dead = _closed_port_url()
    assert load_catalogue(mine, official_url=dead).ids() == ("00002_MINE",)
    assert any("skipping the official medigan catalogue" in r.getMessage() for r in caplog.records)


def test_offline_env_skips_the_official_catalogue_entirely(
    server: Served, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", server.url("/global.json"))
    assert load_catalogue([]).ids() == ()
    assert server.requests == []
    monkeypatch.delenv("MEDIGAN_ISO_OFFLINE")
    assert load_catalogue([]).ids() == ("00001_REMOTE",)


def test_unreachable_official_catalogue_is_not_retried_for_a_while(
    server: Served, online: Path, caplog: pytest.LogCaptureFixture
) -> None:
    official = server.url("/global.json")
    server.down = True
    caplog.set_level(logging.INFO, logger="medigan_iso.catalogue")
    assert load_catalogue([], official_url=official).ids() == ()
    assert any("unreachable (" in r.getMessage() for r in caplog.records)
    server.down = False
    assert load_catalogue([], official_url=official).ids() == ()  # not asked again so soon
    assert server.requests == []
    assert any("not retried yet" in r.getMessage() for r in caplog.records)
    # a source the user names is always tried; its success clears the official URL's back-off
    assert load_catalogue(official, official_url="").ids() == ("00001_REMOTE",)
    assert load_catalogue([], official_url=official).ids() == ("00001_REMOTE",)


def test_server_errors_fall_back_to_the_cached_copy(
    server: Served, online: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.url("/global.json")
    load_catalogue(url)
    server.routes["/global.json"] = (503, "text/plain", b"down")
    caplog.set_level(logging.WARNING, logger="medigan_iso.catalogue")
    assert load_catalogue(url, max_age_s=0).ids() == ("00001_REMOTE",)
    assert any(f"{url} answered HTTP 503; using the copy cached" in r.getMessage() for r in caplog.records)


def test_config_env_mixes_urls_with_ports_and_files(
    server: Served, online: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"00002_MINE": ENTRY}))
    monkeypatch.setenv("MEDIGAN_ISO_CONFIG", os.pathsep.join([server.url("/global.json"), str(mine)]))
    assert load_catalogue().ids() == ("00001_REMOTE", "00002_MINE")


def test_an_unwritable_cache_does_not_fail_a_download(
    server: Served, online: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalogues = cache_layout(online).catalogues
    catalogues.parent.mkdir(parents=True)
    catalogues.write_text("a file where the cache folder should be")
    caplog.set_level(logging.WARNING, logger="medigan_iso.catalogue")
    assert load_catalogue(server.url("/global.json")).ids() == ("00001_REMOTE",)
    assert any(
        r.getMessage().startswith(f"cannot cache {server.url('/global.json')} in {catalogues}")
        for r in caplog.records
    )
