"""A researcher's 2022 training env (issue 18): Python 3.9, torch 1.13.1 and numpy 1.23.5.

medigan_iso installs into it without changing any installed package (pip's dry run installs nothing that
is already there, and after the real install every earlier package has its earlier version), then the same
interpreter generates with demo-torch (torch 2.13 and numpy 2.x in the model's own env) and feeds the
samples to its own torch 1.13: two torches in one workflow, neither disturbed.

torch 1.13.1 comes from PyPI (the only index reachable here; its Linux wheel is the CUDA build, about
1.7 GB with its nvidia-* dependencies) through the one shared uv cache (MEDIGAN_ISO_UV_CACHE), so a
machine downloads it once; later runs link it from the cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _interpreters import installed_pythons

REPO = Path(__file__).resolve().parents[1]
PINNED_2022 = {"torch": "1.13.1", "numpy": "1.23.5"}

slow = pytest.mark.slow


def _pythons(version: str) -> list[Path]:
    """Interpreters of ``version`` that run (a pyenv shim of a version not selected does not)."""
    return [p for p in installed_pythons(version) if "shims" not in p.parts]


def _uv() -> str:
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        assert found, "uv is a dependency of medigan_iso and must be installed"
        return found


def _run(argv: list[Any], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, **kwargs)
    assert done.returncode == 0, f"{argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _freeze(python: Path) -> dict[str, str]:
    out = _run([python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"]).stdout
    return {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(out)}


@pytest.fixture(scope="module")
def env2022(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    pythons = _pythons("3.9") or _pythons("3.10")
    if not pythons:
        pytest.skip("no Python 3.9 or 3.10 on this machine; install one, e.g. uv python install 3.9")
    root = tmp_path_factory.mktemp("env2022")
    venv = root / "venv"
    python = venv / "bin" / "python"
    uv_env = {**os.environ, "UV_CACHE_DIR": os.environ.get("MEDIGAN_ISO_UV_CACHE", "")}
    if not uv_env["UV_CACHE_DIR"]:
        del uv_env["UV_CACHE_DIR"]
    for var in ("VIRTUAL_ENV", "UV_PYTHON", "PYTHONPATH"):
        uv_env.pop(var, None)
    uv = _uv()
    _run([uv, "venv", "--seed", "--python", pythons[0], venv], env=uv_env)  # --seed: pip, like a venv
    _run(
        [uv, "pip", "install", "--python", python, *(f"{k}=={v}" for k, v in PINNED_2022.items())],
        env=uv_env,
    )
    wheel_dir = root / "dist"
    _run([uv, "build", "--wheel", "--out-dir", wheel_dir, REPO], env=uv_env)
    (wheel,) = wheel_dir.glob("medigan_iso-*.whl")
    yield {"python": python, "wheel": wheel, "root": root}


@slow
def test_installing_into_the_2022_env_changes_no_installed_package(env2022: dict[str, Any]) -> None:
    python = env2022["python"]
    before = _freeze(python)
    assert {k: before[k] for k in PINNED_2022} == PINNED_2022
    report = env2022["root"] / "report.json"
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--disable-pip-version-check",
            "--report",
            report,
            env2022["wheel"],
        ]
    )
    planned = {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "medigan-iso" in planned
    replaced = {name: (before[name], v) for name, v in planned.items() if name in before}
    assert replaced == {}, f"pip would change installed packages (old, new): {replaced}"

    _run([python, "-m", "pip", "install", "--disable-pip-version-check", env2022["wheel"]])
    after = _freeze(python)
    changed = {name: (v, after.get(name)) for name, v in before.items() if after.get(name) != v}
    assert changed == {}, f"installing medigan_iso changed installed packages (old, new): {changed}"
    assert set(after) - set(before) >= {"medigan-iso", "requests", "jsonschema", "msgpack", "uv"}


@slow
def test_the_2022_env_generates_with_torch_2_13_and_feeds_its_own_torch_1_13(
    env2022: dict[str, Any], tmp_path: Path
) -> None:
    python = env2022["python"]
    if "medigan-iso" not in _freeze(python):  # run alone: install first (the previous test checks it)
        _run([python, "-m", "pip", "install", "--disable-pip-version-check", env2022["wheel"]])
    py311 = _pythons("3.11")
    if not py311:
        pytest.skip("no Python 3.11 on this machine (the local torch 2.13 CPU wheel is for CPython 3.11)")
    script = """
