"""The built wheel ships medigan_iso/schemas/; an installed copy finds them via importlib.resources."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from uv import find_uv_bin

REPO_ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
from importlib import resources
import medigan_iso
from medigan_iso.catalogue import load_catalogue, load_schema, validate_catalogue
root = resources.files("medigan_iso")
names = sorted(p.name for p in (root / "schemas").iterdir())
schema = load_schema("model_entry.schema.json")
catalogue = load_catalogue([], offline=True, official_url="")
print(json.dumps({"file": medigan_iso.__file__, "schemas": names, "title": schema["title"],
                  "sources": list(catalogue.sources)}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (REPO_ROOT / "pyproject.toml").is_file():
        pytest.skip("the source tree is not beside the tests (running from an installed copy)")
    uv = find_uv_bin()  # uv is a dependency: its absence is a failure, not a reason to skip
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(out), str(REPO_ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("medigan_iso-*.whl")
    return built


def test_wheel_contains_schemas_bundled_catalogue_and_runner(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "medigan_iso/schemas/catalogue.schema.json" in names
    assert "medigan_iso/schemas/model_entry.schema.json" in names
    assert "medigan_iso/data/bundled_catalogue.json" in names
    assert "medigan_iso_runner/protocol.py" in names
    assert not any(name.startswith("schemas/") for name in names)


def test_unpacked_wheel_finds_its_schemas_through_importlib_resources(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {"MEDIGAN_ISO_HOME": str(tmp_path / "home"), "PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    # -S keeps this interpreter's site-packages (and any installed medigan_iso) off the path, but the
    # dependencies are needed: add them after the unpacked wheel.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    env["PYTHONPATH"] = ":".join([str(site), *deps])
    result = subprocess.run(
        [sys.executable, "-S", "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert Path(probe["file"]).is_relative_to(site)
    assert probe["schemas"] == ["catalogue.schema.json", "model_entry.schema.json"]
    assert probe["title"] == "medigan model entry"
    assert probe["sources"] == ["<bundled bundled_catalogue.json>"]


def test_editable_install_finds_its_schemas(tmp_path: Path) -> None:
    # Issue 19: the schemas were force-included into the wheel only, so `pip install -e .` lacked them.
    if not (REPO_ROOT / "pyproject.toml").is_file():
        pytest.skip("the source tree is not beside the tests (running from an installed copy)")
    uv = find_uv_bin()
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    subprocess.run([uv, "venv", "--python", sys.executable, str(venv)], check=True, capture_output=True)
    installed = subprocess.run(
        [uv, "pip", "install", "--python", str(python), "-e", str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    env = {"MEDIGAN_ISO_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [str(python), "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert Path(probe["file"]) == REPO_ROOT / "medigan_iso" / "__init__.py"  # the checkout, not a copy
    assert probe["schemas"] == ["catalogue.schema.json", "model_entry.schema.json"]
    assert probe["title"] == "medigan model entry"
