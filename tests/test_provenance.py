"""Provenance end to end: manifest.jsonl and run.json beside every written file, `medigan-iso verify`,
`verify --regenerate`, the dataset card, and the determinism contract seen from the files.

Real parts only: a catalogue file whose entries point at a model package written by the tests, envs built
with uv, real runner subprocesses, the real CLI (in-process, and as a subprocess that is SIGKILLed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _compat import zip_strict
from _model_fixtures import write_numpy_zoo, zoo_execution

import medigan_iso
from medigan_iso import Generators, Session
from medigan_iso.cli import main
from medigan_iso.errors import ProvenanceError
from medigan_iso.manifest import read_manifest, read_runs
from medigan_iso.packages import tree_sha256

ZOO_ID = "prov-zoo"
TUPLE_ID = "prov-zoo-tuples"
LINE_FIELDS = {
    "path",
    "kind",
    "sha256",
    "size",
    "run_id",
    "model_id",
    "entry_sha256",
    "package_sha256",
    "env_key",
    "lock_sha256",
    "dependencies_as_of",
    "python",
    "packages",
    "runner_protocol",
    "seeding",
    "medigan_iso_version",
    "seed",
    "batch_size",
    "batch_index",
    "sample_index",
    "kwargs",
    "sandbox_layers",
    "writer",
    "time",
}


def _entry(package_link: str, package_sha256: str, *, custom: dict[str, object]) -> dict[str, Any]:
    return {
        "execution": zoo_execution(package_link, package_sha256, custom=custom),
        "selection": {
            "modality": ["test"],
            "tags": ["zoo"],
            "dataset": ["phantoms \x1b[31mred"],
            "license": "MIT",
            "performance": {"FID": 1.5, "turing_test": {"AUC": 0.5}},
        },
        "description": {"title": "provenance zoo", "publication": "A paper (2026)"},
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("provenance")
    package = write_numpy_zoo(root / "catalogue" / "models" / "zoo")
    digest = tree_sha256(package)
    catalogue = {
        ZOO_ID: _entry("models/zoo", digest, custom={"behaviour": "plain", "size": 8}),
        TUPLE_ID: _entry("models/zoo", digest, custom={"behaviour": "tuple3", "size": 6}),
    }
    path = root / "catalogue" / "catalogue.json"
    path.write_text(json.dumps(catalogue), encoding="utf-8")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDIGAN_ISO_HOME", str(root / "home"))
    mp.setenv("MEDIGAN_ISO_CONFIG", str(path))
    mp.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    try:
        yield {"catalogue": path, "home": root / "home", "root": root}
    finally:
        mp.undo()


def hashes(directory: Path) -> dict[str, str]:
    return {line["path"]: line["sha256"] for line in read_manifest(directory)}


def generate_cli(out: Path, *extra: str, model: str = ZOO_ID) -> int:
    return main(["generate", model, "-o", str(out), *extra])


# --- the manifest ---------------------------------------------------------------------------------------


def test_generate_writes_one_true_manifest_line_per_file_and_a_run_record(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert generate_cli(out, "-n", "5", "--batch-size", "2", "--seed", "3", model=TUPLE_ID) == 0
    lines = read_manifest(out)
    files = sorted(p.name for p in out.iterdir() if p.name not in ("manifest.jsonl", "run.json"))
    assert sorted(line["path"] for line in lines) == files
    assert "labels.csv" in files and "sample_00004_mask.png" in files
    for line in lines:
        assert set(line) >= LINE_FIELDS, LINE_FIELDS - set(line)
        data = (out / line["path"]).read_bytes()
        assert line["sha256"] == hashlib.sha256(data).hexdigest() and line["size"] == len(data)
        assert (line["model_id"], line["seed"], line["batch_size"]) == (TUPLE_ID, 3, 2)
        assert line["kwargs"] == {} and line["writer"] == "png"
        assert line["seeding"] == "sha256-seed-batch-v1" and line["runner_protocol"] == 1
        assert line["medigan_iso_version"] == medigan_iso.__version__
        assert line["packages"]["numpy"] and line["python"].count(".") == 2
        assert len(line["lock_sha256"]) == 64 and len(line["entry_sha256"]) == 64
    by_path = {line["path"]: line for line in lines}
    assert (by_path["sample_00003.png"]["sample_index"], by_path["sample_00003.png"]["batch_index"]) == (3, 1)
    assert by_path["labels.csv"]["sample_index"] is None
    assert by_path["labels.csv"]["kind"] == "labels" and by_path["sample_00003.png"]["kind"] == "sample"
    (run,) = read_runs(out)
    assert run["status"] == "complete" and run["files"] == len(lines)
    assert run["num_samples"] == 5 and run["batch_offset"] == 0 and run["seed"] == 3
    assert run["command"][:3] == ["medigan-iso", "generate", TUPLE_ID] and "--seed" in run["command"]
    assert "numpy==" in run["lock"] and run["entry"]["description"]["title"] == "provenance zoo"
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert f"{len(lines)} of {len(lines)} file(s) match the manifest" in capsys.readouterr().out


def test_a_run_without_a_seed_records_the_seed_it_drew_and_the_command_repeats_it(
    world: dict[str, Path], tmp_path: Path
) -> None:
    first = tmp_path / "first"
    assert generate_cli(first, "-n", "3", "--format", "npy") == 0
    (run,) = read_runs(first)
    seed = run["seed"]
    assert isinstance(seed, int) and run["command"][run["command"].index("--seed") + 1] == str(seed)
    again = tmp_path / "again"
    command = list(run["command"][1:])
    command[command.index("-o") + 1] = str(again)
    assert main(command) == 0
    assert hashes(again) == hashes(first)


def test_same_seed_gives_the_same_hashes_and_another_seed_does_not(
    world: dict[str, Path], tmp_path: Path
) -> None:
    for name, seed in (("a", "9"), ("b", "9"), ("c", "10")):
        assert generate_cli(tmp_path / name, "-n", "4", "--seed", seed, "--format", "npy") == 0
    assert hashes(tmp_path / "a") == hashes(tmp_path / "b")
    assert hashes(tmp_path / "a") != hashes(tmp_path / "c")


def test_session_save_split_at_batch_boundaries_equals_the_whole(
    world: dict[str, Path], tmp_path: Path
) -> None:
    with Session() as session:
        session.save(ZOO_ID, 9, tmp_path / "whole", batch_size=3, seed=4)
        session.save(ZOO_ID, 3, tmp_path / "split", batch_size=3, seed=4, batch_offset=2)
        session.save(ZOO_ID, 6, tmp_path / "split", batch_size=3, seed=4, batch_offset=0)
    whole, split = hashes(tmp_path / "whole"), hashes(tmp_path / "split")
    assert len(whole) == 9 and whole == split
    lines = read_manifest(tmp_path / "split")
    assert {line["writer"] for line in lines} == {"save_images"}
    assert sorted({line["batch_index"] for line in lines}) == [0, 1, 2]
    assert {tuple(line["samples"]) for line in lines if line["batch_index"] == 2} == {(6, 9)}
    assert len(read_runs(tmp_path / "split")) == 2
    assert medigan_iso.verify(tmp_path / "split").ok


def test_generators_generate_with_save_images_writes_a_manifest(
    world: dict[str, Path], tmp_path: Path
) -> None:
    with Generators() as generators:
        generators.generate(model_id=ZOO_ID, num_samples=4, output_path=str(tmp_path / "g"), save_images=True)
    lines = read_manifest(tmp_path / "g")
    assert len(lines) == 4 and {line["model_id"] for line in lines} == {ZOO_ID}
    assert medigan_iso.verify(tmp_path / "g").ok


def test_the_sandbox_policy_does_not_change_the_bytes(world: dict[str, Path], tmp_path: Path) -> None:
    for policy in ("off", "auto"):
        assert generate_cli(tmp_path / policy, "-n", "4", "--seed", "31", "--sandbox", policy) == 0
    assert hashes(tmp_path / "off") == hashes(tmp_path / "auto")
    layers = {policy: read_manifest(tmp_path / policy)[0]["sandbox_layers"] for policy in ("off", "auto")}
    if shutil.which("bwrap") is not None:
        assert layers["off"] != layers["auto"]


# --- verify ---------------------------------------------------------------------------------------------


def test_verify_names_changed_missing_and_extra_files(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert generate_cli(out, "-n", "4", "--seed", "1") == 0
    assert medigan_iso.verify(out).ok
    (out / "sample_00001.png").write_bytes((out / "sample_00001.png").read_bytes() + b"\0")
    (out / "sample_00002.png").unlink()
    (out / "sneaked_in.png").write_bytes(b"not generated")
    (out / "sub").mkdir()
    (out / "sub" / "deeper.txt").write_text("x")
    report = medigan_iso.verify(out)
    assert not report.ok
    assert report.changed == ("sample_00001.png",)
    assert report.missing == ("sample_00002.png",)
    assert report.extra == ("sneaked_in.png", "sub/deeper.txt")
    assert report.matched == ("sample_00000.png", "sample_00003.png")
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    captured = capsys.readouterr()
    for name in ("changed (1):", "sample_00001.png", "missing (1):", "sample_00002.png", "sneaked_in.png"):
        assert name in captured.out
    assert "verification FAILED" in captured.err
    assert main(["verify", "--json", str(out)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["changed"] == ["sample_00001.png"]
    assert data["missing"] == ["sample_00002.png"] and data["extra"] == ["sneaked_in.png", "sub/deeper.txt"]


def test_verify_treats_a_symlink_in_place_of_a_file_as_changed(
    world: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert generate_cli(out, "-n", "2", "--seed", "1") == 0
    target = tmp_path / "elsewhere.png"
    (out / "sample_00000.png").rename(target)
    (out / "sample_00000.png").symlink_to(target)  # same bytes, but not the file that was written
    assert medigan_iso.verify(out).changed == ("sample_00000.png",)


def test_verify_without_a_manifest_raises_provenance_error(tmp_path: Path) -> None:
    with pytest.raises(ProvenanceError) as info:
        medigan_iso.verify(tmp_path)
    assert info.value.directory == tmp_path
    assert "no manifest.jsonl here" in str(info.value) and "medigan-iso generate" in str(info.value)
    (tmp_path / "manifest.jsonl").write_text('{"path": "a"}\n{"no": "path"}\n')
    with pytest.raises(ProvenanceError, match="line 1: not a manifest record"):
        medigan_iso.verify(tmp_path)


def test_regenerate_rebuilds_a_removed_env_from_the_recorded_lock_and_reproduces_every_file(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert generate_cli(out, "-n", "5", "--batch-size", "2", "--seed", "12", model=TUPLE_ID) == 0
    env_dir = world["home"] / "envs" / read_manifest(out)[0]["env_key"]
    assert env_dir.is_dir()
    shutil.rmtree(env_dir)
    trees = world["home"] / "packages" / "trees"
    for tree in trees.iterdir():  # the package goes too: fetched again and checked by its recorded hash
        for sub in [tree, *tree.rglob("*")]:
            sub.chmod(0o755 if sub.is_dir() else 0o644)
        shutil.rmtree(tree)
    capsys.readouterr()
    assert main(["verify", "--regenerate", str(out)]) == 0
    files = len(read_manifest(out))
    assert f"reproduced {files} of {files}" in capsys.readouterr().out
    assert env_dir.is_dir() and any(trees.iterdir())
    # A tampered file is named by the regeneration too.
    (out / "sample_00001.png").write_bytes(b"tampered")
    report = medigan_iso.verify(out, regenerate=True)
    assert not report.ok and report.changed == ("sample_00001.png",)
    assert report.reproduced == files and report.not_reproduced == ()


def test_a_killed_runs_manifest_verifies_the_files_it_wrote(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        import sys
        from medigan_iso.cli import main
        sys.exit(main(["generate", {ZOO_ID!r}, "-n", "100000", "-o", {str(out)!r}, "--batch-size", "3",
                       "--seed", "5", "--format", "npy"]))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "manifest.jsonl").is_file() and len(read_manifest(out)) >= 12:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    report = medigan_iso.verify(out)
    assert report.ok, report
    assert report.files >= 12 and len(report.unfinished_runs) == 1
    assert len(report.not_landed) <= 1 and len(report.matched) >= report.files - 1
    assert read_runs(out)[0]["status"] == "running"
    regenerated = medigan_iso.verify(out, regenerate=True)
    assert regenerated.ok and regenerated.reproduced == report.files


def test_a_killed_session_save_leaves_no_unlisted_file(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "saved"
    script = textwrap.dedent(
        f"""
        from medigan_iso import Session
        with Session() as session:
            session.save({ZOO_ID!r}, 100000, {str(out)!r}, batch_size=2, seed=3)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "manifest.jsonl").is_file() and len(read_manifest(out)) >= 20:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the save ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    report = medigan_iso.verify(out)
    assert report.ok, report
    assert report.files >= 20 and report.extra == ()
    assert all(path.startswith(".medigan-iso-staging/") for path in report.partial)


