"""`medigan-iso env` with real catalogue ids: build, path, list, remove the env of a bundled demo model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medigan_iso.cli import main
from medigan_iso.errors import EnvNotBuiltError
from medigan_iso.generation import Session


@pytest.fixture
def catalogue_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    monkeypatch.delenv("MEDIGAN_ISO_CONFIG", raising=False)
    return home


def test_env_build_path_list_and_remove_a_catalogue_model(
    catalogue_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["env", "path", "demo-numpy"]) != 0  # nothing built yet: path never builds
    capsys.readouterr()
    assert main(["env", "build", "demo-numpy", "--online"]) == 0
    capsys.readouterr()
    assert main(["env", "path", "demo-numpy"]) == 0
    env_dir = Path(capsys.readouterr().out.strip())
    assert (env_dir / "bin" / "python").exists()
    assert env_dir.parent == catalogue_env / "envs"
    assert main(["env", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [env["path"] for env in listed] == [str(env_dir)]
    assert "demo-numpy" in listed[0]["models"]
    # The facade's install_dependencies=False finds the built env and does not build another one.
    with Session(install_dependencies=False, offline=True) as session:
        assert session.prepare("demo-numpy").env.path == env_dir
    assert main(["env", "remove", "demo-numpy"]) == 0
    assert not env_dir.exists()
    with Session(install_dependencies=False, offline=True) as session, pytest.raises(
        EnvNotBuiltError
    ) as info:
        session.prepare("demo-numpy")
    assert info.value.command == "medigan-iso env build demo-numpy"
