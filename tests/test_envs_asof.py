"""Dependencies as of a model's date, interpreters of its era, the import check and direct references.

Real uv against the real index with small packages whose upload dates are public facts (six 1.15.0 was
uploaded 2020-05-21, six 1.16.0 2021-05-05; msgpack 1.0.0 2020-02-17; numpy's first cp311 wheels came with
1.23.2 in August 2022), real env builds, a real sandboxed import check, and a hostile catalogue served
from 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from _interpreters import skip_without_python
from _wheelcraft import make_sdist, make_wheel, sha256_of

from medigan_iso.catalogue import load_catalogue
from medigan_iso.cli import main
from medigan_iso.envs import (
    EnvSpec,
    as_of_for,
    check_env,
    ensure_env,
    failed_checks,
    list_envs,
    parse_loose_date,
    resolve,
)
from medigan_iso.errors import DirectReferenceError, InterpreterNotFoundError


def _pins(lock: str) -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9._-]+)==([^\s\\]+)", lock, re.MULTILINE))


@pytest.fixture
def online(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MEDIGAN_ISO_OFFLINE", raising=False)
    return home


# --- dates -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12th May 2021", date(2021, 5, 12)),
        ("12th Sep 2021", date(2021, 9, 12)),
        ("Dec 2021", date(2021, 12, 31)),
        ("August 2022", date(2022, 8, 31)),
        ("September 2022", date(2022, 9, 30)),
        ("11.2023", date(2023, 11, 30)),
        ("2022", date(2022, 12, 31)),
        ("2021-05-12", date(2021, 5, 12)),
        ("02.2024", date(2024, 2, 29)),
        ("May 12, 2021", date(2021, 5, 12)),
        ("", None),
        ("soon", None),
        ("31st February 2021", None),
        (None, None),
    ],
)
def test_provided_dates_are_parsed_leniently_at_the_end_of_the_named_period(
    text: str | None, expected: date | None
) -> None:
    assert parse_loose_date(text) == expected


@dataclass(frozen=True)
class DatedEntry:
    model_id: str = "00099_DATED"
    dependencies: tuple[str, ...] = ()
    python_requires: str | None = None
    requirements_lock: str | None = None
    dependencies_as_of: str | None = None
    description: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)


def test_date_sources_first_found_wins() -> None:
    entry = DatedEntry(
        dependencies_as_of="2020-03-01",
        description={"provided_date": "Dec 2021"},
        selection={"year": 2019},
    )
    assert as_of_for(entry, override="2018-01-02").label == "2018-01-02"
    assert as_of_for(entry, override="latest").date is None
    assert as_of_for(entry, package_date=date(2021, 1, 1)).label == "2020-03-01"
    no_field = DatedEntry(description={"provided_date": "Dec 2021"}, selection={"year": 2019})
    assert as_of_for(no_field, package_date=date(2021, 1, 1)).source.startswith("the newest file")
    assert as_of_for(no_field).label == "2021-12-31"
    assert as_of_for(DatedEntry(selection={"year": "2019"})).label == "2019-12-31"
    undated = as_of_for(DatedEntry())
    assert undated.date is None and undated.label == "latest"
    with pytest.raises(ValueError, match="not a date"):
        as_of_for(entry, override="yesterday-ish")


def test_an_explicit_latest_is_not_reported_as_a_missing_date(caplog: pytest.LogCaptureFixture) -> None:
    from medigan_iso.envs.spec import _normalise_spec

    with caplog.at_level(logging.INFO, logger="medigan_iso.envs"):
        _normalise_spec(DatedEntry(dependencies_as_of="latest"))
    assert "has no date" not in caplog.text
    assert "00099_DATED: the entry asks for 'latest'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medigan_iso.envs"):
        _normalise_spec(DatedEntry())
    assert "00099_DATED: the entry has no date" in caplog.text


def test_strict_catalogue_mode_requires_dependencies_as_of(tmp_path: Path) -> None:
    from medigan_iso.catalogue import validate_catalogue
    from medigan_iso.errors import CatalogueValidationError

    entry = {
        "execution": {
            "package_name": "demo",
            "package_link": "https://example.org/demo.zip",
            "model_name": "weights",
            "extension": ".npz",
            "image_size": [64, 64],
            "dependencies": ["numpy"],
            "generate_method": {"name": "generate"},
            "package_sha256": "0" * 64,
        },
        "selection": {"height": 64, "width": 64},
    }
    with pytest.raises(CatalogueValidationError, match="dependencies_as_of"):
        validate_catalogue({"00100_X": entry}, source="new.json", strict=True)
    entry["execution"]["dependencies_as_of"] = "2022-13-01"
    with pytest.raises(CatalogueValidationError, match="dependencies_as_of"):
        validate_catalogue({"00100_X": entry}, source="new.json", strict=True)
    entry["execution"]["dependencies_as_of"] = "2022-12-01"
    validate_catalogue({"00100_X": entry}, source="new.json", strict=True)


# --- resolution as of a date (real uv, real index) ------------------------------------------------------


@contextmanager
def _era(python: str) -> Iterator[None]:
    """Resolutions of an old date need an interpreter of that era (numpy of 2021 has wheels up to cp39, of
    mid-2019 up to cp37): on a machine with only a newer Python they skip, and fail if one is installed."""
    try:
        yield
    except InterpreterNotFoundError as exc:
        skip_without_python(python, exc)


def test_resolution_holds_dependencies_back_to_the_date_but_not_the_runners_msgpack(online: Path) -> None:
    with _era("3.9"):
        dated = resolve(EnvSpec(["six"], as_of="2021-01-01", name="six-2021"))
    pins = _pins(dated.lock)
    assert pins["six"] == "1.15.0"
    # msgpack>=1.0 did not exist in mid-2019; the runner's own requirement is not held back
    with _era("3.7"):
        old = resolve(EnvSpec(["six"], as_of="2019-06-30", name="six-2019"))
    assert _pins(old.lock)["six"] == "1.12.0"
    assert int(_pins(old.lock)["msgpack"].split(".")[0]) >= 1
    # dates before setuptools dropped pkg_resources get setuptools of their era
    assert int(pins["setuptools"].split(".")[0]) < 81
    latest = resolve(EnvSpec(["six"], as_of="latest", name="six-latest"))
    assert tuple(map(int, _pins(latest.lock)["six"].split("."))) >= (1, 17, 0)
    assert "setuptools" not in _pins(latest.lock)
    assert dated.as_of.label == "2021-01-01" and latest.as_of.label == "latest"


def test_an_exact_pin_is_not_held_back_and_a_local_wheel_stays_usable(online: Path, tmp_path: Path) -> None:
    # six 1.16.0 was uploaded after the cut-off: the exact pin names it anyway, and resolution takes it
    with _era("3.9"):
        pinned = resolve(EnvSpec(["six==1.16.0"], as_of="2021-01-01", name="six-pinned"))
    assert _pins(pinned.lock)["six"] == "1.16.0"
    assert int(_pins(pinned.lock)["setuptools"].split(".")[0]) < 81  # the rest is still of the era
    links = tmp_path / "links"
    make_wheel(links, "localpin", "3.0", {"localpin.py": "VALUE = 3\n"})
    spec = EnvSpec(["localpin==3.0", "six"], as_of="2021-01-01", name="localpin")
    resolution = resolve(spec, find_links=[links])
    assert _pins(resolution.lock)["localpin"] == "3.0"
    assert _pins(resolution.lock)["six"] == "1.15.0"


def test_the_date_is_in_the_env_key_the_stamp_and_env_list(online: Path) -> None:
    with _era("3.9"):
        older = ensure_env(EnvSpec(["six"], as_of="2021-01-01", name="six-2021"))
    newer = ensure_env(EnvSpec(["six"], as_of="2021-06-30", name="six-mid-2021"))
    assert older.key != newer.key
    assert (older.as_of, newer.as_of) == ("2021-01-01", "2021-06-30")
    stamp = json.loads((older.path / "medigan-iso-stamp.json").read_text())
    assert stamp["as_of"] == {"date": "2021-01-01", "source": "execution.dependencies_as_of"}
    listed = {info.key: info.as_of for info in list_envs()}
    assert listed[older.key] == "2021-01-01"


def test_an_era_without_wheels_for_the_host_python_picks_an_older_interpreter(online: Path) -> None:
    if not any(Path("~/.pyenv/versions").expanduser().glob("3.10*/bin/python3")) and not shutil.which(
        "python3.10"
    ):
        pytest.skip("no Python 3.10 on this machine (pyenv's versions folder or PATH)")
    resolution = resolve(EnvSpec(["numpy"], as_of="2022-06-30", name="numpy-mid-2022"))
    numpy = tuple(map(int, _pins(resolution.lock)["numpy"].split(".")[:2]))
    assert numpy <= (1, 23)
    # numpy of mid-2022 has no wheel for 3.11 or newer: the chosen interpreter is older, never a source build
    assert tuple(map(int, resolution.interpreter.minor.split("."))) <= (3, 10)


# --- the import check ------------------------------------------------------------------------------------


def test_env_check_imports_every_declared_dependency_and_names_the_failing_line(
    online: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    links = tmp_path / "links"
    make_wheel(links, "fine-mod", "1.0", {"fine_mod/__init__.py": "X = 1\n"}, top_level="fine_mod\n")
    make_wheel(
        links,
        "broken-mod",
        "1.0",
        {"broken_mod/__init__.py": "raise ImportError('broken on purpose: np.sctypes was removed')\n"},
    )
    spec = EnvSpec(["fine-mod==1.0", "broken-mod==1.0"], name="check-me")
    env = ensure_env(spec, find_links=[links])
    rows = {row.distribution: row for row in check_env(env)}
    assert rows["fine-mod"].ok and rows["fine-mod"].imports == ("fine_mod",)
    assert rows["msgpack"].ok and rows["numpy"].ok
    broken = rows["broken-mod"]
    assert not broken.ok and broken.imports == ("broken_mod",)  # import names read from RECORD
    assert "broken on purpose" in (broken.error or "")
    assert [r.distribution for r in failed_checks(list(rows.values()))] == ["broken-mod"]
    code = main(
        [
            *("env", "build", "--with", "fine-mod==1.0", "--with", "broken-mod==1.0", "--name", "check-me"),
            *("--find-links", str(links), "--check"),
        ]
    )
    out = capsys.readouterr()
    assert code == 1
    assert "broken on purpose" in out.out and "fine_mod" in out.out
    assert "failed the import check" in out.err
    assert main(["env", "check", "--with", "fine-mod==1.0", "--name", "ok-env", "--no-build"]) != 0
    assert main(["env", "build", "--with", "fine-mod==1.0", "--find-links", str(links), "--check"]) == 0


# --- no dependency code on the host (16.1) -------------------------------------------------------------


PTH_PAYLOAD = "import os; open({marker!r}, 'a').write('pth ran in pid %d\\n' % os.getpid())\n"


def test_a_hostile_pth_never_runs_on_the_host_during_build_or_runner_refresh(
    online: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pth-ran-on-host"
    links = tmp_path / "links"
    make_wheel(
        links,
        "evil-pth",
        "1.0",
        {"evil_pth.pth": PTH_PAYLOAD.format(marker=str(marker)), "evil_pth_mod.py": "X = 1\n"},
    )
    env = ensure_env(EnvSpec(["evil-pth==1.0"], name="evil-pth"), find_links=[links])
    assert (env.path / "lib" / f"python{'.'.join(env.python_version.split('.')[:2])}").is_dir()
    assert not marker.exists(), marker.read_text()
    # force a runner refresh (it recompiles the runner copy with the env's interpreter)
    stamp_path = env.path / "medigan-iso-stamp.json"
    stamp = json.loads(stamp_path.read_text())
    stamp["runner_sha256"] = "0" * 64
    stamp_path.write_text(json.dumps(stamp))
    again = ensure_env(EnvSpec(["evil-pth==1.0"], name="evil-pth"), find_links=[links])
    assert again.key == env.key
    assert json.loads(stamp_path.read_text())["runner_sha256"] != "0" * 64
    assert not marker.exists(), marker.read_text()
    # control: the same interpreter without -S does run the .pth (so the assertions above can fail)
    import subprocess

    subprocess.run([str(env.python), "-I", "-c", "pass"], check=True)
    assert marker.exists()


# --- direct references (16.2) ------------------------------------------------------------------------


def _entry(dependencies: list[str]) -> dict[str, Any]:
    return {
        "execution": {
            "package_name": "demo",
            "package_link": "https://example.org/demo.zip",
            "model_name": "weights",
            "extension": ".npz",
            "dependencies": dependencies,
            "generate_method": {"name": "generate"},
        },
        "selection": {"year": 2024},
    }


@pytest.fixture
def catalogue_server() -> Any:
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield files, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_remote_catalogue_cannot_make_the_host_install_a_local_file(
    online: Path, tmp_path: Path, catalogue_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_BUNDLED", "0")
    marker = tmp_path / "installed"
    wheel = make_wheel(tmp_path / "evil", "evil", "1.0", {"evil.py": f"open({str(marker)!r}, 'w')\n"})
    files, base = catalogue_server
    dependency = f"evil @ {wheel.as_uri()}#sha256={sha256_of(wheel)}"
    files["/global.json"] = json.dumps({"00100_HOSTILE": _entry(["numpy", dependency])}).encode()
    catalogue = load_catalogue([base + "/global.json"], official_url="")
    entry = catalogue.resolve("00100_HOSTILE")
    with pytest.raises(DirectReferenceError) as info:
        ensure_env(entry)
    message = str(info.value)
    assert "00100_HOSTILE" in message and "evil @ file://" in message and "not a local file" in message
    assert not (online / "envs").exists() or not any((online / "envs").glob("[0-9a-f]*"))


def test_a_local_catalogue_may_use_a_direct_reference_only_when_pinned_by_hash(
    online: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_BUNDLED", "0")
    wheel = make_wheel(tmp_path / "wheels", "localref", "1.0", {"localref.py": "X = 1\n"})
    unpinned = f"localref @ {wheel.as_uri()}"
    path = tmp_path / "global.json"
    path.write_text(json.dumps({"00101_LOCAL": _entry([unpinned])}))
    entry = load_catalogue([path], official_url="").resolve("00101_LOCAL")
    with pytest.raises(DirectReferenceError, match="not pinned by hash"):
        resolve(entry)
    path.write_text(json.dumps({"00101_LOCAL": _entry([f"{unpinned}#sha256={sha256_of(wheel)}"])}))
    entry = load_catalogue([path], official_url="").resolve("00101_LOCAL")
    lock = resolve(entry, as_of="latest").lock
    assert "localref @ file://" in lock


# --- confined builds (16: env builds run confined where bubblewrap works) ----------------------------------

HOSTILE_SETUP = """
import json, os
from setuptools import setup
evidence = {{"home": os.environ.get("HOME")}}
try:
    with open({marker!r}, "w") as handle:
        handle.write("the build script wrote to the host")
    evidence["wrote_host"] = True
