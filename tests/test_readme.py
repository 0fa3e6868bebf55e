"""README.md's quick start, run as written.

The first command (install, then generate 16 images with the bundled numpy demo) runs in a fresh
temporary copy of the checkout, with a fresh virtualenv's ``python3`` first on PATH and a fresh
MEDIGAN_ISO_HOME. The second command (the test suite) is what .ci/run runs; a test checks they agree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".tox",
    ".venv",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    "demo-output",
    ".*_cache",
    ".hypothesis",
)


def quick_start_commands() -> list[str]:
    if not README.is_file():
        pytest.skip("README.md is not beside the tests (running from an installed copy)")
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_second() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in command for command in commands)
    assert commands[1] in (REPO / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.slow
def test_first_command_installs_and_generates_16_images_in_a_fresh_directory(tmp_path: Path) -> None:
    command = quick_start_commands()[0]
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO, checkout, ignore=COPY_IGNORE)
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{tmp_path / 'venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["MEDIGAN_ISO_HOME"] = str(tmp_path / "home")
    env.pop("MEDIGAN_ISO_CONFIG", None)
    proc = subprocess.run(
        ["bash", "-c", command], cwd=checkout, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = checkout / "demo-output"
    samples = sorted(out.glob("sample_*.png"))
    assert [p.name for p in samples] == [f"sample_{i:05d}.png" for i in range(16)]
    assert (out / "grid.png").stat().st_size > 0
    assert "demo-numpy: wrote 16 file(s) for 16 sample(s)" in proc.stdout
    # the host venv got medigan-iso but none of the model's env: its generate ran in a separate env
    listed = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "medigan-iso==" in listed and "torch" not in listed
    assert sys.executable not in proc.stdout
