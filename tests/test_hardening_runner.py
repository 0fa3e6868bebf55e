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

from medigan_iso.errors import (
    ModelError,
    ProtocolError,
    ResourceLimitError,
    RunnerCrashedError,
    RunnerTimeoutError,
)
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


def test_a_model_trickling_a_frame_byte_by_byte_hits_the_inactivity_clock(
    numpy_env: Path, hostile: Path, tmp_path: Path
) -> None:
    # issue 16: the clock restarted on every byte, so a trickling model held the host forever. Here the
    # frame takes ~6 s at one byte per 0.1 s; the clock is 1 s per frame.
    with RunnerProcess.start(numpy_env, log_path=tmp_path / "r.log", inactivity_timeout_s=1.0) as proc:
        proc.load(hostile, model_file=hostile / "weights.npy", package_name="hostile")
        with pytest.raises(RunnerTimeoutError) as info:
            _generate(proc, "trickle_frame")
        assert info.value.phase == "inactivity"


def test_a_4_gib_frame_is_refused_at_its_prefix(runner: RunnerProcess) -> None:
    with pytest.raises(ProtocolError) as info:
        _generate(runner, "huge_frame")
    assert "exceeds" in str(info.value)


def test_samples_larger_than_declared_are_refused(runner: RunnerProcess) -> None:
    # 2048 x 2048 float64 samples (32 MiB) from a model declared at 1 MiB per sample
    stream = runner.generate(2, batch_size=2, kwargs={"attack": "oversized"}, max_sample_bytes=1024**2)
    with pytest.raises(ProtocolError) as info:
        list(stream)
    assert "exceeds 2097152" in str(info.value)


def test_within_the_declared_size_the_same_request_streams(runner: RunnerProcess) -> None:
    stream = runner.generate(2, batch_size=2, kwargs={"attack": "none"}, max_sample_bytes=1024**2)
    assert [len(batch) for batch in stream] == [2]
    assert stream.bytes_received == 2 * 8 * 8 and stream.batches == 1


def test_more_batch_frames_than_the_request_allows_is_a_protocol_error(runner: RunnerProcess) -> None:
    stream = runner.generate(2, batch_size=2, kwargs={"attack": "forge_batches"}, max_sample_bytes=64)
    with pytest.raises(ProtocolError) as info:
        list(stream)
    assert "2 batch frames for a request of at most 1" in str(info.value)


def test_more_bytes_than_the_request_allows_is_a_resource_limit_error(runner: RunnerProcess) -> None:
    # 3 samples of at most 64 bytes: two legal-sized frames of 2 x 64 bytes exceed the 192-byte total
    stream = runner.generate(3, batch_size=2, kwargs={"attack": "forge_batches"}, max_sample_bytes=64)
    with pytest.raises(ResourceLimitError) as info:
        list(stream)
    assert info.value.limit == "output"
    assert "256 bytes for 3 samples" in str(info.value)
