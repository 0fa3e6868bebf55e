"""``medigan-iso list | search | info | validate`` through main(argv) and once through the console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medigan_iso.cli import main

# Catalogue counts and medigan 1.0 comparisons are about upstream entries: leave the demo models out.
pytestmark = pytest.mark.usefixtures("upstream_only")

DCGAN_MAMMOGRAPHY = ["00001_DCGAN_MMG_CALC_ROI", "00002_DCGAN_MMG_MASS_ROI", "00005_DCGAN_MMG_MASS_ROI"]


@pytest.fixture
def fixtures_config(shared_fixtures: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = shared_fixtures / "medigan_global.json"
    monkeypatch.setenv("MEDIGAN_ISO_CONFIG", str(path))
    return path


def _model_lines(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()[2:] if line.strip()]


def test_search_mammography_dcgan_prints_the_three_dcgan_mammography_models(
    fixtures_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    assert main(["search", "mammography", "dcgan"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["MODEL", "TITLE"]
    assert _model_lines(out) == DCGAN_MAMMOGRAPHY


def test_console_script_search_prints_the_three_models(fixtures_config: Path, home: Path) -> None:
    script = Path(sys.executable).with_name("medigan-iso")
    if not script.exists():
        found = shutil.which("medigan-iso")
        if found is None:
            pytest.skip("the medigan-iso console script is not installed here")
        script = Path(found)
    env = dict(os.environ, MEDIGAN_ISO_OFFLINE="1", MEDIGAN_ISO_CONFIG=str(fixtures_config))
    result = subprocess.run(
        [str(script), "search", "mammography", "dcgan"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert _model_lines(result.stdout) == DCGAN_MAMMOGRAPHY
    assert result.stderr == ""


def test_search_options_rank_and_json(fixtures_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "dcgan", "wgangp", "--operator", "or", "--rank", "FID", "--order", "DESC"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["MODEL", "FID", "TITLE"]
    assert _model_lines(out) == [
        "00018_WGANGP_XRAY_LUNG_NODULES",
        "00005_DCGAN_MMG_MASS_ROI",
        "00017_DCGAN_XRAY_LUNG_NODULES",
        "00002_DCGAN_MMG_MASS_ROI",
        "00001_DCGAN_MMG_CALC_ROI",
    ]
    assert out.splitlines()[2].split()[1] == "211.47"
    assert main(["search", "FID", "--keys", "--case-sensitive", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 22  # every model but 00022, whose performance has no FID key
    assert "00022_WGAN_CARDIAC_AGING" not in {item["model_id"] for item in data}
    assert data[0]["matched_terms"] == ["FID"]
    assert main(["search", "fid", "--keys", "--case-sensitive", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_search_without_matches_says_so(fixtures_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "unicorn"]) == 0
    assert capsys.readouterr().out == "no model matches 'unicorn' (operator AND)\n"


def test_list_prints_every_model(fixtures_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    lines = _model_lines(capsys.readouterr().out)
    assert len(lines) == 23 and lines[0] == "00001_DCGAN_MMG_CALC_ROI"
    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[18] == {
        "model_id": "00019_PGGAN_CHEST_XRAY",
        "type": "PGGAN",
        "title": data[18]["title"],
        "demo": False,
    }


def test_list_of_an_empty_catalogue_names_its_sources(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    assert capsys.readouterr().out == "no models in the catalogue (sources: none)\n"


def test_info_accepts_abbreviated_ids_and_config_flags(
    shared_fixtures: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(shared_fixtures / "medigan_global.json")
    assert main(["info", "19", "--config", config]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["model", "00019_PGGAN_CHEST_XRAY"]
    assert "image size    1024x1024x1" in out
    assert "sha256        (not pinned)" in out
    assert main(["info", "00019", "--config", config, "--offline", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_latent_vector_size"] == 1024


def test_unknown_model_is_one_error_line_and_exit_code_1(
    fixtures_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", "00024"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[0] == "medigan-iso: error: no model with id '00024' in the catalogue"
    assert "did you mean 00023_PIX2PIXHD_BREAST_DCEMRI" in captured.err


def test_broken_catalogue_is_one_error_line(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main(["list", "--config", str(broken)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        f"medigan-iso: error: catalogue source {broken}: is not valid JSON "
        "(line 1 column 2: Expecting property name enclosed in double quotes)"
    )
    assert "Traceback" not in err


def test_validate_reports_ok_and_violations(
    shared_fixtures: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = shared_fixtures / "medigan_global_2022.json"
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: OK, 15 model(s) valid (lenient)\n"
    assert main(["validate", str(path), "--strict"]) == 1
    out = capsys.readouterr().out
    # each of the 15 entries lacks package_sha256 and (strict since envs resolve as of a date)
    # dependencies_as_of
    assert out.splitlines()[0] == f"{path}: 30 violation(s) (strict):"
    assert "  00001_DCGAN_MMG_CALC_ROI: /execution: 'package_sha256' is a required property" in out
    assert "  00001_DCGAN_MMG_CALC_ROI: /execution: 'dependencies_as_of' is a required property" in out
    assert main(["validate", str(path), "--strict", "--json"]) == 1
    (report,) = json.loads(capsys.readouterr().out)
    assert report["mode"] == "strict" and report["models"] == 15 and len(report["violations"]) == 30


def test_validate_of_a_missing_file_is_an_error(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path / "nope.json")]) == 1
    assert "no such file or directory" in capsys.readouterr().err
