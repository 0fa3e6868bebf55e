"""The modern API (search, info, list_models), the medigan Generators facade, and the public surface."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

import pytest

import medigan_iso
from medigan_iso import Generators, ModelInfo, SearchResult, info, list_models, search
from medigan_iso.catalogue import LOCAL_CATALOGUE_NAME, load_catalogue
from medigan_iso.errors import ConfigKeyError, UnknownModelError
from medigan_iso.paths import cache_layout

# Catalogue counts and medigan 1.0 comparisons are about upstream entries: leave the demo models out.
pytestmark = pytest.mark.usefixtures("upstream_only")

DCGAN_MAMMOGRAPHY = ["00001_DCGAN_MMG_CALC_ROI", "00002_DCGAN_MMG_MASS_ROI", "00005_DCGAN_MMG_MASS_ROI"]


@pytest.fixture
def config(shared_fixtures: Path, home: Path) -> Path:
    return shared_fixtures / "medigan_global.json"


@pytest.fixture
def generators(config: Path) -> Generators:
    return Generators(config=config)


def _new_entry(link: str) -> dict[str, Any]:
    return {
        "execution": {
            "package_name": "mine",
            "package_link": link,
            "model_name": "weights",
            "extension": ".pt",
            "dependencies": ["numpy"],
            "generate_method": {
                "name": "generate",
                "args": {"base": ["model_file", "num_samples", "output_path", "save_images"], "custom": {}},
            },
        },
        "selection": {"modality": ["MRI"], "performance": {"FID": 1.5}},
        "description": {"title": "mine"},
    }


def test_public_surface_is_pinned() -> None:
    assert sorted(medigan_iso.__all__) == sorted(
        [
            "Catalogue",
            "BundleError",
            "CatalogueError",
            "CatalogueSourceError",
            "CatalogueValidationError",
            "ConfigKeyError",
            "ContributionError",
            "DirectReferenceError",
            "EnvBuildError",
            "EnvError",
            "EnvNotBuiltError",
            "ExploreError",
            "ExploreRequestError",
            "Generators",
            "InterpreterNotFoundError",
            "MediganIsoError",
            "ModelBusyError",
            "ModelEntry",
            "ModelError",
            "ModelTestError",
            "OutputExistsError",
            "ProvenanceError",
            "ModelInfo",
            "PackageDownloadError",
            "PackageError",
            "PackageIntegrityError",
            "PackageLayoutError",
            "ProtocolError",
            "RemoteServiceError",
            "ResolutionError",
            "ResourceLimitError",
            "RunnerCrashedError",
            "RunnerError",
            "RunnerStartError",
            "RunnerTimeoutError",
            "SandboxError",
            "SandboxPolicyError",
            "SearchResult",
            "Session",
            "UnknownModelError",
            "UnpinnedPackageError",
            "UnsafeArchiveError",
            "VerifyReport",
            "__version__",
            "generate",
            "info",
            "list_models",
            "load_catalogue",
            "search",
            "stream",
            "verify",
        ]
    )
    for name in medigan_iso.__all__:
        assert hasattr(medigan_iso, name), name


# --- modern API ------------------------------------------------------------------------------------


def test_search_finds_the_three_dcgan_mammography_models(config: Path) -> None:
    results = search(["mammography", "dcgan"], config=config)
    assert [r.model_id for r in results] == DCGAN_MAMMOGRAPHY
    assert all(isinstance(r, SearchResult) and r.matched_terms == ("mammography", "dcgan") for r in results)
    assert results[0].title.startswith("DCGAN Model for Mammogram Calcification")
    assert results[0].metric is None


def test_search_ranks_by_a_dotted_metric(config: Path) -> None:
    results = search("dcgan", rank_by="CLF.trained_on_real_and_fake.f1", order="desc", config=config)
    assert [(r.model_id, r.metric_value) for r in results] == [
        ("00002_DCGAN_MMG_MASS_ROI", 0.96),
        ("00005_DCGAN_MMG_MASS_ROI", 0.92),
    ]
    assert results[0].to_dict()["metric"] == "CLF.trained_on_real_and_fake.f1"


def test_search_operator_is_case_insensitive_and_checked(config: Path) -> None:
    catalogue = load_catalogue(config)
    assert search(["dcgan", "wgangp"], operator="xor", catalogue=catalogue)
    with pytest.raises(ValueError, match="operator must be one of AND, OR, XOR, not 'NAND'"):
        search(["dcgan"], operator="NAND", catalogue=catalogue)


def test_info_returns_a_typed_model_info(config: Path) -> None:
    model = info("00019", config=config)
    assert isinstance(model, ModelInfo)
    assert model.model_id == "00019_PGGAN_CHEST_XRAY"
    assert model.type == "PGGAN"
    assert model.image_size == (1024, 1024, 1)
    assert model.input_latent_vector_size == 1024
    assert "chest" in model.organ
    assert model.package_link.startswith("https://zenodo.org/")
    assert model.performance["FID"] == 96.74
    assert json.loads(json.dumps(model.to_dict()))["dependencies"] == ["numpy", "tqdm", "torch"]
    with pytest.raises(AttributeError):
        model.title = "x"  # type: ignore[misc]
    assert info(21, config=config).image_size == (224, 192)  # upstream writes these as strings


def test_info_of_an_unknown_id_lists_close_matches(config: Path) -> None:
    with pytest.raises(UnknownModelError) as err:
        info("00024", config=config)
    assert err.value.model_id == "00024"
    assert "00023_PIX2PIXHD_BREAST_DCEMRI" in err.value.close_matches


def test_list_models_is_in_catalogue_order(config: Path) -> None:
    ids = list_models(config=config)
    assert len(ids) == 23
    assert ids == sorted(ids)
    assert ids[-1] == "00023_PIX2PIXHD_BREAST_DCEMRI"


# --- Generators facade -----------------------------------------------------------------------------


def test_facade_keeps_medigan_names_and_defaults() -> None:
    expected = {
        "__init__": [
            ("config_manager", None),
            ("model_selector", None),
            ("model_executors", None),
            ("model_contributors", None),
            ("initialize_all_models", False),
        ],
        "get_config_by_id": [("model_id", inspect.Parameter.empty), ("config_key", None)],
        "get_selection_criteria_by_id": [
            ("model_id", inspect.Parameter.empty),
            ("is_model_id_removed", True),
        ],
        "get_selection_criteria_by_ids": [("model_ids", None), ("are_model_ids_removed", True)],
        "get_selection_values_for_key": [("key", inspect.Parameter.empty), ("model_id", None)],
        "get_selection_keys": [("model_id", None)],
        "is_model_metadata_valid": [
            ("model_id", inspect.Parameter.empty),
            ("metadata", inspect.Parameter.empty),
            ("is_local_model", True),
        ],
        "add_model_to_config": [
            ("model_id", inspect.Parameter.empty),
            ("metadata", inspect.Parameter.empty),
            ("is_local_model", None),
            ("overwrite_existing_metadata", False),
            ("store_new_config", True),
        ],
        "find_matching_models_by_values": [
            ("values", inspect.Parameter.empty),
            ("target_values_operator", "AND"),
            ("are_keys_also_matched", False),
            ("is_case_sensitive", False),
        ],
        "get_models_by_key_value_pair": [
            ("key1", inspect.Parameter.empty),
            ("value1", inspect.Parameter.empty),
            ("is_case_sensitive", False),
        ],
        "rank_models_by_performance": [("model_ids", None), ("metric", "SSIM"), ("order", "asc")],
        "find_models_and_rank": [
            ("values", inspect.Parameter.empty),
            ("target_values_operator", "AND"),
            ("are_keys_also_matched", False),
            ("is_case_sensitive", False),
            ("metric", "SSIM"),
            ("order", "asc"),
        ],
        "list_models": [],
    }
    for method, params in expected.items():
        signature = inspect.signature(getattr(Generators, method))
        positional = [
            (p.name, p.default)
            for p in signature.parameters.values()
            if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD
        ]
        assert positional == params, method
    assert "config" in inspect.signature(Generators).parameters


def test_facade_catalogue_methods(generators: Generators) -> None:
    assert generators.list_models()[0] == "00001_DCGAN_MMG_CALC_ROI"
    assert generators.get_config_by_id("00001", "execution.generate_method.name") == "generate"
    assert generators.get_config_by_id(4, "execution.model_name") == "pix2pix_mask_to_mass_model"
    whole = generators.get_config_by_id("00002")
    whole["selection"]["organ"].append("changed")  # a copy: the catalogue is unchanged
    assert "changed" not in generators.get_config_by_id("00002", "selection.organ")
    assert generators.get_selection_criteria_by_id(1)["type"] == "DCGAN"
    assert generators.get_selection_criteria_by_id(1, is_model_id_removed=False)["model_id"] == (
        "00001_DCGAN_MMG_CALC_ROI"
    )
    assert len(generators.get_selection_criteria_by_ids()) == 23
    assert [s["type"] for s in generators.get_selection_criteria_by_ids(["00002", 1])] == ["DCGAN", "DCGAN"]
    types = generators.get_selection_values_for_key("type")
    assert len(types) == 23 and types[:2] == ["DCGAN", "DCGAN"]
    assert generators.get_selection_values_for_key("performance.FID", model_id="00001") == [67.6]
    assert generators.get_selection_values_for_key("no_such_key", model_id=1) == [None]
    keys = generators.get_selection_keys()
    assert keys[0] == "performance" and "tags" in keys and len(keys) == len(set(keys))
    assert generators.get_selection_keys("00001")[:2] == ["performance", "use_cases"]


def test_facade_missing_config_key_raises_config_key_error(generators: Generators) -> None:
    with pytest.raises(ConfigKeyError) as err:
        generators.get_config_by_id("00001", "execution.generate_method.nope")
    assert isinstance(err.value, KeyError)
    assert err.value.model_id == "00001_DCGAN_MMG_CALC_ROI"
    assert err.value.config_key == "execution.generate_method.nope"
    assert err.value.available == ["args", "input_latent_vector_size", "name"]
    assert str(err.value).startswith(
        "model 00001_DCGAN_MMG_CALC_ROI has no config key 'execution.generate_method.nope'"
    )
    assert "keys available there: args, input_latent_vector_size, name" in str(err.value)


def test_facade_validates_https_links_that_medigan_rejected(generators: Generators, tmp_path: Path) -> None:
    upstream_entry = generators.get_config_by_id("00001")
    metadata = {"00001_DCGAN_MMG_CALC_ROI": upstream_entry}
    assert generators.is_model_metadata_valid("00001_DCGAN_MMG_CALC_ROI", metadata, is_local_model=False)
    assert not generators.is_model_metadata_valid("00001_DCGAN_MMG_CALC_ROI", metadata, is_local_model=True)
    package = tmp_path / "pkg"
    package.mkdir()
    assert generators.is_model_metadata_valid("x", _new_entry(str(package)))
    broken = _new_entry(str(package))
    del broken["execution"]["dependencies"]
    assert not generators.is_model_metadata_valid("x", {"x": broken})
    assert not generators.is_model_metadata_valid("x", {"y": broken})


def test_add_model_to_config_stores_and_is_loaded_again(
    generators: Generators, config: Path, home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    assert generators.add_model_to_config("00100_MINE", {"00100_MINE": _new_entry(str(package))})
    assert generators.list_models()[-1] == "00100_MINE"
    assert generators.rank_models_by_performance(["00100"], metric="FID") == [
        {"model_id": "00100_MINE", "FID": 1.5}
    ]
    stored = cache_layout(home).catalogues / LOCAL_CATALOGUE_NAME
    assert list(json.loads(stored.read_text())) == ["00100_MINE"]
    assert Generators(config=config).list_models()[0] == "00100_MINE"  # local additions precede config=
    caplog.set_level(logging.WARNING, logger="medigan_iso.compat")
    assert not generators.add_model_to_config("00100_MINE", _new_entry(str(package)))
    assert any("overwrite_existing_metadata=False" in r.getMessage() for r in caplog.records)
    changed = _new_entry(str(package))
    changed["description"]["title"] = "changed"
    assert generators.add_model_to_config("00100_MINE", changed, overwrite_existing_metadata=True)
    assert generators.get_config_by_id(100, "description.title") == "changed"


def test_add_model_to_config_without_storing_leaves_disk_alone(generators: Generators, home: Path) -> None:
    entry = _new_entry("https://example.org/mine.zip")
    assert generators.add_model_to_config("00101_REMOTE", entry, store_new_config=False)
    assert generators.list_models()[-1] == "00101_REMOTE"
    assert not (cache_layout(home).catalogues / LOCAL_CATALOGUE_NAME).exists()
    assert not generators.add_model_to_config("00102_BAD", _new_entry("not/a/url"), is_local_model=False)


def test_facade_search_and_rank(generators: Generators) -> None:
    found = generators.find_matching_models_by_values(["mammography", "dcgan"])
    assert [c.model_id for c in found] == DCGAN_MAMMOGRAPHY
    assert generators.find_models_and_rank(["polyp"], metric="FID", order="desc")[0] == {
        "model_id": "00009_PGGAN_POLYP_PATCHES_W_MASKS",
        "FID": 225.85,
    }
    assert generators.get_models_by_key_value_pair("type", "dcgan", is_case_sensitive=True) == []


def test_facade_refuses_a_foreign_config_manager() -> None:
    with pytest.raises(TypeError, match=r"config_manager must be a medigan_iso Catalogue .* not dict"):
        Generators(config_manager={"00001": {}})  # type: ignore[arg-type]
