"""The bundled demo models: one trained DCGAN shipped as numpy, torch and TensorFlow packages.

Each package's generate() runs in its own real uv venv built from its catalogue entry (numpy only; torch
2.13 with numpy 2; tensorflow-cpu 2.12.1 with numpy 1.2x) and the three must agree on the float output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _demo_envs import (
    DEMO_CATALOGUE_NAME,
    DEMO_IDS,
    DemoEnvs,
    bundled_catalogue,
    data_dir,
    local_tree_sha256,
    run_calls,
)
from PIL import Image

MAX_ABS_DIFF = 1e-4
N = 6
SEED = 7
LATENT = np.random.RandomState(SEED).standard_normal((N, 100)).astype(np.float32)  # == seed(7) then draw

pytestmark = pytest.mark.slow


def _calls(tmp: Path) -> list[dict[str, Any]]:
    np.save(tmp / "latent.npy", LATENT)
    np.save(tmp / "latent_one.npy", LATENT[2])
    np.save(tmp / "latent_bad.npy", LATENT[:, :99])
    return [
        {"name": "seed7_float", "seed": SEED, "num_samples": N, "kwargs": {"output": "float"}},
        {"name": "seed7_again", "seed": SEED, "num_samples": N, "kwargs": {"output": "float"}},
        {"name": "seed8_float", "seed": SEED + 1, "num_samples": N, "kwargs": {"output": "float"}},
        {"name": "seed7_uint8", "seed": SEED, "num_samples": N},
        {"name": "custom_default", "seed": SEED, "num_samples": N, "kwargs": {"output": "uint8"}},
        {
            "name": "latent_list",
            "num_samples": 30,
            "latent_file": str(tmp / "latent.npy"),
            "latent_as_list": True,
            "kwargs": {"output": "float", "condition": None},
        },
        {
            "name": "latent_one",
            "num_samples": 1,
            "latent_file": str(tmp / "latent_one.npy"),
            "kwargs": {"output": "float"},
        },
        {"name": "zero", "seed": SEED, "num_samples": 0},
        {
            "name": "saved",
            "seed": SEED,
            "num_samples": N,
            "save_images": True,
            "output_path": str(tmp / "out"),
        },
        {"name": "bad_latent", "num_samples": 3, "latent_file": str(tmp / "latent_bad.npy")},
        {"name": "bad_kwarg", "seed": SEED, "num_samples": 1, "kwargs": {"temperature": 2}},
        {"name": "bad_output", "seed": SEED, "num_samples": 1, "kwargs": {"output": "png"}},
        {"name": "save_without_path", "seed": SEED, "num_samples": 1, "save_images": True},
    ]


@pytest.fixture(scope="session")
def demo_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[dict[str, Any], dict[str, Any], Path]]:
    envs = DemoEnvs(tmp_path_factory.mktemp("demo-envs"))
    runs = {}
    for model_id in DEMO_IDS:
        work = tmp_path_factory.mktemp(model_id)
        report, arrays = run_calls(envs.python(model_id), model_id, _calls(work), workdir=work)
        runs[model_id] = (report, arrays, work)
    return runs


def test_three_formats_give_the_same_float_images_for_the_same_seed(demo_runs):
    floats = {model_id: demo_runs[model_id][1]["seed7_float"] for model_id in DEMO_IDS}
    for model_id, images in floats.items():
        assert images.shape == (N, 64, 64, 1), model_id
        assert images.dtype == np.float32, model_id
        assert images.min() >= -1.0 and images.max() <= 1.0, model_id
        assert images.std() > 0.1, f"{model_id} produced a flat image"
    reference = floats["demo-numpy"]
    for model_id in ("demo-torch", "demo-tf"):
        assert np.abs(floats[model_id] - reference).max() <= MAX_ABS_DIFF, model_id
    assert np.abs(floats["demo-torch"] - floats["demo-tf"]).max() <= MAX_ABS_DIFF


def test_each_env_runs_its_own_numpy_major_version(demo_runs):
    versions = {model_id: demo_runs[model_id][0]["numpy"] for model_id in DEMO_IDS}
    assert versions["demo-tf"].startswith("1.")
    assert versions["demo-torch"].split(".")[0] == "2"


@pytest.mark.parametrize("model_id", DEMO_IDS)
def test_same_seed_repeats_and_a_different_seed_differs(demo_runs, model_id):
    arrays = demo_runs[model_id][1]
    assert np.array_equal(arrays["seed7_float"], arrays["seed7_again"])
    assert np.abs(arrays["seed7_float"] - arrays["seed8_float"]).max() > 0.1
    assert not np.array_equal(arrays["seed7_float"][0], arrays["seed7_float"][1])


@pytest.mark.parametrize("model_id", DEMO_IDS)
def test_default_output_is_a_list_of_uint8_hw1_arrays_matching_the_float_output(demo_runs, model_id):
    report, arrays, _ = demo_runs[model_id]
    assert report["calls"]["seed7_uint8"] == {"result_type": "list", "item_types": ["ndarray"], "count": N}
    images = arrays["seed7_uint8"]
    assert images.dtype == np.uint8 and images.shape == (N, 64, 64, 1)
    expected = np.round((arrays["seed7_float"] + 1.0) * 127.5)
    assert np.abs(images.astype(np.float64) - expected).max() <= 1.0
    assert np.array_equal(images, arrays["custom_default"])


@pytest.mark.parametrize("model_id", DEMO_IDS)
def test_input_latent_vector_rows_decide_the_samples(demo_runs, model_id):
    report, arrays, _ = demo_runs[model_id]
    # num_samples=30 was passed with 6 latent rows (a plain list, as medigan's visualiser may send)
    assert report["calls"]["latent_list"]["count"] == N
    assert np.abs(arrays["latent_list"] - arrays["seed7_float"]).max() <= MAX_ABS_DIFF
    assert report["calls"]["latent_one"]["count"] == 1
    assert np.abs(arrays["latent_one"][0] - arrays["seed7_float"][2]).max() <= MAX_ABS_DIFF


@pytest.mark.parametrize("model_id", DEMO_IDS)
def test_zero_samples_return_an_empty_list(demo_runs, model_id):
    assert demo_runs[model_id][0]["calls"]["zero"] == {"result_type": "list", "item_types": [], "count": 0}


@pytest.mark.parametrize("model_id", DEMO_IDS)
def test_save_images_writes_one_png_per_sample_and_returns_none(demo_runs, model_id):
    report, arrays, work = demo_runs[model_id]
    assert report["calls"]["saved"] == {"result_type": "NoneType"}
    files = sorted((work / "out").iterdir(), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    assert [p.name for p in files] == [f"demo_{i}.png" for i in range(N)]
    for index, path in enumerate(files):
        with Image.open(path) as png:
            assert png.mode == "L"
            assert np.array_equal(np.asarray(png), arrays["seed7_uint8"][index, :, :, 0])


@pytest.mark.parametrize("model_id", DEMO_IDS)
def test_bad_arguments_raise_value_errors_with_a_remedy(demo_runs, model_id):
    calls = demo_runs[model_id][0]["calls"]
    assert calls["bad_latent"] == {
        "error_type": "ValueError",
        "error": "input_latent_vector must have shape (n, 100) or (100,), got (6, 99): pass one row of 100"
        " floats per sample",
    }
    assert calls["bad_kwarg"]["error_type"] == "ValueError"
    assert calls["bad_kwarg"]["error"] == (
        "unknown argument(s) ['temperature']: this model accepts input_latent_vector= and"
        " output= (uint8 or float)"
    )
    assert calls["bad_output"] == {
        "error_type": "ValueError",
        "error": "output must be one of ('uint8', 'float'), got 'png'",
    }
    assert calls["save_without_path"] == {
        "error_type": "ValueError",
        "error": "save_images=True needs output_path: pass the directory to write the PNGs into",
    }


# --- catalogue entries and shipped files (no envs needed) ------------------------------------------------


def test_bundled_catalogue_holds_the_three_demo_entries_marked_as_demos():
    catalogue = bundled_catalogue()
    assert list(catalogue) == list(DEMO_IDS)
    for model_id, entry in catalogue.items():
        assert not model_id[0].isdigit()  # upstream ids start with five digits
        execution = entry["execution"]
        assert execution["demo"] is True
        assert "demo" in entry["selection"]["tags"]
        assert execution["image_size"] == [64, 64]
        assert execution["generate_method"]["input_latent_vector_size"] == 100
        assert execution["generate_method"]["name"] == "generate"
        assert execution["package_link"] == f"models/{execution['package_name']}"
        assert set(entry) == {"execution", "selection", "description"}


def test_bundled_entries_pin_their_frameworks():
    deps = {model_id: entry["execution"]["dependencies"] for model_id, entry in bundled_catalogue().items()}
    assert deps["demo-numpy"] == ["numpy>=1.21"]
    assert "torch==2.13.0" in deps["demo-torch"] and "numpy>=2" in deps["demo-torch"]
    assert "tensorflow-cpu==2.12.1" in deps["demo-tf"] and "numpy<2" in deps["demo-tf"]


@pytest.mark.parametrize("model_id", DEMO_IDS)
def test_package_sha256_is_the_tree_hash_of_the_shipped_directory(model_id):
    execution = bundled_catalogue()[model_id]["execution"]
    package_dir = data_dir() / execution["package_link"]
    assert (package_dir / "__init__.py").is_file()
    assert (package_dir / (execution["model_name"] + execution["extension"])).is_file()
    assert execution["package_sha256"] == local_tree_sha256(package_dir)


def test_tree_hash_covers_paths_and_contents_and_ignores_bytecode(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.py").write_bytes(b"1")
    (tmp_path / "b.bin").write_bytes(b"")
    first = local_tree_sha256(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "a" / "y.pyc").write_bytes(b"junk")
    assert local_tree_sha256(tmp_path) == first
    (tmp_path / "a" / "x.py").write_bytes(b"2")
    assert local_tree_sha256(tmp_path) != first
    (tmp_path / "a" / "x.py").write_bytes(b"1")
    (tmp_path / "b.bin").rename(tmp_path / "c.bin")
    assert local_tree_sha256(tmp_path) != first


def test_demo_weights_stay_small():
    weights = [p for p in (data_dir() / "models").rglob("generator.*")]
    assert sorted(p.name for p in weights) == ["generator.h5", "generator.npz", "generator.pt"]
    assert sum(p.stat().st_size for p in weights) < 6_000_000


def test_numpy_demo_package_imports_nothing_but_numpy_and_stdlib():
    source = (data_dir() / "models" / "demo_numpy" / "__init__.py").read_text(encoding="utf-8")
    imported = set(re.findall(r"^(?:import|from) (\w+)", source, flags=re.MULTILINE))
    assert imported == {"functools", "os", "struct", "zlib", "pathlib", "numpy"}


def test_bundled_catalogue_is_plain_json_with_integer_sizes():
    raw = (data_dir() / DEMO_CATALOGUE_NAME).read_text(encoding="utf-8")
    for entry in json.loads(raw).values():
        assert all(type(v) is int for v in entry["execution"]["image_size"])
        assert entry["selection"]["height"] == 64 and entry["selection"]["width"] == 64


def test_demo_entries_load_strictly_through_the_catalogue_and_resolve_their_package_dirs(home):
    from medigan_iso.catalogue import load_catalogue

    catalogue = load_catalogue(
        [], bundled_catalogue=data_dir() / DEMO_CATALOGUE_NAME, offline=True, official_url="", strict=True
    )
    assert catalogue.ids() == DEMO_IDS
    for model_id in DEMO_IDS:
        entry = catalogue.resolve(model_id)
        assert entry.is_bundled
        assert entry.input_latent_vector_size == 100
        assert entry.package_sha256 == local_tree_sha256(entry.catalogue_dir / entry.package_link)
        assert (entry.catalogue_dir / entry.package_link / entry.model_file_name).is_file()
