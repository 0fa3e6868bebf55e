"""`medigan-iso generate --sandbox/--strict` and a bad $MEDIGAN_ISO_SANDBOX, end to end on the numpy demo."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medigan_iso import Generators
from medigan_iso.cli import main


@pytest.fixture
def demo_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    monkeypatch.setenv("MEDIGAN_ISO_OFFLINE", "0")  # a cold uv cache may need the index for numpy
    monkeypatch.delenv("MEDIGAN_ISO_CONFIG", raising=False)
    monkeypatch.delenv("MEDIGAN_ISO_SANDBOX", raising=False)
    return home


@pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (apt-get install bubblewrap)"
)
def test_generate_with_sandbox_require_and_strict_writes_the_images(demo_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["generate", "demo-numpy", "-n", "3", "-o", str(out), "--sandbox", "require", "--strict"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir() if p.name not in ("manifest.jsonl", "run.json")) == [
        f"sample_{i:05d}.png" for i in range(3)
    ]


def test_an_unknown_sandbox_policy_in_the_environment_is_a_one_line_error(
    demo_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_SANDBOX", "loose")
    assert main(["generate", "demo-numpy", "-n", "1", "-o", str(tmp_path / "never")]) == 1
    err = capsys.readouterr().err
    assert "MEDIGAN_ISO_SANDBOX must be one of off, auto, require, got 'loose'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "never").exists() or not any((tmp_path / "never").iterdir())


@pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (apt-get install bubblewrap)"
)
def test_generators_facade_runs_its_models_under_the_requested_sandbox(demo_home: Path) -> None:
    with Generators(sandbox="require") as generators:
        samples = generators.generate(
            "demo-numpy", num_samples=2, save_images=False, install_dependencies=True
        )
        layers = generators.session.runner_info("demo-numpy")["sandbox"]
    assert len(samples) == 2
    assert layers["seccomp"] and layers["landlock_enforced"]
