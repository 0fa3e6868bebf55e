"""Issue 16 against real runners: model text is neutralised, error frames always arrive, logs are bounded.

A hostile package (``_hostile``) runs in a real uv env through ``RunnerProcess``; nothing of ours is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _envs_for_tests import build_runner_env
from _hostile import write_hostile

from medigan_iso.errors import ModelError, RunnerCrashedError
from medigan_iso.runner_process import RunnerProcess


@pytest.fixture(scope="session")
def numpy_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_runner_env(tmp_path_factory.mktemp("env-numpy"), ["numpy", "msgpack"])


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hostile(tmp_path_factory.mktemp("packages") / "hostile")


@pytest.fixture
def runner(numpy_env: Path, hostile: Path, tmp_path: Path) -> Iterator[RunnerProcess]:
    with RunnerProcess.start(numpy_env, log_path=tmp_path / "runner.log", inactivity_timeout_s=60) as proc:
        proc.load(hostile, model_file=hostile / "weights.npy", package_name="hostile")
        yield proc


def _generate(proc: RunnerProcess, attack: str, n: int = 1, **kwargs: Any) -> list[Any]:
    return [s for batch in proc.generate(n, batch_size=1, kwargs={"attack": attack, **kwargs}) for s in batch]


def _printable_lines(text: str) -> bool:
    return all(ch.isprintable() for line in text.split("\n") for ch in line)


def test_escape_sequences_in_a_model_error_are_escaped_and_no_line_is_forged(runner: RunnerProcess) -> None:
    with pytest.raises(ModelError) as info:
        _generate(runner, "escape_error")
    text = str(info.value)
    assert "\x1b" not in text and "\x07" not in text
    assert _printable_lines(text)
    assert "\\x1b]52;c;" in text and "\\x1b[2J" in text
    assert not any(line.startswith("medigan-iso:") for line in text.split("\n"))
    assert "Evil\\x1b]0;pwned" in text
    # the raw text stays on the attributes for programs; only what reaches a human is neutralised
    assert "\x1b]52" in info.value.remote_message


def test_escape_sequences_in_a_crashed_runners_stderr_tail_are_escaped(runner: RunnerProcess) -> None:
    with pytest.raises(RunnerCrashedError) as info:
        _generate(runner, "escape_stderr_crash")
    text = str(info.value)
    assert info.value.returncode == 3
    assert "\x1b" not in text and _printable_lines(text)
    assert "dying" in text and "\\x1b[2J" in text
    assert not any(line.startswith("medigan-iso:") for line in text.split("\n"))


def test_a_non_utf8_error_message_becomes_model_error_and_the_runner_lives(runner: RunnerProcess) -> None:
    with pytest.raises(ModelError) as info:
        _generate(runner, "non_utf8_error")
    assert info.value.remote_type == "ValueError"
    assert "bad bytes \\udcff\\udcfe" in info.value.remote_message
    assert "\x1b" not in str(info.value)
    assert len(_generate(runner, "none", n=2)) == 2


def test_a_5_mib_error_message_becomes_a_capped_model_error_and_the_runner_lives(
    runner: RunnerProcess,
) -> None:
    with pytest.raises(ModelError) as info:
        _generate(runner, "huge_error")
    assert info.value.remote_type == "ValueError"
    assert info.value.remote_message.startswith("AAAA")
    assert info.value.remote_message.endswith(f"...[+{5 * 1024 * 1024 - 64 * 1024} chars]")
    assert len(str(info.value)) < 40_000
    assert len(_generate(runner, "none", n=2)) == 2