except Exception as exc:
    evidence["wrote_host"] = repr(exc)
try:
    with open({secret!r}) as handle:
        evidence["secret"] = handle.read()
except Exception as exc:
    evidence["secret"] = None
try:
    evidence["root_home"] = os.listdir("/root")
except Exception as exc:
    evidence["root_home"] = None
with open("canary_evidence.py", "w") as handle:
    handle.write("EVIDENCE = %r\\n" % json.dumps(evidence))
setup(name="hostile-sdist", version="1.0", py_modules=["canary_evidence"])
"""


def _hostile_sdist(directory: Path, marker: Path, secret: Path) -> Path:
    return make_sdist(
        directory, "hostile-sdist", "1.0", HOSTILE_SETUP.format(marker=str(marker), secret=str(secret))
    )


@pytest.mark.bwrap
def test_an_sdist_build_script_runs_confined_no_host_writes_no_home(
    online: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medigan_iso.sandbox import probe_host

    if probe_host().bwrap is None:
        pytest.skip("bubblewrap cannot create namespaces here")
    monkeypatch.setenv("MEDIGAN_ISO_SANDBOX", "auto")
    marker = tmp_path / "host-marker"
    secret = tmp_path / "fake-home" / ".netrc"
    secret.parent.mkdir()
    secret.write_text("machine index login me password hunter2")
    links = _hostile_sdist(tmp_path / "links", marker, secret).parent
    env = ensure_env(EnvSpec(["hostile-sdist==1.0"], name="hostile-sdist"), find_links=[links])
    module = next(env.path.glob("lib/python*/site-packages/canary_evidence.py"))
    evidence = json.loads(re.search(r"EVIDENCE = '(.*)'", module.read_text())[1])  # type: ignore[index]
    assert not marker.exists()  # it may have written into the sandbox's private /tmp, never the host's
    assert evidence["secret"] is None
    # /root shows at most the empty mount points leading to what is bound (the uv cache, an interpreter)
    visible = set(evidence["root_home"] or ())
    assert visible <= {".cache", ".pyenv", ".local"}, visible
    assert evidence["home"] == "/tmp/home"
    # control: with the sandbox off the same build script writes to the host and reads the secret
    monkeypatch.setenv("MEDIGAN_ISO_SANDBOX", "off")
    monkeypatch.setenv("MEDIGAN_ISO_UV_CACHE", str(tmp_path / "uv-open"))  # uv cached the built wheel
    ensure_env(
        EnvSpec(["hostile-sdist==1.0"], name="hostile-sdist-open"), home=tmp_path / "h2", find_links=[links]
    )
    assert marker.exists()


def test_shared_bytecode_never_lands_in_a_wheels_data_folder(online: Path, tmp_path: Path) -> None:
    # uv installs <dist>.data/ from its cached copy of the wheel and refuses files RECORD does not list: a
    # .pyc compiled there made the next env with this wheel fail to install (seen: websocket-client 1.2.1's
    # scripts, networkx 2.8's example files)
    links = tmp_path / "links"
    make_wheel(
        links,
        "datafiles",
        "1.0",
        {
            "datafiles.py": "X = 1\n",
            "datafiles-1.0.data/scripts/datafiles-tool.py": "print('tool')\n",
            "datafiles-1.0.data/data/share/doc/datafiles/example.py": "print('example')\n",
        },
    )
    first = ensure_env(EnvSpec(["datafiles==1.0"], name="datafiles-a"), find_links=[links])
    second = ensure_env(EnvSpec(["datafiles==1.0", "six"], name="datafiles-b"), find_links=[links])
    assert first.key != second.key
    assert (second.path / "share" / "doc" / "datafiles" / "example.py").is_file()


def test_info_shows_the_as_of_date_and_its_source(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_BUNDLED", "0")
    catalogue = Path(__file__).parent / "data" / "medigan_global.json"
    assert main(["info", "22", "--config", str(catalogue), "--offline"]) == 0
    out = capsys.readouterr().out
    # the package is not in this fresh store: a build fetches it first and its newest file date wins
    pending = "; the package is not fetched yet: a build uses its newest file date instead"
    assert re.search(
        r"^as of\s+2022-12-31 \(from description\.provided_date '2022'\)" + re.escape(pending),
        out,
        re.MULTILINE,
    )
    assert main(["info", "2", "--config", str(catalogue), "--offline", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dependencies_as_of"].startswith("2019-12-31 (from selection.year 2019)" + pending)


def test_doctor_says_whether_env_builds_are_confined(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from medigan_iso.sandbox import probe_host

    monkeypatch.setenv("MEDIGAN_ISO_SANDBOX", "off")
    assert main(["doctor"]) == 0
    assert "env builds: NOT confined (sandbox policy off)" in capsys.readouterr().out
    monkeypatch.setenv("MEDIGAN_ISO_SANDBOX", "auto")
    assert main(["doctor", "--json"]) == 0
    builds = json.loads(capsys.readouterr().out)["env_builds"]
    assert builds["confined"] is (probe_host().bwrap is not None)


def test_a_dated_strict_resolution_is_wheels_only_without_clashing_flags(online: Path) -> None:
    with _era("3.9"):
        env = ensure_env(EnvSpec(["six"], as_of="2021-01-01", name="six-strict"), strict=True)
    assert env.as_of == "2021-01-01"
    assert _pins(env.lock_path.read_text())["six"] == "1.15.0"


def test_a_conflict_that_no_interpreter_changes_is_a_resolution_error(online: Path) -> None:
    from medigan_iso.errors import ResolutionError

    with _era("3.9"), pytest.raises(ResolutionError) as info:
        resolve(EnvSpec(["six>=99"], as_of="2021-01-01", name="impossible"))
    assert not isinstance(info.value, InterpreterNotFoundError)
    assert "six" in info.value.explanation
