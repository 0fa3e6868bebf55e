"""A runner that sends well-formed but wrong frames, or dies before reading, judged by the real host side.

The peer is a real subprocess speaking the real protocol (``medigan_iso_runner.protocol``): a scripted
stand-in started through ``RunnerProcess.start``'s launcher prefix, which receives the runner's argv and
ignores it. Each scenario sends a valid hello, answers ``load`` with ``ready``, and then does one wrong
thing where a generate request expects batches; the ``ok`` scenario shows the same script passing, so the
errors come from the frames and not from the stand-in.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from medigan_iso.errors import ProtocolError, RunnerCrashedError
from medigan_iso.runner_process import RunnerProcess

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from medigan_iso_runner import protocol
    from medigan_iso_runner.__main__ import hello_header

    scenario = sys.argv[1]
    rin, out = os.fdopen(0, "rb", buffering=0), os.fdopen(1, "wb", buffering=0)

    def send(header, arrays=()):
        protocol.write_frame(out.write, header, arrays)

    hello = hello_header()
    hello["pid"] = os.getpid()
    send(hello)
    if scenario == "exit-after-hello":
        os._exit(0)
    while True:
        frame = protocol.read_frame(rin.readinto)
        if frame is None or frame.kind == "shutdown":
            sys.exit(0)
        if frame.kind == "load":
            send({"kind": "ready", "module": "scripted", "load_s": 0.0})
            continue
        request = frame.header["request"]
        image = np.zeros((2, 2), dtype=np.uint8)
        batch = {"kind": "batch", "request": request, "index": 0, "requested": 1, "count": 1}
        if scenario == "ok":
            send(dict(batch, samples=[{"a": 0}]), [image])
            send({"kind": "done", "request": request, "requested": 1, "produced": 1, "shortfall": 0,
                  "cancelled": False, "files": 0})
        elif scenario == "wrong-request":
            send(dict(batch, request=request + 1, samples=[{"a": 0}]), [image])
        elif scenario == "bad-tree":
            send(dict(batch, samples=[{"a": 1}]), [image])  # names an array that was not sent
        elif scenario == "not-a-list":
            send(dict(batch, samples={"t": [{"a": 0}]}), [image])  # a tuple where a list must be
        elif scenario == "wrong-kind":
            send({"kind": "ready", "request": request, "module": "scripted", "load_s": 0.0})
        elif scenario == "host-kind":
            send({"kind": "generate", "request": request})
        elif scenario == "too-many":
            send(dict(batch, samples=[{"a": 0}, {"a": 1}]), [image, image])
        rin.read()  # wait for the host to hang up
        sys.exit(0)
    """
)


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Callable[[str], RunnerProcess]]:
    script = tmp_path / "scripted_runner.py"
    script.write_text(SCRIPT)
    package = tmp_path / "pkg"
    package.mkdir()
    started: list[RunnerProcess] = []

    def start(scenario: str) -> RunnerProcess:
        runner = RunnerProcess.start(
            sys.executable,
            log_path=tmp_path / f"{scenario}.log",
            command_prefix=[sys.executable, "-I", str(script), scenario, "--"],
            inactivity_timeout_s=60,
        )
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.close()


def _generate(runner: RunnerProcess, package: Path) -> list[object]:
    runner.load(package, model_file=package / "weights.npy", package_name="pkg")
    return [sample for batch in runner.generate(1, batch_size=1) for sample in batch]


def test_the_scripted_runner_passes_when_it_follows_the_protocol(
    scripted: Callable[[str], RunnerProcess], tmp_path: Path
) -> None:
    runner = scripted("ok")
    [sample] = _generate(runner, tmp_path / "pkg")
    assert sample.shape == (2, 2)


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("wrong-request", "runner answered request 2, not 1"),
        ("bad-tree", "malformed batch from the runner:"),
        ("not-a-list", "a batch frame must carry a list of samples"),
        ("wrong-kind", "runner sent 'ready' during generate"),
        ("host-kind", "runner sent a host-only 'generate' frame"),
        ("too-many", "the runner sent 2 samples for a request of 1"),
    ],
)
def test_a_wrong_frame_is_a_protocol_error_and_stops_the_runner(
    scripted: Callable[[str], RunnerProcess],
    tmp_path: Path,
    scenario: str,
    message: str,
) -> None:
    runner = scripted(scenario)
    with pytest.raises(ProtocolError) as info:
        _generate(runner, tmp_path / "pkg")
    assert message in str(info.value)
    with pytest.raises(Exception, match="this runner has stopped"):
        runner.generate(1, batch_size=1)


def test_a_runner_gone_before_the_host_sends_is_a_crash_not_a_broken_pipe(
    scripted: Callable[[str], RunnerProcess], tmp_path: Path
) -> None:
    runner = scripted("exit-after-hello")
    deadline = time.monotonic() + 60
    while Path(f"/proc/{runner.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the scripted runner did not exit"
        time.sleep(0.02)  # exited, unreaped: the host's next write meets a pipe with no reader
    with pytest.raises(RunnerCrashedError) as info:
        runner.load(tmp_path / "pkg", model_file=tmp_path / "pkg" / "w.npy", package_name="pkg")
    assert info.value.returncode == 0
    assert "exited with code 0" in str(info.value)
