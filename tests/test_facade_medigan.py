"""medigan's quick start, executors, len/[i]/repr and input_latent_vector semantics on the Generators facade.

Real parts: the bundled demo-numpy model and a numpy zoo, real envs (built on first use) and runners.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _facade_world import PLAIN_ID, TUPLE4_ID, facade_world

import medigan_iso
from medigan_iso import Generators
from medigan_iso.compat import ModelExecutor
from medigan_iso.errors import EnvNotBuiltError, UnknownModelError

DEMO = "demo-numpy"


@pytest.fixture
def fresh_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in facade_world(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MEDIGAN_ISO_BUILD", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def generators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generators]:
    root = tmp_path_factory.mktemp("facade-world")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in facade_world(root).items():
            patch.setenv(key, value)
        patch.delenv("MEDIGAN_ISO_BUILD", raising=False)
        with Generators() as g:
            yield g


def test_medigans_quick_start_works_verbatim_in_a_fresh_home(fresh_world: Path) -> None:
    assert not (fresh_world / "home" / "envs").exists()
    generators = Generators()
    try:
        # medigan's README: install_dependencies defaults to False and the env still builds
        assert generators.generate(model_id="demo-numpy", num_samples=5) is None
    finally:
        generators.close()
    (run,) = (fresh_world / "output" / DEMO).iterdir()
    assert sorted(p.name for p in run.iterdir() if p.name not in ("manifest.jsonl", "run.json")) == [
        f"batch_0_demo_{i}.png" for i in range(5)
    ]
    assert len(generators) == 1 and generators[0].model_id == DEMO


def test_build_never_refuses_the_quick_start_and_names_the_command(
    fresh_world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_BUILD", "never")
    with Generators() as generators, pytest.raises(EnvNotBuiltError) as info:
        generators.generate(model_id="demo-numpy", num_samples=5)
    assert info.value.command == "medigan-iso env build demo-numpy"
    with pytest.raises(EnvNotBuiltError, match=re.escape("MEDIGAN_ISO_BUILD=never")):
        medigan_iso.generate("demo-numpy", 5)
    assert not (fresh_world / "output").exists()


def test_executors_are_added_once_found_by_abbreviated_id_and_indexed(generators: Generators) -> None:
    assert not generators.is_model_executor_already_added(PLAIN_ID)
    assert generators.find_model_executor_by_id(PLAIN_ID) is None
    count = len(generators)
    generators.add_model_executor(PLAIN_ID)
    generators.add_model_executor(PLAIN_ID, install_dependencies=True)
    assert len(generators) == count + 1
    executor = generators.get_model_executor(PLAIN_ID)
    assert isinstance(executor, ModelExecutor)
    assert generators[count] is executor
    assert generators.find_model_executor_by_id("test-zoo-plain") is executor
    assert generators.get_model_executor(PLAIN_ID) is executor and len(generators) == count + 1
    with pytest.raises(UnknownModelError):
        generators.find_model_executor_by_id("no-such-model")
    with pytest.raises(IndexError):
        generators[len(generators)]
    assert repr(executor) in repr(generators)
    assert repr(generators).startswith("Generators(model_ids=[")


def test_an_executor_has_medigans_attributes_and_generate(generators: Generators, tmp_path: Path) -> None:
    executor = generators.get_model_executor(TUPLE4_ID)
    assert executor.model_id == TUPLE4_ID
    assert executor.package_name == "zoo" and executor.model_name == "weights"
    assert executor.model_extension == ".npy" and executor.dependencies == ["numpy"]
    assert executor.generate_method_name == "generate"
    assert executor.generate_method_args["custom"] == {"behaviour": "tuple4", "size": 6}
    assert executor.serialised_model_file_path.endswith("weights.npy")
    assert Path(executor.package_path, "__init__.py").is_file()
    assert executor.deserialized_model_as_lib is None  # never imported on the host
    samples = executor.generate(num_samples=3, save_images=False)
    assert len(samples) == 3 and samples[0][3] == "malignant"
    gen = executor.generate(num_samples=2, is_gen_function_returned=True)
    assert len(gen()) == 2 and len(gen(num_samples=4)) == 4
    out = tmp_path / "saved"
    assert executor.generate(num_samples=5, output_path=out, batch_size=2, behaviour="plain") is None
    assert sorted(p.name for p in out.iterdir())[:2] == ["batch_0_sample_0.npy", "batch_0_sample_1.npy"]
    assert len([p for p in out.iterdir() if p.name not in ("manifest.jsonl", "run.json")]) == 5
    with pytest.raises(TypeError):
        len(executor)  # type: ignore[arg-type]


def test_latent_rows_decide_the_sample_count_in_generate_and_the_generate_function(
    generators: Generators,
) -> None:
    z = np.random.default_rng(5).standard_normal((40, 100)).astype(np.float32)
    one_by_one = [
        generators.generate(DEMO, num_samples=1, save_images=False, input_latent_vector=z[i], output="float")[
            0
        ]
        for i in (0, 35, 39)
    ]
    gen = generators.get_generate_function(DEMO, num_samples=30, output="float")
    samples = gen(input_latent_vector=z)  # 40 rows, more than a batch of 32: the rows win
    assert len(samples) == 40
    assert all(np.allclose(samples[i], s, atol=1e-5) for i, s in zip((0, 35, 39), one_by_one))
    assert not np.allclose(samples[0], samples[35], atol=1e-2)
    direct = generators.generate(DEMO, num_samples=30, save_images=False, input_latent_vector=z[:3])
    assert len(direct) == 3


def test_add_all_model_executors_adds_one_per_model(
    fresh_world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_BUNDLED", "0")
    with Generators() as generators:
        generators.add_all_model_executors()
        assert [e.model_id for e in generators] == generators.list_models()
    with Generators(initialize_all_models=True) as generators:
        assert len(generators) == len(generators.list_models()) == 3


def test_reprs_neutralise_catalogue_text(fresh_world: Path) -> None:
    catalogue = json.loads((fresh_world / "catalogue" / "catalogue.json").read_text(encoding="utf-8"))
    entry = catalogue[PLAIN_ID]
    entry["execution"]["generate_method"]["args"]["custom"]["behaviour"] = "plain\x1b]52;c;AAAA\x07\x1b[2J"
    path = fresh_world / "catalogue" / "hostile.json"
    path.write_text(json.dumps({"hostile-zoo": entry}), encoding="utf-8")
    with Generators(config=str(path)) as generators:
        executor = generators.get_model_executor("hostile-zoo")
        for text in (repr(executor), repr(generators)):
            assert "\x1b" not in text and "\x07" not in text
            assert "\\x1b]52;c;AAAA\\x07\\x1b[2J" in text


def test_compat_surface_is_pinned() -> None:
    from medigan_iso import compat

    assert sorted(compat.__all__) == [
        "DEFAULT_OUTPUT_FOLDER",
        "Generators",
        "ModelExecutor",
        "REPR_MAX_CHARS",
    ]
    assert all(hasattr(compat, name) for name in compat.__all__)


@pytest.mark.parametrize(
    ("blocked", "call", "extra"),
    [
        ("torch", "g.get_as_torch_dataset('demo-numpy', 1)", "torch"),
        ("torch", "g.get_as_torch_dataloader(model_id='demo-numpy')", "torch"),
        ("matplotlib", "g.visualize('demo-numpy')", "viz"),
    ],
)
def test_a_missing_extra_is_a_clear_error_naming_it(
    fresh_world: Path, blocked: str, call: str, extra: str
) -> None:
    # None in sys.modules makes `import torch` fail as if it were not installed
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules[{blocked!r}] = None
        from medigan_iso import Generators, MediganIsoError
        g = Generators()
        try:
            {call}
        except MediganIsoError as exc:
            print("REMEDY:", exc.remedy)
            assert not g.model_executors  # refused before preparing anything
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"REMEDY: install the extra: pip install 'medigan-iso[{extra}]'" in proc.stdout
