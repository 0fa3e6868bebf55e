"""With CI set, a skip for want of something the project installs or ships fails the run (conftest.py).

Judged on a real pytest run in a subprocess over a small test file, with tests/conftest.py copied beside
it: once without CI (every skip stays a skip, so the test can tell the two apart) and once with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SAMPLE = """
import pytest

def test_bubblewrap():
    pytest.skip("bubblewrap cannot run here: no namespaces")

@pytest.mark.skipif(True, reason="uv is missing")
def test_uv():
    pass

def test_no_gpu():
    pytest.skip("no GPU on this machine")

def test_other_python():
    pytest.skip("no Python 3.8 on this machine (uv python find found none)")

@pytest.mark.xfail(reason="a known failure is not a skip")
def test_xfail():
    assert False

def test_passes():
    pass
"""
SAMPLE_COLLECTION = """
import pytest
pytest.importorskip("medigan_iso_no_such_module", reason="our own module is missing")

def test_never_collected():
    pass
"""


def _run(tmp_path: Path, *, ci: str | None, sample: str = SAMPLE) -> subprocess.CompletedProcess[str]:
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(sample)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_without_ci_every_skip_stays_a_skip(tmp_path: Path) -> None:
    result = _run(tmp_path, ci=None)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 4 skipped, 1 xfailed" in result.stdout
    module = _run(tmp_path, ci=None, sample=SAMPLE_COLLECTION)
    assert module.returncode == 5 and "1 skipped" in module.stdout, module.stdout  # 5: no test ran


def test_in_ci_only_allow_listed_skips_stay_skips(tmp_path: Path) -> None:
    result = _run(tmp_path, ci="true")
    assert result.returncode == 1, result.stdout
    out = result.stdout
    # the setup-phase skip (skipif) becomes an error, the call-phase one a failure
    assert "1 failed, 1 passed, 2 skipped, 1 xfailed, 1 error" in out, out
    assert "skipped in CI ('bubblewrap cannot run here: no namespaces')" in out
    assert "skipped in CI ('uv is missing')" in out
    assert "SKIPPED" in out and "no GPU on this machine" in out and "no Python 3.8 on this machine" in out


def test_in_ci_a_skipped_module_is_a_collection_error(tmp_path: Path) -> None:
    result = _run(tmp_path, ci="1", sample=SAMPLE_COLLECTION)
    assert result.returncode == 2, result.stdout  # pytest: interrupted by a collection error
    assert "skipped in CI ('our own module is missing')" in result.stdout


@pytest.mark.parametrize("value", ["", None])
def test_an_empty_ci_variable_is_not_ci(tmp_path: Path, value: str | None) -> None:
    assert _run(tmp_path, ci=value).returncode == 0
