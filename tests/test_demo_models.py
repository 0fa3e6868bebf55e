"""The bundled demo models: one trained DCGAN shipped as numpy, torch, TensorFlow 2 and TensorFlow 1 packages.

Everything runs through medigan_iso itself: the bundled catalogue, the packages module (tree hash check,
read-only copy), the envs module (numpy only; torch 2.13 with numpy 2; tensorflow-cpu 2.12.1 with numpy
1.2x; tensorflow 1.15.5 with numpy 1.18 on Python 3.7) and real runner subprocesses in one Session. The four
formats must agree on the float output, and the host process imports neither torch nor TensorFlow.

demo-tf1 needs a Python 3.7 interpreter (pyenv's versions folder is searched): without one its tests skip
with the reason, except in CI (``$CI`` set), whose machines have pyenv's 3.7, where they fail.
"""

import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _host_imports import host_imported
from medigan_iso_runner import protocol
from PIL import Image

from medigan_iso import Session
from medigan_iso.catalogue import load_catalogue
from medigan_iso.errors import InterpreterNotFoundError, ModelError
from medigan_iso.packages import tree_sha256

DEMO_IDS = ("demo-numpy", "demo-torch", "demo-tf", "demo-tf1")
MODERN_IDS = DEMO_IDS[:3]  # run by the `floats` fixture; demo-tf1 (Python 3.7) by `tf1_side_by_side`
MAX_ABS_DIFF = 1e-4
N = 6
SEED = 7
# What the runner draws for batch 0 of a request seeded with SEED (its determinism contract): numpy seeded
# with protocol.batch_seed(SEED, 0) modulo 2**32, then the demos' standard_normal draw.
LATENT = (
    np.random.RandomState(protocol.batch_seed(SEED, 0) % 2**32).standard_normal((N, 100)).astype(np.float32)
)

slow = pytest.mark.slow


def data_dir() -> Path:
    """medigan_iso/data of the installed package (tox installs the wheel, so this checks what it ships)."""
    return Path(str(resources.files("medigan_iso") / "data"))


