"""One as-of date everywhere: what ``info``, ``env list``, the explorer and ``Session.dependencies_as_of``
show is the date (and source) the build uses, and ``generate`` (a Session) builds the env ``env build``
would (issue 10 follow-up).

The entry has a ``description.provided_date`` (2024, so 2024-12-31) and a local zip whose newest member is
dated 2025-06-30: the package's date outranks the description's, in the build and in what is shown. Real
catalogue file, real package store, real uv env and runner.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _model_fixtures import write_numpy_zoo, zoo_execution

from medigan_iso import Session
from medigan_iso.cli import main

LOCAL_ID = "asof-zoo"
REMOTE_ID = "asof-remote"
PACKAGE_DAY = (2025, 6, 30)
SHOWN = "2025-06-30 (from the newest file in the model package)"


def _entry(package_link: str, package_sha256: str) -> dict[str, object]:
    return {
        "execution": zoo_execution(package_link, package_sha256),
        "selection": {"modality": ["test"], "tags": ["zoo"], "performance": {"FID": 1.0}},
        "description": {"title": "as-of zoo", "provided_date": "2024"},
    }


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    source = write_numpy_zoo(tmp_path / "src" / "zoo")
    catalogue_dir = tmp_path / "catalogue"
    (catalogue_dir / "models").mkdir(parents=True)
    archive = catalogue_dir / "models" / "zoo.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                member = zipfile.ZipInfo(
                    f"zoo/{path.relative_to(source)}", date_time=(*PACKAGE_DAY, 12, 0, 0)
                )
                zf.writestr(member, path.read_bytes())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    catalogue = {
        LOCAL_ID: _entry("models/zoo.zip", digest),
        # never fetched here: nothing listens on port 9 and nothing may try
        REMOTE_ID: _entry("http://127.0.0.1:9/zoo.zip", "0" * 64),
    }
    path = catalogue_dir / "catalogue.json"
    path.write_text(json.dumps(catalogue), encoding="utf-8")
    monkeypatch.setenv("MEDIGAN_ISO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDIGAN_ISO_CONFIG", str(path))
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    monkeypatch.delenv("MEDIGAN_ISO_OFFLINE", raising=False)
    yield tmp_path


def _info_as_of(model_id: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["info", model_id]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("as of")]
    return line.split("as of", 1)[1].strip()


def test_info_the_explorer_env_list_and_the_build_agree_on_the_package_date(
    world: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medigan_iso.explore.service import Explorer

    assert _info_as_of(LOCAL_ID, capsys) == SHOWN
    with Session(offline=False) as session:
        assert session.dependencies_as_of(LOCAL_ID) == SHOWN  # before anything is fetched or built
        session.generate(LOCAL_ID, 1, seed=1)
        assert session.dependencies_as_of(LOCAL_ID) == SHOWN  # now read from the env's stamp
        assert Explorer(session).card(LOCAL_ID)["dependencies_as_of"] == SHOWN
        built = Path(session.status(LOCAL_ID)["env"]["path"])
    assert _info_as_of(LOCAL_ID, capsys) == SHOWN  # and with the package in the store
    assert main(["env", "list", "--json"]) == 0
    (env,) = json.loads(capsys.readouterr().out)
    assert (env["as_of"], env["as_of_source"]) == ("2025-06-30", "the newest file in the model package")
    # `env path` looks the env up the way `env build` makes it: the env generate built is that env
    assert main(["env", "path", LOCAL_ID]) == 0
    assert Path(capsys.readouterr().out.strip()) == built


def test_info_says_when_an_unfetched_package_may_still_change_the_date(
    world: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = _info_as_of(REMOTE_ID, capsys)
    assert shown.startswith(
        "2024-12-31 (from description.provided_date '2024'); the package is not fetched yet"
    )
    assert "medigan-iso fetch MODEL" in shown
    with Session(offline=False, as_of="2023-01-31") as session:  # an explicit date outranks the package
        assert session.dependencies_as_of(REMOTE_ID) == "2023-01-31 (from --as-of)"
