"""Start-up of the package and the CLI (issue 17): what ``import medigan_iso``, ``--version`` and ``list``
load, the command -> group map, and the catalogue validation cache. Measured figures live in
benchmarks/bench_startup.py; here only what is imported is checked (no wall-clock assertions)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import medigan_iso
from medigan_iso.catalogue import validate_catalogue
from medigan_iso.cli import _COMMAND_MODULES, _command_groups, build_parser
from medigan_iso.errors import CatalogueValidationError

HEAVY = ("numpy", "requests", "jsonschema", "medigan_iso.generation", "medigan_iso.envs")

PROBE = """
import json, sys
from medigan_iso.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = {heavy!r}
print(json.dumps({{"code": code, "loaded": sorted(m for m in heavy if m in sys.modules)}}))
"""


def run_cli(args: list[str], home: Path) -> dict[str, object]:
    env = dict(os.environ, MEDIGAN_ISO_HOME=str(home), MEDIGAN_ISO_CATALOGUE_URL="", MEDIGAN_ISO_OFFLINE="1")
    env.pop("MEDIGAN_ISO_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_importing_the_package_loads_no_heavy_module() -> None:
    code = f"import sys, medigan_iso; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_public_name_still_resolves() -> None:
    for name in medigan_iso.__all__:
        assert getattr(medigan_iso, name) is not None, name
    assert medigan_iso.Session.__module__ == "medigan_iso.generation"
    assert set(medigan_iso.__all__) <= set(dir(medigan_iso))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchError'"):
        _ = medigan_iso.NoSuchError  # type: ignore[attr-defined]


def test_version_imports_nothing_heavy(tmp_path: Path) -> None:
    result = run_cli(["--version"], tmp_path)
    assert result == {"code": 0, "loaded": []}


def test_list_validates_once_then_needs_neither_jsonschema_nor_numpy(tmp_path: Path) -> None:
    first = run_cli(["list"], tmp_path)
    assert first["code"] == 0 and "jsonschema" in first["loaded"]  # the first load validates
    second = run_cli(["list"], tmp_path)
    assert second == {"code": 0, "loaded": []}  # same content: validated by its digest, nothing heavy


def commands(parser: argparse.ArgumentParser) -> set[str]:
    return {
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }


def test_each_mapped_command_is_registered_by_its_group_alone() -> None:
    full = commands(build_parser())
    assert set(_COMMAND_MODULES) <= full
    assert len(_command_groups()) > 1
    for command in _COMMAND_MODULES:
        alone = commands(build_parser([command]))
        assert command in alone and alone < full, command
    # an unknown command or none builds everything (argparse then reports the error or the help)
    assert commands(build_parser(["no-such-command"])) == full
    assert commands(build_parser(["-v"])) == full
    assert commands(build_parser(["--version"])) == set()


def test_the_validation_cache_keeps_only_valid_content(tmp_path: Path) -> None:
    bundled = Path(medigan_iso.__file__).parent / "data" / "bundled_catalogue.json"
    model_id, entry = next(iter(json.loads(bundled.read_text(encoding="utf-8")).items()))
    good = {model_id: entry}
    bad = json.loads(json.dumps(good))
    bad[model_id]["execution"]["python_requires"] = "not a specifier"
    cache = tmp_path / "validated"
    for _ in range(2):  # refused every time: an invalid catalogue leaves no marker
        with pytest.raises(CatalogueValidationError, match="PEP 440"):
            validate_catalogue(bad, source="bad", cache_dir=cache)
        assert not cache.exists() or not any(cache.iterdir())
    validate_catalogue(good, source="good", cache_dir=cache)
    markers = list(cache.iterdir())
    assert len(markers) == 1
    validate_catalogue(good, source="good", cache_dir=cache)
    assert list(cache.iterdir()) == markers
    with pytest.raises(CatalogueValidationError):  # changed content is validated again, not trusted
        validate_catalogue(bad, source="bad", cache_dir=cache)