def bundled_catalogue() -> dict[str, Any]:
    return json.loads((data_dir() / "bundled_catalogue.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """One Session over the bundled catalogue alone, with its own home (envs built once per module)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDIGAN_ISO_HOME", str(tmp_path_factory.mktemp("demo-home")))
    mp.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    mp.delenv("MEDIGAN_ISO_CONFIG", raising=False)
    try:
        with Session(offline=False) as s:
            yield s
    finally:
        mp.undo()


def generate_from_threads(session: Session, model_ids: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Seeded float output of each model, generated from one thread per model of this host process.

    A barrier releases the threads together, so the requests are in flight at the same time.
    """
    results: dict[str, np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(model_ids))

    def work(model_id: str) -> None:
        try:
            barrier.wait(60)
            results[model_id] = np.stack(session.generate(model_id, N, seed=SEED, output="float"))
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(model_id,)) for model_id in model_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(900)
    assert not errors, errors
    return results


@pytest.fixture(scope="module")
def floats(session: Session) -> dict[str, np.ndarray]:
    """Seeded float output of the three modern demos, generated concurrently from threads of one Session."""
    return generate_from_threads(session, MODERN_IDS)


@pytest.fixture(scope="module")
def tf1_side_by_side(session: Session, floats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """demo-tf1 (TensorFlow 1.15, Python 3.7) and demo-torch (torch 2.13, the host's Python) from two threads.

    demo-tf1's env is built and its runner started first, so the two requests overlap in generation rather
    than one waiting for an env build. Skips with the reason where no Python 3.7 exists (fails instead in
    CI, whose machines have pyenv's 3.7).
    """
    try:
        session.generate("demo-tf1", 1, seed=SEED)
    except InterpreterNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"demo-tf1 needs Python 3.7 and this machine has none: {exc}")
    return generate_from_threads(session, ("demo-tf1", "demo-torch"))


def floats_of(request: pytest.FixtureRequest, model_id: str) -> np.ndarray:
    """The seeded float output of ``model_id`` (demo-tf1's needs Python 3.7 and may skip)."""
    if model_id == "demo-tf1":
        return request.getfixturevalue("tf1_side_by_side")["demo-tf1"]  # type: ignore[no-any-return]
    return request.getfixturevalue("floats")[model_id]  # type: ignore[no-any-return]


@slow
def test_three_formats_give_the_same_float_images_for_the_same_seed(floats: dict[str, np.ndarray]) -> None:
    for model_id, images in floats.items():
        assert images.shape == (N, 64, 64, 1), model_id
        assert images.dtype == np.float32, model_id
        assert images.min() >= -1.0 and images.max() <= 1.0, model_id
        assert images.std() > 0.1, f"{model_id} produced a flat image"
    reference = floats["demo-numpy"]
    for model_id in ("demo-torch", "demo-tf"):
        assert np.abs(floats[model_id] - reference).max() <= MAX_ABS_DIFF, model_id
    assert np.abs(floats["demo-torch"] - floats["demo-tf"]).max() <= MAX_ABS_DIFF


@slow
def test_tf1_and_torch_from_two_threads_give_the_numpy_images(
    floats: dict[str, np.ndarray], tf1_side_by_side: dict[str, np.ndarray]
) -> None:
    tf1 = tf1_side_by_side["demo-tf1"]
    assert tf1.shape == (N, 64, 64, 1) and tf1.dtype == np.float32
    assert tf1.std() > 0.1, "demo-tf1 produced a flat image"
    assert np.abs(tf1 - floats["demo-numpy"]).max() <= MAX_ABS_DIFF
    assert np.abs(tf1 - tf1_side_by_side["demo-torch"]).max() <= MAX_ABS_DIFF
    # demo-torch gives the same images whether it ran beside demo-tf1 or beside the other two.
    assert np.array_equal(tf1_side_by_side["demo-torch"], floats["demo-torch"])


@slow
def test_tf1_runs_tensorflow_1_15_on_python_3_7_beside_torch_on_the_host_python(
    session: Session, tf1_side_by_side: dict[str, np.ndarray]
) -> None:
    tf1 = session.runner_info("demo-tf1")
    torch = session.runner_info("demo-torch")
    assert tf1["python"].startswith("3.7.")
    assert tf1["packages"]["tensorflow"] == "1.15.5"
    assert tf1["numpy"] == "1.18.5"
    assert torch["python"] == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    assert torch["packages"]["torch"].startswith("2.13.0")
    assert tf1["pid"] != torch["pid"]
    # The Python 3.7 runner is confined like the host-Python one (same policy, same layers seen from inside).
    for layer in ("seccomp", "no_new_privs", "landlock_enforced"):
        assert tf1["sandbox"][layer] == torch["sandbox"][layer], layer
    assert host_imported("torch", "tensorflow") == []


@slow
def test_torch_and_tf_run_side_by_side_without_leaking_into_the_host(
    session: Session, floats: dict[str, np.ndarray]
) -> None:
    host_numpy = np.__version__
    versions = {model_id: session.runner_info(model_id)["numpy"] for model_id in MODERN_IDS}
    assert versions["demo-tf"].startswith("1.")
    assert versions["demo-torch"].split(".")[0] == "2"
    assert session.runner_info("demo-torch")["packages"]["torch"].startswith("2.13.0")
    assert session.runner_info("demo-tf")["packages"]["tensorflow-cpu"] == "2.12.1"
    # The host generated with both and still has neither, and its own numpy is untouched.
    assert host_imported("torch", "tensorflow") == []
    assert np.__version__ == host_numpy
    assert len({session.runner_info(model_id)["pid"] for model_id in MODERN_IDS}) == 3


@slow
@pytest.mark.parametrize("model_id", DEMO_IDS)
def test_same_seed_repeats_and_a_different_seed_differs(
    session: Session, request: pytest.FixtureRequest, model_id: str
) -> None:
    first = floats_of(request, model_id)
    again = np.stack(session.generate(model_id, N, seed=SEED, output="float"))
    other = np.stack(session.generate(model_id, N, seed=SEED + 1, output="float"))
    assert np.array_equal(first, again)
    assert np.abs(first - other).max() > 0.1
    assert not np.array_equal(again[0], again[1])


@slow
@pytest.mark.parametrize("model_id", DEMO_IDS)
def test_default_output_is_uint8_hw1_arrays_matching_the_float_output(
    session: Session, request: pytest.FixtureRequest, model_id: str
) -> None:
    first = floats_of(request, model_id)
    samples = session.generate(model_id, N, seed=SEED)
    assert all(isinstance(s, np.ndarray) for s in samples)
    images = np.stack(samples)
    assert images.dtype == np.uint8 and images.shape == (N, 64, 64, 1)
    expected = np.round((first + 1.0) * 127.5)
    assert np.abs(images.astype(np.float64) - expected).max() <= 1.0


@slow
@pytest.mark.parametrize("model_id", DEMO_IDS)
def test_input_latent_vector_rows_decide_the_samples(
    session: Session, request: pytest.FixtureRequest, model_id: str
) -> None:
    first = floats_of(request, model_id)
    # 30 asked with 6 latent rows (a plain list, as medigan's visualiser may send): the rows win.
    from_list = session.generate(model_id, 30, input_latent_vector=LATENT.tolist(), output="float")
    assert len(from_list) == N
    assert np.abs(np.stack(from_list) - first).max() <= MAX_ABS_DIFF
    one = session.generate(model_id, 1, input_latent_vector=LATENT[2], output="float")
    assert len(one) == 1
    assert np.abs(one[0] - first[2]).max() <= MAX_ABS_DIFF
    # medigan's visualiser sends (n, size, 1, 1), a DCGAN's NCHW latent
    nchw = session.generate(model_id, 1, input_latent_vector=LATENT[2:3, :, None, None], output="float")
    assert len(nchw) == 1
    assert np.abs(nchw[0] - first[2]).max() <= MAX_ABS_DIFF


@slow
@pytest.mark.parametrize("model_id", DEMO_IDS)
def test_zero_samples_return_an_empty_list(
    session: Session, request: pytest.FixtureRequest, model_id: str
) -> None:
    floats_of(request, model_id)  # skips demo-tf1 without Python 3.7
    assert session.generate(model_id, 0, seed=SEED) == []


@slow
@pytest.mark.parametrize("model_id", DEMO_IDS)
def test_save_images_writes_one_png_per_sample_with_medigan_naming(
    session: Session, request: pytest.FixtureRequest, model_id: str, tmp_path: Path
) -> None:
    floats_of(request, model_id)  # skips demo-tf1 without Python 3.7
    expected = np.stack(session.generate(model_id, N, seed=SEED))
    written = session.save(model_id, N, tmp_path / "out", seed=SEED)
    files = sorted(
        (p for p in (tmp_path / "out").iterdir() if p.name not in ("manifest.jsonl", "run.json")),
        key=lambda p: int(re.findall(r"\d+", p.name)[-1]),
    )
    assert written == N
    assert [p.name for p in files] == [f"batch_0_demo_{i}.png" for i in range(N)]
    for index, path in enumerate(files):
        with Image.open(path) as png:
            assert png.mode == "L"
            assert np.array_equal(np.asarray(png), expected[index, :, :, 0])


@slow
@pytest.mark.parametrize("model_id", DEMO_IDS)
def test_bad_arguments_raise_model_errors_with_a_remedy(
    session: Session, request: pytest.FixtureRequest, model_id: str
) -> None:
    floats_of(request, model_id)  # skips demo-tf1 without Python 3.7
    with pytest.raises(ModelError) as bad_latent:
        session.generate(model_id, 3, input_latent_vector=LATENT[:, :99])
    assert bad_latent.value.remote_type == "ValueError"
    assert bad_latent.value.remote_message == (
        "input_latent_vector must have shape (n, 100), (n, 100, 1, 1) or (100,), got (6, 99): pass one"
        " row of 100 floats per sample"
    )
    with pytest.raises(ModelError) as bad_kwarg:
        session.generate(model_id, 1, temperature=2)
    assert bad_kwarg.value.remote_message == (
        "unknown argument(s) ['temperature']: this model accepts input_latent_vector= and"
        " output= (uint8 or float)"
    )
    with pytest.raises(ModelError) as bad_output:
        session.generate(model_id, 1, output="png")
    assert bad_output.value.remote_message == "output must be one of ('uint8', 'float'), got 'png'"
    assert len(session.generate(model_id, 1)) == 1  # the runner survived all three


# --- catalogue entries and shipped files (no envs needed) ------------------------------------------------


def test_bundled_catalogue_holds_the_four_demo_entries_marked_as_demos():
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
    # TF 1.15's era, pinned explicitly: numpy < 1.19, protobuf < 4 (4.x breaks its generated code), h5py < 3.
    assert deps["demo-tf1"] == ["tensorflow==1.15.5", "numpy==1.18.5", "protobuf==3.20.3", "h5py==2.10.0"]
    assert bundled_catalogue()["demo-tf1"]["execution"]["python_requires"] == ">=3.7,<3.8"


@pytest.mark.parametrize("model_id", DEMO_IDS)
def test_package_sha256_is_the_tree_hash_of_the_shipped_directory(model_id):
    execution = bundled_catalogue()[model_id]["execution"]
    package_dir = data_dir() / execution["package_link"]
    assert (package_dir / "__init__.py").is_file()
    assert (package_dir / (execution["model_name"] + execution["extension"])).is_file()
    assert execution["package_sha256"] == tree_sha256(package_dir)


def test_tree_hash_covers_paths_and_contents_and_ignores_bytecode(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.py").write_bytes(b"1")
    (tmp_path / "b.bin").write_bytes(b"")
    first = tree_sha256(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "a" / "y.pyc").write_bytes(b"junk")
    assert tree_sha256(tmp_path) == first
    (tmp_path / "a" / "x.py").write_bytes(b"2")
    assert tree_sha256(tmp_path) != first
    (tmp_path / "a" / "x.py").write_bytes(b"1")
    (tmp_path / "b.bin").rename(tmp_path / "c.bin")
    assert tree_sha256(tmp_path) != first


def test_demo_weights_stay_small():
    weights = [p for p in (data_dir() / "models").rglob("generator.*")]
    assert sorted(p.name for p in weights) == [
        "generator.h5",
        "generator.npz",
        "generator.pb",
        "generator.pt",
    ]
    assert sum(p.stat().st_size for p in weights) < 8_000_000


def test_numpy_demo_package_imports_nothing_but_numpy_and_stdlib():
    source = (data_dir() / "models" / "demo_numpy" / "__init__.py").read_text(encoding="utf-8")
    imported = set(re.findall(r"^(?:import|from) (\w+)", source, flags=re.MULTILINE))
    assert imported == {"functools", "os", "struct", "zlib", "pathlib", "numpy"}


def test_tf1_demo_package_imports_only_tensorflow_numpy_and_stdlib():
    source = (data_dir() / "models" / "demo_tf1" / "__init__.py").read_text(encoding="utf-8")
    imported = set(re.findall(r"^(?:import|from) (\w+)", source, flags=re.MULTILINE))
    assert imported == {"functools", "os", "struct", "zlib", "pathlib", "numpy", "tensorflow"}


def test_bundled_catalogue_is_plain_json_with_integer_sizes():
    raw = (data_dir() / "bundled_catalogue.json").read_text(encoding="utf-8")
    for entry in json.loads(raw).values():
        assert all(type(v) is int for v in entry["execution"]["image_size"])
        assert entry["selection"]["height"] == 64 and entry["selection"]["width"] == 64


def test_demo_entries_load_strictly_through_the_catalogue_and_resolve_their_package_dirs(home):
    catalogue = load_catalogue([], offline=True, official_url="", strict=True)
    assert catalogue.ids() == DEMO_IDS
    for model_id in DEMO_IDS:
        entry = catalogue.resolve(model_id)
        assert entry.is_bundled
        assert entry.input_latent_vector_size == 100
        assert entry.package_sha256 == tree_sha256(entry.catalogue_dir / entry.package_link)
        assert (entry.catalogue_dir / entry.package_link / entry.model_file_name).is_file()


def test_list_marks_the_demo_models(home: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    from medigan_iso.cli import main

    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    monkeypatch.delenv("MEDIGAN_ISO_CONFIG", raising=False)
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    assert [line.split()[0] for line in lines] == list(DEMO_IDS)
    assert all("[demo]" in line for line in lines)
    assert main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["model_id"], m["demo"]) for m in listed] == [(model_id, True) for model_id in DEMO_IDS]