# --- the dataset card -----------------------------------------------------------------------------------


def test_card_describes_the_model_and_says_how_to_verify(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "carded"
    assert generate_cli(out, "-n", "2", "--seed", "8", "--card", "--grid", str(out / "grid.png")) == 0
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "# Synthetic dataset: provenance zoo" in card
    assert "Publication: A paper (2026)" in card and "Licence: MIT" in card
    assert "| FID | 1.5 |" in card and "| turing_test.AUC | 0.5 |" in card
    assert "Modality: test" in card and "## Intended use" in card
    assert "\x1b" not in card and "phantoms \\x1b[31mred" in card  # catalogue text is neutralised
    assert f"medigan-iso verify --regenerate {out}" in card
    assert "--seed 8" in card
    assert "README.md" in hashes(out) and "grid.png" in hashes(out)
    assert medigan_iso.verify(out).ok
    assert medigan_iso.verify(out, regenerate=True).ok


# --- the demo models: numpy, torch, TensorFlow ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["demo-numpy", "demo-torch", "demo-tf"])
def test_demo_models_give_identical_manifest_hashes_for_the_same_seed(
    model_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_HOME", str(tmp_path_factory.getbasetemp() / "provenance-demo-home"))
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    monkeypatch.delenv("MEDIGAN_ISO_CONFIG", raising=False)
    for name in ("a", "b"):
        assert (
            generate_cli(tmp_path / name, "-n", "5", "--batch-size", "2", "--seed", "77", model=model_id) == 0
        )
    first, second = hashes(tmp_path / "a"), hashes(tmp_path / "b")
    assert len(first) == 5 and first == second
    assert len(set(first.values())) == 5  # five different images
    # split: batch 1 and 2 alone (samples 2..4) are the same bytes as in the whole request
    with Session() as session:
        part = session.generate(model_id, 3, batch_size=2, seed=77, batch_offset=1)
    from PIL import Image

    for i, array in enumerate(part, start=2):
        with Image.open(tmp_path / "a" / f"sample_{i:05d}.png") as png:
            assert np.array_equal(np.asarray(png), array[..., 0])


# --- the README's Provenance section, run as written ------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"


def _provenance_section() -> str:
    if not README.is_file():
        pytest.skip("README.md is not beside the tests (running from an installed copy)")
    return README.read_text(encoding="utf-8").split("## Provenance\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.slow
def test_readme_provenance_commands_and_example_work_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import re

    section = _provenance_section()
    home = tmp_path_factory.getbasetemp() / "provenance-demo-home"
    env = {k: v for k, v in os.environ.items() if k != "MEDIGAN_ISO_CONFIG"}
    env.update(MEDIGAN_ISO_HOME=str(home), MEDIGAN_ISO_CATALOGUE_URL="")
    bash = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
    outputs = []
    for command in [line.split("#", 1)[0].strip() for line in bash.strip().splitlines()]:
        argv = command.split()
        assert argv[0] == "medigan-iso"
        proc = subprocess.run(
            [sys.executable, "-m", "medigan_iso", *argv[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outputs.append(proc.stdout)
    quoted = re.search(r'"(reproduced \d+ of \d+)"', bash)
    assert quoted is not None and quoted.group(1) in outputs[-1]
    assert (tmp_path / "synth" / "README.md").is_file()
    monkeypatch.setenv("MEDIGAN_ISO_HOME", str(home))
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    monkeypatch.delenv("MEDIGAN_ISO_CONFIG", raising=False)
    python = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    namespace: dict[str, Any] = {"medigan_iso": medigan_iso}
    exec(python, namespace)
    whole, part, drawn = namespace["whole"], namespace["part"], namespace["drawn"]
    assert len(whole) == 200 and len(part) == 40
    assert all(np.array_equal(a, b) for a, b in zip_strict(part, whole[40:80]))
    assert isinstance(drawn.seed, int) and len(drawn) == 5


def test_only_a_killed_runs_last_line_may_name_a_file_that_never_landed(tmp_path: Path) -> None:
    from medigan_iso.manifest import ManifestWriter, RunContext

    context = RunContext({"model_id": "m", "batch_size": 1, "seed": 1})
    writer = ManifestWriter(tmp_path, context)  # never finished: the run was "killed"
    for name in ("a.npy", "b.npy", "c.npy"):
        writer.record(name, data=name.encode(), sample_index=ord(name[0]) - ord("a"))
    (tmp_path / "a.npy").write_bytes(b"a.npy")
    (tmp_path / "b.npy").write_bytes(b"b.npy")  # c.npy never landed
    report = medigan_iso.verify(tmp_path)
    assert report.ok and report.not_landed == ("c.npy",) and report.missing == ()
    (tmp_path / "b.npy").unlink()  # not the last line: a missing file, whatever the run's state
    assert medigan_iso.verify(tmp_path).missing == ("b.npy",)
    (tmp_path / "b.npy").write_bytes(b"b.npy")
    (tmp_path / "d.npy").write_bytes(b"unrecorded")  # an unlisted file fails even for a killed run
    assert medigan_iso.verify(tmp_path).extra == ("d.npy",)
    (tmp_path / "d.npy").unlink()
    writer.finish("complete")  # a finished run's files must all be there
    assert medigan_iso.verify(tmp_path).missing == ("c.npy",)