import json, sys
import numpy as np
import torch
import medigan_iso

with medigan_iso.Session() as session:
    from_torch = session.generate("demo-torch", 4, seed=7, output="float")
    from_numpy = session.generate("demo-numpy", 4, seed=7, output="float")
    info = session.runner_info("demo-torch")
images = np.stack(from_torch)  # (N, H, W, C) from the model env
batch = torch.from_numpy(images).permute(0, 3, 1, 2)  # into the host's torch 1.13, NCHW
features = torch.nn.Conv2d(batch.shape[1], 2, 3)(batch)
print(json.dumps({
    "host_python": "%d.%d" % sys.version_info[:2],
    "host_torch": torch.__version__,
    "host_numpy": np.__version__,
    "model_torch": info["packages"]["torch"],
    "model_packages": sorted(info["packages"]),
    "model_python": info["python"],
    "shape": list(batch.shape),
    "dtype": str(batch.dtype),
    "features": list(features.shape),
    "max_diff_to_numpy_demo": float(np.abs(np.stack(from_torch) - np.stack(from_numpy)).max()),
    "torch_loaded_from": torch.__file__,
}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # demo-torch asks for Python >= 3.10: envs discovers one (3.11 first, the local CPU wheel's Python)
    env["PATH"] = os.pathsep.join([str(py311[0].parent), env.get("PATH", "")])
    env["MEDIGAN_ISO_HOME"] = str(tmp_path / "home")
    env["MEDIGAN_ISO_CATALOGUE_URL"] = ""
    env.pop("MEDIGAN_ISO_CONFIG", None)
    done = _run([python, "-c", script], env=env, cwd=tmp_path, timeout=1800)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["host_python"] in ("3.9", "3.10")
    assert result["host_torch"].startswith("1.13.1")
    assert result["host_numpy"] == "1.23.5"
    assert result["model_torch"].startswith("2.13.0")
    assert "torch" in result["model_packages"]
    assert result["shape"][:2] == [4, 1] and result["dtype"] == "torch.float32"
    assert result["features"] == [4, 2, result["shape"][2] - 2, result["shape"][3] - 2]
    assert result["max_diff_to_numpy_demo"] <= 1e-4
    assert str(env2022["root"]) in result["torch_loaded_from"]
    # neither torch was disturbed: the 2022 env still holds exactly its pins
    after = _freeze(python)
    assert {k: after[k] for k in PINNED_2022} == PINNED_2022


def test_uv_tool_install_gives_the_cli_in_its_own_env(tmp_path: Path) -> None:
    """`uv tool install medigan-iso` (README): the CLI in an env of its own, no env of the caller touched."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(UV_TOOL_DIR=str(tmp_path / "tools"), UV_TOOL_BIN_DIR=str(tmp_path / "bin"))
    if os.environ.get("MEDIGAN_ISO_UV_CACHE"):
        env["UV_CACHE_DIR"] = os.environ["MEDIGAN_ISO_UV_CACHE"]
    uv = _uv()
    _run([uv, "build", "--wheel", "--out-dir", tmp_path / "dist", REPO], env=env)
    (wheel,) = (tmp_path / "dist").glob("medigan_iso-*.whl")
    _run([uv, "tool", "install", wheel], env=env)
    cli = tmp_path / "bin" / "medigan-iso"
    env.update(MEDIGAN_ISO_HOME=str(tmp_path / "home"), MEDIGAN_ISO_CATALOGUE_URL="")
    listed = _run([cli, "list"], env=env, cwd=tmp_path).stdout
    assert "demo-numpy" in listed
    assert (tmp_path / "tools" / "medigan-iso").is_dir()  # the tool's own env
