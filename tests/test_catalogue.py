"""Catalogue: schemas (lenient and strict), entries, id resolution, local sources and their errors."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from medigan_iso.catalogue import (
    Catalogue,
    ModelEntry,
    load_catalogue,
    load_schema,
    split_config_env,
    thaw,
    validate_catalogue,
)
from medigan_iso.errors import CatalogueSourceError, CatalogueValidationError, UnknownModelError

# The upstream catalogues are kept in tests/data/ (issue 19): every clone runs these tests.
FIXTURES_DIR = Path(__file__).resolve().parent / "data"

# Catalogue counts and medigan 1.0 comparisons are about upstream entries: leave the demo models out.
pytestmark = pytest.mark.usefixtures("upstream_only")
SHA = "ab" * 32


def _fixture_ids(name: str) -> list[str]:
    return list(json.loads((FIXTURES_DIR / name).read_text()))


def _entry(shared_fixtures: Path, model_id: str, name: str = "medigan_global.json") -> dict[str, Any]:
    data = json.loads((shared_fixtures / name).read_text())
    entry: dict[str, Any] = data[model_id]
    return entry


def _strict_entry() -> dict[str, Any]:
    return {
        "execution": {
            "package_name": "demo",
            "package_link": "https://example.org/demo.zip",
            "model_name": "weights",
            "extension": ".npz",
            "image_size": [64, 64],
            "dependencies": ["numpy>=1.24", 'pillow; python_version >= "3.8"'],
            "generate_method": {"name": "generate", "args": {"base": [], "custom": {"scale": 2}}},
            "package_sha256": SHA,
            "dependencies_as_of": "2026-11-30",
        },
        "selection": {"height": 64, "width": 64, "modality": ["MRI"]},
        "description": {"title": "demo"},
    }


@pytest.mark.parametrize("model_id", _fixture_ids("medigan_global.json"))
def test_lenient_schema_accepts_upstream_entry(shared_fixtures: Path, model_id: str) -> None:
    entry = _entry(shared_fixtures, model_id)
    validate_catalogue({model_id: entry}, source="medigan_global.json")


@pytest.mark.parametrize("model_id", _fixture_ids("medigan_global_2022.json"))
def test_lenient_schema_accepts_2022_entry(shared_fixtures: Path, model_id: str) -> None:
    entry = _entry(shared_fixtures, model_id, "medigan_global_2022.json")
    validate_catalogue({model_id: entry}, source="medigan_global_2022.json")


def test_both_upstream_catalogues_load_whole_with_zero_errors(shared_fixtures: Path, home: Path) -> None:
    catalogue = load_catalogue(
        [shared_fixtures / "medigan_global_2022.json", shared_fixtures / "medigan_global.json"]
    )
    assert len(catalogue) == 24  # 23 current ids plus the 2022-only 00004_PIX2PIX_MASKTOMASS_...
    assert catalogue.ids()[0] == "00001_DCGAN_MMG_CALC_ROI"


def test_strict_mode_requires_sha256_of_every_upstream_entry(shared_fixtures: Path) -> None:
    data = json.loads((shared_fixtures / "medigan_global.json").read_text())
    with pytest.raises(CatalogueValidationError) as info:
        validate_catalogue(data, source="global.json", strict=True)
    err = info.value
    assert err.strict is True
    assert err.model_ids == sorted(data)
    assert ("00001_DCGAN_MMG_CALC_ROI", "/execution", "'package_sha256' is a required property") in (
        err.violations
    )
    # 00021 writes its image size as strings, which strict mode refuses
    assert ("00021_CYCLEGAN_BRAIN_MRI_T1_T2", "/execution/image_size/0") in {
        (m, p) for m, p, _ in err.violations
    }
    assert "(strict mode)" in str(err)


def test_strict_mode_accepts_a_complete_contribution() -> None:
    validate_catalogue({"00100_DEMO": _strict_entry()}, source="new.json", strict=True)


@pytest.mark.parametrize("link", ["models/demo_numpy", "demo", "https://zenodo.org/records/1/files/x.zip"])
def test_strict_mode_accepts_https_and_relative_directory_links(link: str) -> None:
    entry = _strict_entry()
    entry["execution"]["package_link"] = link
    validate_catalogue({"00100_DEMO": entry}, source="new.json", strict=True)


@pytest.mark.parametrize(
    "link", ["http://example.org/x.zip", "/abs/models/demo", "../models/demo", "models/../../x", "file:///x"]
)
def test_strict_mode_rejects_other_links(link: str) -> None:
    entry = _strict_entry()
    entry["execution"]["package_link"] = link
    with pytest.raises(CatalogueValidationError) as info:
        validate_catalogue({"00100_DEMO": entry}, source="new.json", strict=True)
    assert [(m, p) for m, p, _ in info.value.violations] == [("00100_DEMO", "/execution/package_link")]
    assert "https:// URL, or a relative directory path" in str(info.value)


def test_strict_violations_are_all_reported_at_once_with_their_json_paths() -> None:
    entry = _strict_entry()
    entry["execution"]["image_size"] = [64.5, "64"]
    entry["execution"]["dependencies"] = ["numpy>=1.24", "torch >>2", "-e git+https://x"]
    del entry["execution"]["package_sha256"]
    entry["selection"]["height"] = 64.5
    with pytest.raises(CatalogueValidationError) as info:
        validate_catalogue({"00100_DEMO": entry}, source="new.json", strict=True)
    paths = {p for _, p, _ in info.value.violations}
    assert paths == {
        "/execution",
        "/execution/image_size/0",
        "/execution/image_size/1",
        "/execution/dependencies/1",
        "/execution/dependencies/2",
        "/selection/height",
    }
    assert info.value.model_ids == ["00100_DEMO"]
    message = str(info.value)
    assert "00100_DEMO: /execution/dependencies/1: not a PEP 508 requirement" in message
    assert "new.json: " in message


def test_lenient_violations_name_every_model_and_path() -> None:
    good = _strict_entry()
    missing = copy.deepcopy(good)
    del missing["execution"]["package_name"]
    missing["execution"]["image_size"] = ["abc"]
    missing["execution"]["python_requires"] = "3.8"
    data = {"00001_GOOD": good, "00002_MISSING": missing, "00003_LIST": [1, 2]}
    with pytest.raises(CatalogueValidationError) as info:
        validate_catalogue(data, source="cat.json")
    err = info.value
    assert err.source == "cat.json"
    assert err.model_ids == ["00002_MISSING", "00003_LIST"]
    assert err.violations == [
        ("00002_MISSING", "/execution", "'package_name' is a required property"),
        (
            "00002_MISSING",
            "/execution/image_size/0",
            "'abc' is not valid under any of the given schemas "
            "(expected a positive integer, or (lenient mode) a string of digits)",
        ),
        ("00002_MISSING", "/execution/python_requires", err.violations[2][2]),
        ("00003_LIST", "/", "[1, 2] is not of type 'object'"),
    ]
    assert err.violations[2][2].startswith("not a PEP 440 version specifier")
    assert "(lenient mode)" in str(err)
    assert "medigan-iso validate" in str(err)


def test_execution_extensions_are_optional_and_typed() -> None:
    entry = _strict_entry()
    entry["execution"].update(
        python_requires=">=3.8,<3.12",
        requirements_lock="numpy==1.26.4 --hash=sha256:" + "0" * 64,
        sandbox={"network": False},
        package_md5="md5:" + "0" * 32,
    )
    validate_catalogue({"00100_DEMO": entry}, source="x", strict=True)
    entry["execution"]["sandbox"] = "off"
    entry["execution"]["package_sha256"] = "XYZ"
    with pytest.raises(CatalogueValidationError) as info:
        validate_catalogue({"00100_DEMO": entry}, source="x")
    assert {p for _, p, _ in info.value.violations} == {"/execution/sandbox", "/execution/package_sha256"}


def test_schemas_are_draft_2020_12_and_shipped_in_the_installed_package() -> None:
    from importlib import resources

    for name in ("catalogue.schema.json", "model_entry.schema.json"):
        schema = load_schema(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        packaged = resources.files("medigan_iso") / "schemas" / name
        assert json.loads(packaged.read_text(encoding="utf-8")) == schema


# --- entries ---------------------------------------------------------------------------------------


def test_model_entry_normalises_upstream_fields(shared_fixtures: Path, home: Path) -> None:
    path = shared_fixtures / "medigan_global.json"
    catalogue = load_catalogue(path)
    first = catalogue.resolve("00001")
    assert first.model_id == "00001_DCGAN_MMG_CALC_ROI"
    assert first.package_name == "00001_DCGAN_MMG_CALC_ROI"
    assert first.model_file_name == "DCGAN.pt"
    assert first.dependencies == ("numpy", "Path", "torch", "opencv-contrib-python-headless")
    assert dict(first.custom_defaults) == {"image_size": 128}
    assert first.input_latent_vector_size == 100
    assert first.generate_function == "generate"
    assert first.package_sha256 is None and first.python_requires is None
    assert first.source == str(path)
    assert first.catalogue_dir == path.resolve().parent
    assert not first.is_bundled
    assert first.title.startswith("DCGAN Model for Mammogram Calcification")
    assert catalogue.resolve(2).model_file_name == "malign_mass_gen"  # empty extension
    assert catalogue.resolve(21).model_file_name == "netG_T1toT2_checkpoint.pth.tar"
    assert thaw(catalogue.resolve(4).custom_defaults)["shapes"] == ["oval", "lobulated"]


def test_model_entry_raw_is_read_only(shared_fixtures: Path, home: Path) -> None:
    entry = load_catalogue(shared_fixtures / "medigan_global.json").resolve(1)
    with pytest.raises(TypeError):
        entry.raw["execution"]["package_link"] = "https://evil.example/x.zip"  # type: ignore[index]
    assert isinstance(thaw(entry.raw)["selection"]["organ"], list)


def test_model_entry_reads_execution_extensions() -> None:
    raw = _strict_entry()
    raw["execution"].update(python_requires=">=3.8", package_md5="md5:" + "A" * 32, sandbox={"x": 1})
    entry = ModelEntry.from_raw("00100_DEMO", raw, source="x", catalogue_dir=Path("/c"))
    assert entry.package_sha256 == SHA
    assert entry.package_md5 == "a" * 32
    assert entry.python_requires == ">=3.8"
    assert dict(entry.sandbox) == {"x": 1}
    assert entry.catalogue_dir == Path("/c")


# --- id resolution ---------------------------------------------------------------------------------


@pytest.fixture
def upstream(shared_fixtures: Path, home: Path) -> Catalogue:
    return load_catalogue(shared_fixtures / "medigan_global.json")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("00002", "00002_DCGAN_MMG_MASS_ROI"),
        ("03", "00003_CYCLEGAN_MMG_DENSITY_FULL"),
        (4, "00004_PIX2PIX_MMG_MASSES_W_MASKS"),
        ("4", "00004_PIX2PIX_MMG_MASSES_W_MASKS"),
        (23, "00023_PIX2PIXHD_BREAST_DCEMRI"),
        ("00019_PGGAN_CHEST_XRAY", "00019_PGGAN_CHEST_XRAY"),
        ("00020_PGGAN_CHEST_XRAY", "00020_PGGAN_CHEST_XRAY"),
    ],
)
def test_ids_resolve_like_medigan(upstream: Catalogue, given: str | int, expected: str) -> None:
    assert upstream.resolve(given).model_id == expected
    assert given in upstream


def test_abbreviated_id_resolves_to_the_first_entry_in_catalogue_order() -> None:
    entries = tuple(
        ModelEntry.from_raw(mid, _strict_entry(), source="x") for mid in ("00007_B", "00001_B", "00001_A")
    )
    catalogue = Catalogue(entries)
    assert catalogue.resolve(1).model_id == "00001_B"
    assert catalogue.resolve("00001_A").model_id == "00001_A"


@pytest.mark.parametrize("given", ["00099", 99, "PGGAN", "123456", True, 1.0, ""])
def test_unknown_ids_raise_with_close_matches(upstream: Catalogue, given: Any) -> None:
    with pytest.raises(UnknownModelError) as info:
        upstream.resolve(given)
    assert info.value.model_id == given
    assert f"no model with id {given!r}" in str(info.value)
    assert given not in upstream


def test_unknown_id_lists_close_matches(upstream: Catalogue) -> None:
    with pytest.raises(UnknownModelError) as info:
        upstream.resolve("00001_DCGAN_MMG_CALC")
    assert info.value.close_matches[0] == "00001_DCGAN_MMG_CALC_ROI"
    with pytest.raises(UnknownModelError) as info:
        upstream.resolve("00024")
    assert "00023_PIX2PIXHD_BREAST_DCEMRI" in info.value.close_matches
    assert "did you mean" in str(info.value)


def test_catalogue_is_a_comparable_hashable_value(upstream: Catalogue, shared_fixtures: Path) -> None:
    again = load_catalogue(shared_fixtures / "medigan_global.json")
    assert again == upstream and hash(again) == hash(upstream)
    assert again.resolve(1) == upstream.resolve(1)
    path = shared_fixtures / "medigan_global.json"
    assert repr(upstream) == f"Catalogue(23 models from ['{path}'])"


def test_with_entry_replaces_in_place_and_appends_new_ids(upstream: Catalogue) -> None:
    replaced = ModelEntry.from_raw("00002_DCGAN_MMG_MASS_ROI", _strict_entry(), source="mine")
    added = ModelEntry.from_raw("00100_DEMO", _strict_entry(), source="mine")
    changed = upstream.with_entry(replaced).with_entry(added)
    assert changed.ids()[1] == "00002_DCGAN_MMG_MASS_ROI"
    assert changed.resolve(2).source == "mine"
    assert changed.ids()[-1] == "00100_DEMO"
    assert upstream.resolve(2).source != "mine"  # the original is unchanged


# --- local sources ---------------------------------------------------------------------------------


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_later_sources_override_earlier_ones_in_place(tmp_path: Path, home: Path) -> None:
    first = _write(tmp_path / "a.json", {"00001_A": _strict_entry(), "00002_B": _strict_entry()})
    override = _strict_entry()
    override["description"]["title"] = "override"
    second = _write(tmp_path / "b.json", {"00001_A": override, "00003_C": _strict_entry()})
    catalogue = load_catalogue([first, str(second)])
    assert catalogue.ids() == ("00001_A", "00002_B", "00003_C")
    assert catalogue.resolve(1).title == "override"
    assert catalogue.resolve(1).source == str(second)
    assert catalogue.resolve(2).source == str(first)
    assert catalogue.sources[-2:] == (str(first), str(second))


def test_config_env_var_takes_pathsep_separated_files_and_dirs(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "dir"
    folder.mkdir()
    _write(folder / "2.json", {"00002_B": _strict_entry()})
    _write(folder / "1.json", {"00001_A": _strict_entry()})
    (folder / "notes.txt").write_text("not a catalogue")
    single = _write(tmp_path / "c.json", {"00003_C": _strict_entry()})
    monkeypatch.setenv("MEDIGAN_ISO_CONFIG", os.pathsep.join([str(folder), "", str(single)]))
    assert load_catalogue().ids() == ("00001_A", "00002_B", "00003_C")
    # config= replaces the environment variable
    assert load_catalogue({"00009_D": _strict_entry()}).ids() == ("00009_D",)


def test_dict_sources_are_validated_and_have_no_catalogue_dir(home: Path) -> None:
    catalogue = load_catalogue([{"00001_A": _strict_entry()}])
    assert catalogue.resolve(1).catalogue_dir is None
    assert catalogue.resolve(1).source == "<config dict #0>"
    bad = _strict_entry()
    del bad["selection"]
    with pytest.raises(CatalogueValidationError) as info:
        load_catalogue({"00001_A": bad})
    assert info.value.violations == [("00001_A", "/", "'selection' is a required property")]
    assert info.value.source == "<config dict #0>"


def test_relative_package_link_is_kept_with_the_catalogue_dir(tmp_path: Path, home: Path) -> None:
    entry = _strict_entry()
    entry["execution"]["package_link"] = "models/demo_numpy"
    path = _write(tmp_path / "bundle.json", {"00100_DEMO": entry})
    loaded = load_catalogue(path, strict=True).resolve(100)
    assert loaded.package_link == "models/demo_numpy"
    assert loaded.catalogue_dir == tmp_path.resolve()
    assert (loaded.catalogue_dir / loaded.package_link) == tmp_path.resolve() / "models" / "demo_numpy"


def test_bundled_catalogue_is_a_source_unless_switched_off(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_BUNDLED", "1")
    catalogue = load_catalogue([])
    assert catalogue.sources == ("<bundled bundled_catalogue.json>",)
    assert catalogue.ids() == ("demo-numpy", "demo-torch", "demo-tf", "demo-tf1")
    assert all(entry.is_bundled for entry in catalogue)
    monkeypatch.setenv("MEDIGAN_ISO_BUNDLED", "0")
    assert load_catalogue([]).sources == ()


def test_strict_loading_rejects_upstream_entries(shared_fixtures: Path, home: Path) -> None:
    with pytest.raises(CatalogueValidationError) as info:
        load_catalogue(shared_fixtures / "medigan_global.json", strict=True)
    assert len(info.value.model_ids) == 23


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"00001_A": {"execution": ', "is not valid JSON (line 1 column 27: Expecting value)"),
        ("<!DOCTYPE html><html><body>404</body></html>", "is an HTML page, not a JSON catalogue"),
        ("[1, 2]", "holds a JSON list, not an object mapping model ids to entries"),
        ("", "is not valid JSON (line 1 column 1: Expecting value)"),
    ],
)
def test_unreadable_files_raise_one_line_source_errors(
    tmp_path: Path, home: Path, content: str, reason: str
) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(CatalogueSourceError) as info:
        load_catalogue(path)
    assert info.value.source == str(path)
    assert info.value.reason == reason
    assert str(info.value).splitlines()[0] == f"catalogue source {path}: {reason}"
    assert info.value.remedy


def test_missing_path_and_empty_directory_raise_source_errors(tmp_path: Path, home: Path) -> None:
    with pytest.raises(CatalogueSourceError) as info:
        load_catalogue(tmp_path / "nope.json")
    assert info.value.reason == "no such file or directory"
    assert info.value.source == str(tmp_path / "nope.json")
    with pytest.raises(CatalogueSourceError) as info:
        load_catalogue(tmp_path)
    assert info.value.reason == "is a directory without *.json catalogue files"


def test_non_source_objects_are_refused(home: Path) -> None:
    with pytest.raises(CatalogueSourceError) as info:
        load_catalogue([42])  # type: ignore[list-item]
    assert info.value.source == "42"
    assert "a source is a path, an http(s) URL or a dict" in info.value.reason


def test_file_urls_are_read_as_paths(tmp_path: Path, home: Path) -> None:
    path = _write(tmp_path / "with space.json", {"00001_A": _strict_entry()})
    catalogue = load_catalogue(path.as_uri())
    assert catalogue.ids() == ("00001_A",)
    assert catalogue.resolve(1).catalogue_dir == tmp_path.resolve()


def test_bundled_entries_keep_relative_links_and_are_marked_bundled(tmp_path: Path, home: Path) -> None:
    entry = _strict_entry()
    entry["execution"]["package_link"] = "models/demo_numpy"
    bundled = _write(tmp_path / "bundled_catalogue.json", {"00900_DEMO_NUMPY": entry})
    mine = _write(tmp_path / "mine.json", {"00001_A": _strict_entry()})
    catalogue = load_catalogue(mine, bundled_catalogue=bundled, strict=True)
    assert catalogue.ids() == ("00900_DEMO_NUMPY", "00001_A")
    demo = catalogue.resolve(900)
    assert demo.is_bundled and not catalogue.resolve(1).is_bundled
    assert demo.source == "<bundled bundled_catalogue.json>"
    assert demo.catalogue_dir == tmp_path.resolve()
    assert demo.catalogue_dir / demo.package_link == tmp_path.resolve() / "models" / "demo_numpy"


@pytest.mark.skipif(os.pathsep != ":", reason="not POSIX: the separator is ':' only there")
def test_config_env_keeps_urls_whole_on_posix() -> None:
    value = "/a/cat.json:https://example.org/g.json::http://127.0.0.1:8000/x.json:file:///c/d.json:rel"
    assert split_config_env(value) == [
        "/a/cat.json",
        "https://example.org/g.json",
        "http://127.0.0.1:8000/x.json",
        "file:///c/d.json",
        "rel",
    ]
    assert split_config_env("") == []
    assert split_config_env("http") == ["http"]  # a relative path that happens to be named http
