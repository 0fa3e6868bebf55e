"""Test helper: real uv venvs for the three bundled demo packages, and a driver that calls their generate().

Temporary by design: once medigan_iso.envs and the runner are merged, the lead replaces ``build_env`` with
``envs.ensure_env`` and ``run_calls`` with the runner; the assertions in test_demo_models.py stay. Each env
is built from the dependencies and python_requires in the bundled catalogue entry, with real uv, sharing
the test uv cache (MEDIGAN_ISO_UV_CACHE); find-links come from PIP_FIND_LINKS (uv does not read pip's
settings), never from a hard-coded path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from packaging.specifiers import SpecifierSet

__all__ = [
    "DEMO_CATALOGUE_NAME",
    "DEMO_IDS",
    "DemoEnvs",
    "bundled_catalogue",
    "data_dir",
    "local_tree_sha256",
    "run_calls",
]

DEMO_IDS = ("demo-numpy", "demo-torch", "demo-tf")
# The demo entries live in their own file beside bundled_catalogue.json until they are folded into it: the
# catalogue tests on main still assume an empty bundled catalogue. Then set this to "bundled_catalogue.json".
DEMO_CATALOGUE_NAME = "demo_catalogue.json"
ENV_BUILD_TIMEOUT_S = 900
DRIVER_TIMEOUT_S = 300

# Runs inside a model env (Python >= 3.8, numpy only besides the model's framework): calls the package's
# generate() once per requested call and saves every returned array with np.savez (no pickles).
DRIVER = r"""
import importlib.util, json, sys, traceback
import numpy as np

spec_in = json.loads(open(sys.argv[1]).read())
spec = importlib.util.spec_from_file_location("demo_pkg", spec_in["package_dir"] + "/__init__.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
report = {"numpy": np.__version__, "python": sys.version.split()[0], "calls": {}}
arrays = {}
for call in spec_in["calls"]:
    kwargs = dict(call.get("kwargs", {}))
    if call.get("latent_file"):
        latent = np.load(call["latent_file"], allow_pickle=False)
        kwargs["input_latent_vector"] = latent.tolist() if call.get("latent_as_list") else latent
    if call.get("seed") is not None:
        np.random.seed(call["seed"])
    try:
        result = module.generate(
            spec_in["model_file"], call["num_samples"], call.get("output_path"),
            call.get("save_images", False), **kwargs
        )
    except Exception as exc:
        report["calls"][call["name"]] = {"error_type": type(exc).__name__, "error": str(exc)}
        continue
    entry = {"result_type": type(result).__name__}
    if isinstance(result, list):
        entry["item_types"] = sorted({type(item).__name__ for item in result})
        entry["count"] = len(result)
        if result:
            arrays[call["name"]] = np.stack(result)
    report["calls"][call["name"]] = entry
np.savez(sys.argv[2], **arrays)
with open(sys.argv[3], "w") as handle:
    json.dump(report, handle)
"""


def data_dir() -> Path:
    """medigan_iso/data of the installed package (tox installs the wheel, so this checks what it ships)."""
    return Path(str(resources.files("medigan_iso") / "data"))


def bundled_catalogue() -> dict[str, Any]:
    return json.loads((data_dir() / DEMO_CATALOGUE_NAME).read_text(encoding="utf-8"))


def local_tree_sha256(directory: Path) -> str:
    """LOCAL COPY: replace with medigan_iso.packages.tree_sha256 after merge.

    sha256 over every file under ``directory`` (skipping __pycache__ directories and *.pyc files), in sorted
    order of relative POSIX paths, of ``path + b"\\0" + str(len(content)).encode() + b"\\0" + content``.
    """
    digest = hashlib.sha256()
    files = [
        p
        for p in directory.rglob("*")
        if p.is_file() and "__pycache__" not in p.relative_to(directory).parts and p.suffix != ".pyc"
    ]
    for rel in sorted(p.relative_to(directory).as_posix() for p in files):
        content = (directory / rel).read_bytes()
        digest.update(rel.encode() + b"\0" + str(len(content)).encode() + b"\0" + content)
    return digest.hexdigest()


def _uv() -> str:
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise RuntimeError("uv not found: install the 'uv' package (a medigan-iso dependency)") from None
        return found


def _python_request(python_requires: str | None) -> str:
    """The test interpreter's minor version when it satisfies python_requires, else the specifier itself."""
    current = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python_requires is None or f"{current}.0" in SpecifierSet(python_requires):
        return current
    return python_requires


def build_env(requirements: Sequence[str], dest: Path, *, python_requires: str | None) -> Path:
    """Build a venv at ``dest`` with real uv and install ``requirements``; return its python."""
    uv = _uv()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    cache = os.environ.get("MEDIGAN_ISO_UV_CACHE")
    cache_args = ["--cache-dir", cache] if cache else []
    find_links = [
        arg for link in os.environ.get("PIP_FIND_LINKS", "").split() for arg in ("--find-links", link)
    ]
    subprocess.run(
        [uv, "venv", "-q", *cache_args, "-p", _python_request(python_requires), str(dest)],
        check=True, env=env, timeout=ENV_BUILD_TIMEOUT_S,
    )  # fmt: skip
    python = dest / "bin" / "python"
    subprocess.run(
        [uv, "pip", "install", "-q", *cache_args, *find_links, "-p", str(python), *requirements],
        check=True, env=env, timeout=ENV_BUILD_TIMEOUT_S,
    )  # fmt: skip
    return python


class DemoEnvs:
    """Lazily built env per demo model id, under one session temp dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pythons: dict[str, Path] = {}

    def python(self, model_id: str) -> Path:
        if model_id not in self._pythons:
            execution = bundled_catalogue()[model_id]["execution"]
            self._pythons[model_id] = build_env(
                execution["dependencies"],
                self.root / model_id,
                python_requires=execution.get("python_requires"),
            )
        return self._pythons[model_id]


def run_calls(
    python: Path, model_id: str, calls: Sequence[Mapping[str, Any]], *, workdir: Path
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run ``calls`` against the bundled package of ``model_id`` in the env of ``python`` (isolated mode).

    Returns the driver's report (numpy version, per-call result types or error) and the arrays by call name.
    """
    execution = bundled_catalogue()[model_id]["execution"]
    package_dir = data_dir() / execution["package_link"]
    workdir.mkdir(parents=True, exist_ok=True)
    spec = {
        "package_dir": str(package_dir),
        "model_file": str(package_dir / (execution["model_name"] + execution["extension"])),
        "calls": list(calls),
    }
    (workdir / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    (workdir / "driver.py").write_text(DRIVER, encoding="utf-8")
    out_npz, out_json = workdir / "arrays.npz", workdir / "report.json"
    command = [
        str(python),
        "-I",
        str(workdir / "driver.py"),
        str(workdir / "spec.json"),
        str(out_npz),
        str(out_json),
    ]
    proc = subprocess.run(
        command,
        capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S, cwd=workdir,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(workdir), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"driver for {model_id} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    report = json.loads(out_json.read_text(encoding="utf-8"))
    with np.load(out_npz, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return report, arrays
