"""Fixtures every test module may use, and the rule that a skip in CI is a failure unless it is legitimate.

- ``shared_fixtures``: the folder with the real upstream catalogues, kept in ``tests/data/``
  (``medigan_global.json`` and the 2022 one, copied from medigan's repository) so a fresh clone runs
  every catalogue test; a missing copy is an error, never a skip.
- ``home``: a fresh ``MEDIGAN_ISO_HOME`` per test. The uv cache stays shared across runs through
  ``$MEDIGAN_ISO_UV_CACHE`` (tox sets it) so real env builds reuse downloaded wheels.

Skips in CI (issue 19): with ``CI`` set, a test that skips for want of something the project installs
or ships (bubblewrap that cannot create namespaces, uv, the catalogue copies, our own modules) hides a
regression behind a green run. ``pytest_runtest_makereport`` and ``pytest_make_collect_report`` turn
every such skip into a failure; only reasons starting with one of ``CI_ALLOWED_SKIP_PREFIXES`` (facts of
the machine that no install step can change) stay skips.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_DATA = Path(__file__).resolve().parent / "data"

# Reasons a test may still skip in CI. Keep this list short and each entry a fact about the machine.
CI_ALLOWED_SKIP_PREFIXES = (
    "no GPU",  # CUDA paths need a device no CI machine here has
    "no Python ",  # another interpreter version (tests/_interpreters.py first proves none is installed)
    "not POSIX",  # POSIX-only behaviour on another OS
    "host is root",  # a non-root-host case; CI runs as root (the root cases run instead)
)


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def ci_forbids(reason: str) -> bool:
    """Whether a skip with ``reason`` must fail the run in CI."""
    return in_ci() and not reason.startswith(CI_ALLOWED_SKIP_PREFIXES)


def _skip_reason(longrepr: Any) -> str:
    # A skip's longrepr is (path, lineno, "Skipped: <reason>").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        message = str(longrepr[2])
        return message.removeprefix("Skipped: ")
    return str(longrepr)


def _as_ci_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = _skip_reason(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in CI ({reason!r}): CI must not skip for want of something the project installs or "
        "ships; fix the CI machine (.ci/run) or, for a fact of the machine, extend "
        "CI_ALLOWED_SKIP_PREFIXES in tests/conftest.py"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and ci_forbids(_skip_reason(report.longrepr)):
        _as_ci_failure(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if report.skipped and ci_forbids(_skip_reason(report.longrepr)):
        _as_ci_failure(report)


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    for name in ("medigan_global.json", "medigan_global_2022.json"):
        assert (UPSTREAM_DATA / name).is_file(), f"{UPSTREAM_DATA / name} is missing: restore it from git"
    return UPSTREAM_DATA


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "medigan-iso-home"
    monkeypatch.setenv("MEDIGAN_ISO_HOME", str(root))
    monkeypatch.setenv("MEDIGAN_ISO_OFFLINE", "1")
    return root


@pytest.fixture
def upstream_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave the bundled demo models out: for tests that compare with medigan 1.0 on upstream entries."""
    monkeypatch.setenv("MEDIGAN_ISO_BUNDLED", "0")
