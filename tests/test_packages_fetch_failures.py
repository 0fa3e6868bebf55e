"""Download failures that must not be retried, and a body shorter than announced, on a real local server.

Complements test_packages_fetch.py (issue 19): a 4xx other than 404 and a redirect loop are reported after
one attempt and leave nothing in the store; a connection that always ends early is retried, reported with
the byte count, and its partial file resumes on the next call instead of starting again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pkgserver import PackageServer, serve
from _zipcraft import Entry, model_zip

from medigan_iso.errors import PackageDownloadError
from medigan_iso.packages import DownloadOptions, ensure_package

FAST = DownloadOptions(connect_timeout_s=5, read_timeout_s=5, attempts=3, backoff_s=0.01)
PACKAGE = model_zip("demo_pkg", extra={"big.bin": os.urandom(1 << 20)})
PACKAGE_SHA = hashlib.sha256(PACKAGE).hexdigest()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[PackageServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with serve() as srv:
        srv.state.files["/pkg.zip"] = PACKAGE
        yield srv


def _entry(url: str) -> Entry:
    return Entry("00001_DEMO", url, package_sha256=PACKAGE_SHA)


def _nothing_stored(home: Path) -> bool:
    return not any((home / "packages").rglob("*.zip*")) and not any((home / "packages" / "trees").glob("*"))


@pytest.mark.parametrize("status", [401, 403, 410])
def test_a_client_error_is_reported_after_one_attempt(home: Path, server: PackageServer, status: int) -> None:
    server.state.status["/pkg.zip"] = status
    with pytest.raises(PackageDownloadError) as info:
        ensure_package(_entry(server.url("/pkg.zip")), home=home, offline=False, options=FAST)
    assert info.value.status == status
    assert f"HTTP {status}" in info.value.reason
    assert len(server.state.gets("/pkg.zip")) == 1  # not retried: it will not get better
    assert _nothing_stored(home)


def test_a_redirect_loop_is_reported_after_one_attempt(home: Path, server: PackageServer) -> None:
    server.state.redirect["/loop.zip"] = "/loop.zip"
    with pytest.raises(PackageDownloadError) as info:
        ensure_package(_entry(server.url("/loop.zip")), home=home, offline=False, options=FAST)
    assert "TooManyRedirects" in info.value.reason
    assert info.value.url == server.url("/loop.zip")
    assert len(server.state.gets("/loop.zip")) == 31  # requests' 30 redirects, once: no retry
    assert _nothing_stored(home)


def test_a_body_that_always_ends_early_is_retried_then_resumed_on_the_next_call(
    home: Path, server: PackageServer
) -> None:
    cut = len(PACKAGE) // 4
    for _ in range(FAST.attempts):
        # each GET loses its connection after `cut` more bytes
        server.state.drop_after["/pkg.zip"] = cut
        with pytest.raises(PackageDownloadError):
            ensure_package(
                _entry(server.url("/pkg.zip")),
                home=home,
                offline=False,
                options=DownloadOptions(connect_timeout_s=5, read_timeout_s=5, attempts=1, backoff_s=0.01),
            )
    # every call kept what arrived, less at most one read chunk, and the next one resumed from there
    starts = [int((r.headers.get("Range") or "bytes=0-")[6:-1]) for r in server.state.gets("/pkg.zip")]
    assert starts[0] == 0 and len(starts) == FAST.attempts
    chunk = DownloadOptions().chunk_bytes
    assert all(cut - chunk < later - earlier <= cut for earlier, later in zip(starts, starts[1:])), starts
    package = ensure_package(_entry(server.url("/pkg.zip")), home=home, offline=False, options=FAST)
    assert package.sha256 == PACKAGE_SHA
    last = int(server.state.gets("/pkg.zip")[-1].headers["Range"][6:-1])
    assert cut - chunk < last - starts[-1] <= cut
