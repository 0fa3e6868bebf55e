"""README.md's Python examples of the Generators facade, run as written in a fresh home.

The blocks of "medigan's Generators API" run in order in one fresh interpreter (they share `generators`),
with MPLBACKEND=Agg, an empty cwd and a fresh MEDIGAN_ISO_HOME; appended checks then test what the
comments claim. The "Catalogue and search" block runs with its placeholder path replaced by the upstream
catalogue in tests/data.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
UPSTREAM = Path(__file__).resolve().parent / "data" / "medigan_global.json"

CHECKS = """
import numpy as np, torch
runs = list(Path("output/demo-numpy").iterdir())
assert len(runs) == 1, runs
assert sorted(p.name for p in runs[0].iterdir()) == [f"batch_0_demo_{i}.png" for i in range(10)] + [
    "manifest.jsonl",
    "run.json",
]
assert dataset.chunks_generated == 1 and len(dataset) == 100_000
assert first.shape == (64, 64, 1) and first.dtype == np.uint8
assert tuple(batch["sample"].shape) == (32, 64, 64, 1) and batch["sample"].dtype == torch.uint8
assert isinstance(stream, torch.utils.data.IterableDataset) and stream.num_samples is None
assert len(samples) == 4 and all(s.dtype == np.uint8 for s in samples)
assert (count, same) == (1, True)
assert len(three) == 3 and three[0].dtype == np.float32
print("README-OK")
"""


def _section_blocks(title: str) -> list[str]:
    if not README.is_file():
        pytest.skip("README.md is not beside the tests (running from an installed copy)")
    text = README.read_text(encoding="utf-8")
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _run(script: str, cwd: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MEDIGAN_ISO_") or k == "MEDIGAN_ISO_UV_CACHE"
    }
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_generators_api_examples_run_as_written(tmp_path: Path) -> None:
    blocks = _section_blocks("medigan's Generators API")
    assert len(blocks) == 4
    script = "from pathlib import Path\n" + "\n".join(blocks) + textwrap.dedent(CHECKS)
    proc = _run(
        script,
        tmp_path,
        {
            "MEDIGAN_ISO_HOME": str(tmp_path / "home"),
            "MEDIGAN_ISO_CATALOGUE_URL": "",
            "MPLBACKEND": "Agg",
        },
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.strip().endswith("README-OK")


def test_catalogue_and_search_example_runs_as_written(tmp_path: Path) -> None:
    (block,) = _section_blocks("Catalogue and search")
    assert 'Generators(config="path/to/global.json")' in block
    script = block.replace("path/to/global.json", str(UPSTREAM)) + textwrap.dedent(
        """
        found = [m.model_id for m in medigan_iso.search(["mammography", "dcgan"])]
        assert found == ["00001_DCGAN_MMG_CALC_ROI", "00002_DCGAN_MMG_MASS_ROI", "00005_DCGAN_MMG_MASS_ROI"]
        assert medigan_iso.info("00019").image_size == (1024, 1024, 1)
        assert generators.get_config_by_id("00001", "execution.generate_method.name") == "generate"
        print("README-OK")
        """
    )
    proc = _run(
        script,
        tmp_path,
        {
            "MEDIGAN_ISO_HOME": str(tmp_path / "home"),
            "MEDIGAN_ISO_OFFLINE": "1",
            "MEDIGAN_ISO_CONFIG": str(UPSTREAM),
            "MEDIGAN_ISO_BUNDLED": "0",
        },
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.strip().endswith("README-OK")
