"""ensure_package against a real HTTP server on 127.0.0.1 and against local files and directories."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pkgserver import PackageServer, serve
from _zipcraft import Entry, RawEntry, build_zip, model_zip

from medigan_iso.archives import ExtractLimits
from medigan_iso.errors import (
    PackageDownloadError,
    PackageIntegrityError,
    PackageLayoutError,
    UnpinnedPackageError,
    UnsafeArchiveError,
)
from medigan_iso.packages import DownloadOptions, ensure_package, tree_sha256

FAST = DownloadOptions(connect_timeout_s=5, read_timeout_s=5, attempts=3, backoff_s=0.01)
BIG_WEIGHTS = os.urandom(3 << 20)  # incompressible, so a dropped connection really is mid-file
PACKAGE = model_zip("demo_pkg", extra={"big.bin": BIG_WEIGHTS})
PACKAGE_SHA = hashlib.sha256(PACKAGE).hexdigest()
PACKAGE_MD5 = hashlib.md5(PACKAGE).hexdigest()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[PackageServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with serve() as srv:
        srv.state.files["/pkg.zip"] = PACKAGE
        yield srv


def _entry(url: str, **kw: object) -> Entry:
    return Entry("00001_DEMO", url, **kw)  # type: ignore[arg-type]


def _store_is_empty(home: Path) -> None:
    trees = home / "packages" / "trees"
    assert not trees.exists() or list(trees.iterdir()) == []
    downloads = home / "packages" / "downloads"
    assert not downloads.exists() or list(downloads.iterdir()) == []


def test_full_download_gives_a_verified_read_only_package(home: Path, server: PackageServer) -> None:
    seen: list[tuple[int, int | None]] = []
    pkg = ensure_package(
        _entry(server.url("/pkg.zip"), package_sha256=PACKAGE_SHA),
        home=home,
        offline=False,
        options=FAST,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert pkg.sha256 == PACKAGE_SHA
    assert pkg.root == home / "packages" / "trees" / PACKAGE_SHA / "demo_pkg"
    assert (pkg.root / "big.bin").read_bytes() == BIG_WEIGHTS
    assert pkg.model_file == pkg.root / "weights.npy"
    assert pkg.model_file.is_file()
    assert stat.S_IMODE(pkg.root.stat().st_mode) == 0o555
    assert stat.S_IMODE((pkg.root / "__init__.py").stat().st_mode) == 0o444
    assert seen[-1] == (len(PACKAGE), len(PACKAGE))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert list((home / "packages" / "downloads").iterdir()) == []  # archive removed after extraction
    # second call: served from the store, no new request
    again = ensure_package(
        _entry(server.url("/pkg.zip"), package_sha256=PACKAGE_SHA), home=home, offline=False
    )
    assert again == pkg
    assert len(server.state.gets("/pkg.zip")) == 1


def test_dropped_connection_resumes_with_range(home: Path, server: PackageServer) -> None:
    server.state.drop_after["/pkg.zip"] = 1 << 20
    pkg = ensure_package(
        _entry(server.url("/pkg.zip"), package_sha256=PACKAGE_SHA), home=home, offline=False, options=FAST
    )
    first, second = server.state.gets("/pkg.zip")
    assert "Range" not in first.headers
    assert second.headers["Range"] == f"bytes={1 << 20}-"
    assert second.headers["If-Range"].startswith('"')
    assert (pkg.root / "big.bin").read_bytes() == BIG_WEIGHTS


def test_a_stalled_body_hits_the_read_timeout_and_resumes(home: Path, server: PackageServer) -> None:
    server.state.stall_after["/pkg.zip"] = 1 << 20
    options = DownloadOptions(connect_timeout_s=5, read_timeout_s=0.5, attempts=3, backoff_s=0.01)
    entry = _entry(server.url("/pkg.zip"), package_sha256=PACKAGE_SHA)
    pkg = ensure_package(entry, home=home, offline=False, options=options)
    _first, second = server.state.gets("/pkg.zip")
    assert second.headers["Range"] == f"bytes={1 << 20}-"
    assert (pkg.root / "big.bin").read_bytes() == BIG_WEIGHTS


def test_redirects_are_followed_and_plain_http_is_logged(
    home: Path, server: PackageServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.state.redirect["/record/1/files/pkg.zip"] = "/pkg.zip"
    with caplog.at_level(logging.WARNING, logger="medigan_iso.packages"):
        pkg = ensure_package(_entry(server.url("/record/1/files/pkg.zip")), home=home, offline=False)
    assert pkg.sha256 == PACKAGE_SHA
    assert len(server.state.gets("/pkg.zip")) == 1
    assert any(
        "uses plain http" in r.getMessage() and "no package_sha256" in r.getMessage() for r in caplog.records
    )


def test_server_ignoring_range_restarts_from_zero(home: Path, server: PackageServer) -> None:
    server.state.honour_range = False
    server.state.drop_after["/pkg.zip"] = 1 << 20
    pkg = ensure_package(
        _entry(server.url("/pkg.zip"), package_sha256=PACKAGE_SHA), home=home, offline=False, options=FAST
    )
    _first, second = server.state.gets("/pkg.zip")
    assert second.headers["Range"] == f"bytes={1 << 20}-"  # asked to resume, got a full 200 instead
    assert (pkg.root / "big.bin").read_bytes() == BIG_WEIGHTS
    assert pkg.sha256 == PACKAGE_SHA


def test_partial_download_survives_giving_up_and_resumes_next_call(home: Path, server: PackageServer) -> None:
    server.state.drop_after["/pkg.zip"] = 1 << 20
    one_try = DownloadOptions(attempts=1, backoff_s=0.01)
    entry = _entry(server.url("/pkg.zip"), package_sha256=PACKAGE_SHA)
    with pytest.raises(PackageDownloadError) as info:
        ensure_package(entry, home=home, offline=False, options=one_try)
    assert "gave up after 1 attempts" in info.value.reason
    assert info.value.url == server.url("/pkg.zip")
    assert info.value.remedy is not None and "resumes" in info.value.remedy
    (part,) = (home / "packages" / "downloads").glob("*.part")
    assert part.stat().st_size == 1 << 20
    pkg = ensure_package(entry, home=home, offline=False, options=one_try)
    assert server.state.gets("/pkg.zip")[-1].headers["Range"] == f"bytes={1 << 20}-"
    assert (pkg.root / "big.bin").read_bytes() == BIG_WEIGHTS


def test_a_partial_of_a_since_changed_file_is_not_spliced(home: Path, server: PackageServer) -> None:
    server.state.drop_after["/pkg.zip"] = 1 << 20
    one_try = DownloadOptions(attempts=1, backoff_s=0.01)
    with pytest.raises(PackageDownloadError):
        ensure_package(_entry(server.url("/pkg.zip")), home=home, offline=False, options=one_try)
    new_package = model_zip("demo_pkg", extra={"big.bin": os.urandom(2 << 20)})
    server.state.files["/pkg.zip"] = new_package  # upstream changed: its ETag changed too
    new_sha = hashlib.sha256(new_package).hexdigest()
    pkg = ensure_package(_entry(server.url("/pkg.zip"), package_sha256=new_sha), home=home, offline=False)
    last = server.state.gets("/pkg.zip")[-1]
    assert last.headers["Range"] == f"bytes={1 << 20}-"
    assert (
        last.headers["If-Range"] == f'"{PACKAGE_SHA[:16]}"'
    )  # the old ETag: the server sent the new file whole
    assert pkg.sha256 == new_sha


def test_a_partial_longer_than_the_file_restarts_after_416(home: Path, server: PackageServer) -> None:
    server.state.drop_after["/pkg.zip"] = 1 << 20
    one_try = DownloadOptions(attempts=1, backoff_s=0.01)
    with pytest.raises(PackageDownloadError):
        ensure_package(_entry(server.url("/pkg.zip")), home=home, offline=False, options=one_try)
    small = model_zip("demo_pkg")
    assert len(small) < 1 << 20
    server.state.files["/pkg.zip"] = small
    server.state.honour_if_range = False  # many servers ignore If-Range: the stale Range gets a 416
    pkg = ensure_package(
        _entry(server.url("/pkg.zip"), package_sha256=hashlib.sha256(small).hexdigest()),
        home=home,
        offline=False,
        options=FAST,
    )
    statuses = [r.headers.get("Range") for r in server.state.gets("/pkg.zip")]
    assert statuses == [None, f"bytes={1 << 20}-", None]  # 416, then a clean full download
    assert pkg.sha256 == hashlib.sha256(small).hexdigest()


def test_404_is_a_clear_error_and_caches_nothing(home: Path, server: PackageServer) -> None:
    entry = _entry(server.url("/missing.zip"))
    with pytest.raises(PackageDownloadError) as info:
        ensure_package(entry, home=home, offline=False, options=FAST)
    err = info.value
    assert err.status == 404
    assert err.url == server.url("/missing.zip")
    assert "HTTP 404" in str(err)
    assert err.remedy is not None and "package_link" in err.remedy
    assert len(server.state.gets("/missing.zip")) == 1  # a 404 is not retried
    _store_is_empty(home)
    server.state.files["/missing.zip"] = PACKAGE  # the record appears: a retry is not poisoned
    assert ensure_package(entry, home=home, offline=False, options=FAST).sha256 == PACKAGE_SHA


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_error_page_is_a_clear_error_and_caches_nothing(
    home: Path, server: PackageServer, content_type: str
) -> None:
    server.state.html["/pkg.zip"] = content_type
    entry = _entry(server.url("/pkg.zip"))
    with pytest.raises(PackageDownloadError) as info:
        ensure_package(entry, home=home, offline=False, options=FAST)
    assert "HTML page" in info.value.reason
    assert info.value.status == 200
    assert info.value.remedy is not None and "browser" in info.value.remedy
    _store_is_empty(home)
    del server.state.html["/pkg.zip"]
    assert ensure_package(entry, home=home, offline=False, options=FAST).sha256 == PACKAGE_SHA


def test_server_errors_are_retried_then_reported(home: Path, server: PackageServer) -> None:
    server.state.status["/pkg.zip"] = 503
    with pytest.raises(PackageDownloadError) as info:
        ensure_package(_entry(server.url("/pkg.zip")), home=home, offline=False, options=FAST)
    assert info.value.status == 503
    assert "HTTP 503" in info.value.reason and "after 3 attempts" in info.value.reason
    assert len(server.state.gets("/pkg.zip")) == 3
    _store_is_empty(home)


def test_wrong_sha256_deletes_the_download_and_names_both_hashes(home: Path, server: PackageServer) -> None:
    wrong = "0" * 64
    with pytest.raises(PackageIntegrityError) as info:
        ensure_package(_entry(server.url("/pkg.zip"), package_sha256=wrong), home=home, offline=False)
    err = info.value
    assert (err.algorithm, err.expected, err.actual) == ("sha256", wrong, PACKAGE_SHA)
    assert wrong in str(err) and PACKAGE_SHA in str(err)
    assert err.source == server.url("/pkg.zip")
    _store_is_empty(home)


def test_zenodo_md5_is_checked_as_a_second_hash(home: Path, server: PackageServer) -> None:
    wrong = "f" * 32
    with pytest.raises(PackageIntegrityError) as info:
        ensure_package(_entry(server.url("/pkg.zip"), package_md5=f"md5:{wrong}"), home=home, offline=False)
    assert (info.value.algorithm, info.value.expected, info.value.actual) == ("md5", wrong, PACKAGE_MD5)
    _store_is_empty(home)
    pkg = ensure_package(
        _entry(server.url("/pkg.zip"), package_md5=f"md5:{PACKAGE_MD5}"), home=home, offline=False
    )
    assert pkg.sha256 == PACKAGE_SHA


def test_require_hashes_refuses_an_unpinned_package_before_downloading(
    home: Path, server: PackageServer
) -> None:
    entry = _entry(server.url("/pkg.zip"), package_md5=PACKAGE_MD5)
    with pytest.raises(UnpinnedPackageError) as info:
        ensure_package(entry, home=home, offline=False, require_hashes=True)
    err = info.value
    assert err.model_id == "00001_DEMO"
    assert err.source == server.url("/pkg.zip")
    assert "require_hashes" in err.reason and "md5 alone" in err.reason
    assert err.remedy is not None and "medigan-iso hash" in err.remedy
    assert server.state.gets("/pkg.zip") == []


def test_malformed_pin_is_refused(home: Path, server: PackageServer) -> None:
    with pytest.raises(UnpinnedPackageError) as info:
        ensure_package(_entry(server.url("/pkg.zip"), package_sha256="abc"), home=home, offline=False)
    assert "not 64 hex digits" in info.value.reason
    assert server.state.gets("/pkg.zip") == []


def test_size_cap_stops_a_download_and_keeps_nothing(home: Path, server: PackageServer) -> None:
    with pytest.raises(PackageDownloadError) as info:
        ensure_package(
            _entry(server.url("/pkg.zip")), home=home, offline=False, options=DownloadOptions(max_bytes=1000)
        )
    assert f"{len(PACKAGE)} bytes, above the cap of 1000" in info.value.reason
    assert info.value.remedy is not None and "max_bytes" in info.value.remedy
    _store_is_empty(home)


def test_offline_uses_only_the_cache_and_says_how_to_fill_it(home: Path, server: PackageServer) -> None:
    pinned = _entry(server.url("/pkg.zip"), package_sha256=PACKAGE_SHA)
    unpinned = _entry(server.url("/pkg.zip"))
    with pytest.raises(PackageDownloadError) as info:
        ensure_package(pinned, home=home)  # the `home` fixture sets MEDIGAN_ISO_OFFLINE=1
    assert "offline mode" in info.value.reason
    assert info.value.remedy is not None and "medigan-iso fetch 00001_DEMO" in info.value.remedy
    assert server.state.gets("/pkg.zip") == []
    online = ensure_package(unpinned, home=home, offline=False)
    assert ensure_package(pinned, home=home, offline=True) == online
    assert ensure_package(unpinned, home=home, offline=True) == online  # found through the link index
    assert len(server.state.gets("/pkg.zip")) == 1


def test_unsafe_archive_from_the_server_is_refused_and_not_kept(home: Path, server: PackageServer) -> None:
    server.state.files["/evil.zip"] = build_zip(
        [RawEntry(b"demo_pkg/__init__.py", b""), RawEntry(b"../x", b"x")]
    )
    with pytest.raises(UnsafeArchiveError) as info:
        ensure_package(_entry(server.url("/evil.zip")), home=home, offline=False)
    assert info.value.member == "../x"
    _store_is_empty(home)


def test_four_processes_fetching_one_package_download_it_once(home: Path, server: PackageServer) -> None:
    server.state.chunk_delay_s = 0.03  # ~1.5 s per download: the processes really overlap
    env = {k: v for k, v in os.environ.items() if k != "MEDIGAN_ISO_OFFLINE"}
    env.update(MEDIGAN_ISO_HOME=str(home), NO_PROXY="127.0.0.1,localhost")
    cmd = [
        sys.executable,
        "-m",
        "medigan_iso",
        "fetch",
        "--link",
        server.url("/pkg.zip"),
        "--sha256",
        PACKAGE_SHA,
    ]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err.decode()
        assert PACKAGE_SHA in out.decode()
    gets = server.state.gets("/pkg.zip")
    assert len(gets) == 1
    assert "Range" not in gets[0].headers
    assert [p.name for p in (home / "packages" / "trees").iterdir()] == [PACKAGE_SHA]


# --- local sources ---------------------------------------------------------------------------------


def test_local_zip_path_and_file_url_are_verified_and_extracted(home: Path, tmp_path: Path) -> None:
    archive = tmp_path / "pkg.zip"
    archive.write_bytes(PACKAGE)
    by_path = ensure_package(
        _entry(str(archive), package_sha256=PACKAGE_SHA, catalogue_dir=tmp_path), home=home
    )
    by_url = ensure_package(
        _entry(archive.as_uri(), package_sha256=PACKAGE_SHA, catalogue_dir=tmp_path), home=home
    )
    assert by_path == by_url
    assert (by_path.root / "big.bin").read_bytes() == BIG_WEIGHTS
    assert archive.read_bytes() == PACKAGE  # the source is left alone


def test_local_zip_with_wrong_hash_is_refused_and_the_source_kept(home: Path, tmp_path: Path) -> None:
    archive = tmp_path / "pkg.zip"
    archive.write_bytes(PACKAGE)
    with pytest.raises(PackageIntegrityError) as info:
        ensure_package(_entry(str(archive), package_sha256="1" * 64, catalogue_dir=tmp_path), home=home)
    assert info.value.actual == PACKAGE_SHA
    assert archive.is_file()
    _store_is_empty(home)


def test_relative_link_resolves_against_the_catalogue_dir(home: Path, tmp_path: Path) -> None:
    pkg_dir = tmp_path / "catalogue" / "models" / "demo_pkg"
    pkg_dir.mkdir(parents=True)
    (pkg_dir / "__init__.py").write_bytes(b"def generate(*a, **k):\n    return []\n")
    (pkg_dir / "weights.npy").write_bytes(b"w" * 100)
    (pkg_dir / "__pycache__").mkdir()
    (pkg_dir / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    digest = tree_sha256(pkg_dir)
    entry = _entry("models/demo_pkg", package_sha256=digest, catalogue_dir=tmp_path / "catalogue")
    pkg = ensure_package(entry, home=home, require_hashes=True)
    assert pkg.sha256 == digest
    assert pkg.root == home / "packages" / "trees" / digest
    assert sorted(p.name for p in pkg.root.iterdir()) == ["__init__.py", "weights.npy"]
    assert tree_sha256(pkg.root) == digest
    assert stat.S_IMODE(pkg.root.stat().st_mode) == 0o555


def test_directory_link_with_a_wrong_tree_hash_is_refused(home: Path, tmp_path: Path) -> None:
    pkg_dir = tmp_path / "demo_pkg"
    pkg_dir.mkdir()
    (pkg_dir / "__init__.py").write_text("")
    with pytest.raises(PackageIntegrityError) as info:
        ensure_package(_entry(str(pkg_dir), package_sha256="2" * 64, catalogue_dir=tmp_path), home=home)
    assert info.value.algorithm == "tree-sha256"
    assert info.value.actual == tree_sha256(pkg_dir)
    _store_is_empty(home)


def test_an_unpinned_directory_without_a_package_is_refused_before_anything_is_copied(
    home: Path, tmp_path: Path
) -> None:
    # issue 16: "package_link": "~" or "/" was copied whole into the package store, then refused
    not_a_package = tmp_path / "home-folder"
    (not_a_package / ".ssh").mkdir(parents=True)
    (not_a_package / ".ssh" / "id_rsa").write_text("key")
    (not_a_package / "big.bin").write_bytes(b"x" * 1_000_000)
    with pytest.raises(PackageLayoutError) as info:
        ensure_package(_entry(str(not_a_package), catalogue_dir=tmp_path), home=home)
    assert "no __init__.py" in info.value.message
    _store_is_empty(home)
    assert not any((home / "packages").rglob("id_rsa"))


def test_a_directory_over_the_size_cap_is_refused_and_nothing_kept(home: Path, tmp_path: Path) -> None:
    pkg_dir = tmp_path / "demo_pkg"
    pkg_dir.mkdir()
    (pkg_dir / "__init__.py").write_text("")
    for i in range(5):
        (pkg_dir / f"w{i}.bin").write_bytes(b"w" * 1000)
    limits = ExtractLimits(max_entries=3)
    with pytest.raises(PackageLayoutError, match="more than 3 files"):
        ensure_package(_entry(str(pkg_dir), catalogue_dir=tmp_path), home=home, limits=limits)
    _store_is_empty(home)


def test_missing_local_link_is_a_clear_error(home: Path, tmp_path: Path) -> None:
    with pytest.raises(PackageDownloadError) as info:
        ensure_package(_entry("models/nope", catalogue_dir=tmp_path), home=home)
    assert str(tmp_path / "models" / "nope") in info.value.reason
    assert info.value.remedy is not None and "catalogue's folder" in info.value.remedy


def test_local_link_from_a_remote_catalogue_is_refused_without_reading_it(home: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "id_rsa").write_text("key")
    for link in (str(secret), secret.as_uri(), "~/.ssh", "models/x"):
        with pytest.raises(PackageDownloadError) as info:
            ensure_package(_entry(link), home=home)  # catalogue_dir=None: the entry came from a URL
        assert "does not come from a catalogue file on this machine" in info.value.reason
        assert info.value.url == link
        assert info.value.remedy is not None and "fetch --link" in info.value.remedy
    _store_is_empty(home)


def test_unsupported_scheme_is_refused(home: Path) -> None:
    with pytest.raises(PackageDownloadError) as info:
        ensure_package(_entry("ftp://example.org/pkg.zip"), home=home)
    assert "unsupported scheme 'ftp'" in info.value.reason


def test_store_tree_is_the_archive_bytes_content_addressed(home: Path, tmp_path: Path) -> None:
    archive = tmp_path / "pkg.zip"
    archive.write_bytes(PACKAGE)
    pkg = ensure_package(_entry(str(archive), catalogue_dir=tmp_path), home=home)
    tree = home / "packages" / "trees" / PACKAGE_SHA
    with zipfile.ZipFile(archive) as zf:
        names = sorted(n for n in zf.namelist() if not n.endswith("/"))
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()) == names
    assert pkg.root.parent == tree
