"""Real runner subprocesses in real uv envs, driven through medigan_iso.runner_process.

Fixture model packages are written by ``_model_fixtures``; envs come from ``_envs_for_tests`` (the
project's envs module). Nothing of ours is mocked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _compat import zip_strict
from _envs_for_tests import build_runner_env
from _interpreters import skip_without_python
from _model_fixtures import write_broken, write_hanging_import, write_numpy_zoo, write_torch_model
from medigan_iso_runner import protocol

from medigan_iso.errors import (
    InterpreterNotFoundError,
    ModelError,
    RunnerCrashedError,
    RunnerError,
    RunnerStartError,
    RunnerTimeoutError,
)
from medigan_iso.runner_process import (
    SHM_MAX_SLOT_BYTES,
    SHM_MIN_SLOT_BYTES,
    SHM_SLOTS,
    SHM_SWITCH_ENV,
    SHM_THRESHOLD_BYTES,
    RunnerProcess,
    runner_environment,
)

PACKAGE_NAME = "ProGAN-4ch"  # not an identifier, like upstream's package names


# The runner runs inside every model env, down to TensorFlow 1.15's Python 3.7: every test that takes
# ``numpy_env`` (or ``runner``) runs once on the host's Python and once on a real Python 3.7 env.
OLDEST_PYTHON = "3.7"


def old_python_env(tmp_path_factory: pytest.TempPathFactory, version: str) -> Path:
    """A numpy + msgpack env on Python ``version``; skips without one, except in CI (pyenv has it there)."""
    try:
        return build_runner_env(
            tmp_path_factory.mktemp(f"env-py{version}"),
            ["numpy", "msgpack"],
            python_requires=f"=={version}.*",
        )
    except InterpreterNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI machines provide Python {version} (pyenv) for the runner tests: {exc}")
        skip_without_python(version, exc)


@pytest.fixture(scope="session", params=["host", OLDEST_PYTHON], ids=["py-host", f"py{OLDEST_PYTHON}"])
def numpy_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == "host":
        return build_runner_env(tmp_path_factory.mktemp("env-numpy"), ["numpy", "msgpack"])
    return old_python_env(tmp_path_factory, request.param)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_numpy_zoo(tmp_path_factory.mktemp("packages") / PACKAGE_NAME)


@pytest.fixture
def runner(numpy_env: Path, zoo: Path, tmp_path: Path) -> Iterator[RunnerProcess]:
    with RunnerProcess.start(numpy_env, log_path=tmp_path / "runner.log", inactivity_timeout_s=30) as proc:
        proc.load(zoo, model_file=zoo / "weights.npy", package_name=PACKAGE_NAME)
        yield proc


def collect(proc: RunnerProcess, n: int, *, batch_size: int = 3, **kwargs: Any) -> list[Any]:
    return [s for batch in proc.generate(n, batch_size=batch_size, **kwargs) for s in batch]


def pid_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie is dead (pid 1 may not reap)


def test_public_surface_is_pinned() -> None:
    import medigan_iso.runner_process as runner_process

    assert runner_process.__all__ == [
        "RUNNER_INACTIVITY_TIMEOUT_S",
        "RUNNER_LOG_MAX_BYTES",
        "RUNNER_READY_TIMEOUT_S",
        "RUNNER_SHUTDOWN_GRACE_S",
        "SAMPLE_MEMORY_POLICIES",
        "SHM_MAX_SLOT_BYTES",
        "SHM_MIN_SLOT_BYTES",
        "SHM_SLOTS",
        "SHM_SLOT_BYTES",
        "SHM_SWITCH_ENV",
        "SHM_THRESHOLD_BYTES",
        "CappedLog",
        "GenerateStream",
        "RunnerProcess",
        "Sample",
        "draw_seed",
        "runner_environment",
        "thread_budget_env",
        "usable_cpus",
    ]
    assert all(hasattr(runner_process, name) for name in runner_process.__all__)


# --- handshake and load --------------------------------------------------------------------------------


def test_closing_during_a_long_request_stops_the_runner_by_stdin_eof(
    numpy_env: Path, zoo: Path, tmp_path: Path
) -> None:
    # The cause, not the clock (issue 19): with a 10-minute shutdown grace, a close() that sent a shutdown
    # frame and waited for the request, or escalated to SIGTERM, would take minutes or return -15.
    with RunnerProcess.start(
        numpy_env, log_path=tmp_path / "r.log", inactivity_timeout_s=30, shutdown_grace_s=600
    ) as proc:
        proc.load(zoo, model_file=zoo / "weights.npy", package_name=PACKAGE_NAME)
        stream = proc.generate(1_000_000, batch_size=1, kwargs={"behaviour": "hangs"})
        assert not stream.finished
        started = time.monotonic()
        proc.close()
        assert time.monotonic() - started < 300  # far from the grace; generous for a loaded machine
        assert proc.returncode == 0  # stdin EOF, not SIGTERM
        assert stream.finished


def test_hello_reports_protocol_python_numpy_and_pid(numpy_env: Path, tmp_path: Path) -> None:
    with RunnerProcess.start(numpy_env, log_path=tmp_path / "r.log") as proc:
        assert proc.hello["protocol"] == protocol.PROTOCOL_VERSION
        assert (
            proc.hello["python"]
            == subprocess.run(
                [str(numpy_env), "-I", "-c", "import platform; print(platform.python_version())"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        assert proc.hello["numpy"].count(".") >= 1
        assert proc.hello["pid"] == proc.pid
        assert proc.hello["executable"] == str(numpy_env)
    assert proc.returncode == 0  # it obeyed the shutdown frame


def test_load_imports_a_package_whose_name_is_not_an_identifier(runner: RunnerProcess) -> None:
    assert runner.loaded is not None
    assert runner.loaded["module"] == "_medigan_iso_model_ProGAN_4ch"
    assert runner.loaded["generate_function"] == "generate"


def test_a_package_that_fails_to_import_raises_model_error(numpy_env: Path, tmp_path: Path) -> None:
    pkg = write_broken(tmp_path / "broken-pkg")
    with RunnerProcess.start(numpy_env, log_path=tmp_path / "r.log") as proc:
        with pytest.raises(ModelError) as info:
            proc.load(pkg, model_file=pkg / "weights.npy", package_name="broken-pkg")
        assert info.value.remote_type == "ImportError"
        assert "needs a package the env does not have" in info.value.remote_message
        assert "__init__.py" in info.value.traceback_text
        assert "model raised ImportError" in str(info.value)
        with pytest.raises(ModelError, match=r"has no __init__\.py") as info2:
            proc.load(tmp_path / "missing", model_file="x", package_name="x")
        assert info2.value.remote_type == "FileNotFoundError"
        zoo = write_numpy_zoo(tmp_path / "zoo")
        with pytest.raises(ModelError, match="no callable 'sample'") as info3:
            proc.load(zoo, model_file=zoo / "weights.npy", package_name="zoo", generate_function="sample")
        assert info3.value.remote_type == "AttributeError"


def test_command_prefix_wraps_the_runner_argv(numpy_env: Path, tmp_path: Path) -> None:
    # The seam the sandbox uses for bwrap: a launcher that receives the runner's argv and execs it.
    record = tmp_path / "argv.txt"
    launcher = tmp_path / "launcher.sh"
    launcher.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nexec "$@"\n')
    launcher.chmod(0o755)
    with RunnerProcess.start(numpy_env, log_path=tmp_path / "r.log", command_prefix=[str(launcher)]) as proc:
        assert proc.hello["pid"] == proc.pid  # the launcher exec'd the runner
    assert record.read_text().splitlines() == [str(numpy_env), "-I", "-m", "medigan_iso_runner"]


def test_a_hanging_import_raises_the_ready_timeout(numpy_env: Path, tmp_path: Path) -> None:
    pkg = write_hanging_import(tmp_path / "slow-pkg")
    with RunnerProcess.start(numpy_env, log_path=tmp_path / "r.log", ready_timeout_s=1.0) as proc:
        with pytest.raises(RunnerTimeoutError) as info:
            proc.load(pkg, model_file=pkg / "weights.npy", package_name="slow-pkg")
        assert (info.value.phase, info.value.timeout_s) == ("ready", 1.0)
        assert "runner timed out waiting for ready after 1 s" in str(info.value)
        assert info.value.remedy == "raise the timeout if the model is just slow"


def test_missing_interpreter_raises_runner_start_error(tmp_path: Path) -> None:
    with pytest.raises(RunnerStartError, match="cannot start the runner") as info:
        RunnerProcess.start(tmp_path / "no-such-python", log_path=tmp_path / "r.log")
    assert "medigan-iso env list" in str(info.value)


def test_an_interpreter_without_the_runner_fails_to_start_with_the_stderr_tail(tmp_path: Path) -> None:
    bare = getattr(sys, "_base_executable", sys.executable)  # the base interpreter, outside any venv
    with pytest.raises(RunnerStartError) as info:
        RunnerProcess.start(bare, log_path=tmp_path / "r.log")
    crash = info.value.__cause__
    assert isinstance(crash, RunnerCrashedError)
    assert crash.returncode == 1 and crash.signal_name is None
    assert "No module named" in crash.stderr_tail
    message = str(info.value)
    assert f"the runner {bare} exited before its hello: runner exited with code 1" in message
    assert "No module named" in message and str(tmp_path / "r.log") in message
    assert "medigan-iso env build MODEL --rebuild" in message


def test_environment_is_an_allow_list_with_a_private_home(tmp_path: Path) -> None:
    source = {"PATH": "/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "OMP_NUM_THREADS": "2", "AWS_SECRET": "s"}
    env = runner_environment(tmp_path, source=source, overrides={"LANG": None, "EXTRA": "1"})
    assert env == {
        "PATH": "/bin",
        "LC_ALL": "C",
        "OMP_NUM_THREADS": "2",
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "tmp"),
        "EXTRA": "1",
    }


# --- sample structures -----------------------------------------------------------------------------


def test_plain_arrays_stream_in_batches(runner: RunnerProcess) -> None:
    stream = runner.generate(7, batch_size=3, kwargs={"size": 6})
    batches = list(stream)
    assert [len(b) for b in batches] == [3, 3, 1]
    for image in (s for b in batches for s in b):
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (6, 6, 3)
    assert (stream.produced, stream.shortfall, stream.cancelled) == (7, 0, False)


def test_tuples_with_masks_and_labels_keep_their_structure(runner: RunnerProcess) -> None:
    triples = collect(runner, 2, kwargs={"behaviour": "tuple3"})
    image, mask, label = triples[0]
    assert isinstance(triples[0], tuple) and label == "benign"
    assert mask.shape == (8, 8, 3) and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, (image > 127).astype(np.uint8))
    quads = collect(runner, 2, kwargs={"behaviour": "tuple4"})
    image, mask, other, label = quads[1]
    assert (mask.shape, other.dtype, label) == ((8, 8), np.float32, "malignant")


def test_nested_lists_none_and_scalars_survive(runner: RunnerProcess) -> None:
    nested = collect(runner, 1, kwargs={"behaviour": "nested"})
    image, rest = nested[0]
    assert isinstance(image, np.ndarray)
    assert rest[:5] == [None, 7, 2.5, True, "x"]
    raw, mapping = rest[5]
    assert raw == b"raw" and isinstance(rest[5], tuple)
    np.testing.assert_array_equal(mapping["k"], image[:2])
    assert collect(runner, 4, kwargs={"behaviour": "none"}) == [None, None, None, None]


def test_a_batched_array_return_is_split_into_samples(runner: RunnerProcess) -> None:
    samples = collect(runner, 5, batch_size=5, kwargs={"behaviour": "batched_array"})
    assert len(samples) == 5 and all(s.shape == (8, 8, 3) for s in samples)


def test_stdout_noise_does_not_corrupt_frames(runner: RunnerProcess) -> None:
    samples = collect(runner, 4, kwargs={"behaviour": "noisy"})
    assert len(samples) == 4 and all(s.shape == (8, 8, 3) for s in samples)
    deadline = time.monotonic() + 5
    while "raw bytes on fd 1" not in runner.stderr_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    tail = runner.stderr_tail()
    assert "model says hello on stdout" in tail and "hi from a shell" in tail and "raw bytes on fd 1" in tail
    assert "hi from a shell" in runner.log_path.read_text()


def test_unsendable_return_values_raise_model_error_and_the_runner_stays_usable(
    runner: RunnerProcess,
) -> None:
    with pytest.raises(ModelError) as info:
        collect(runner, 1, kwargs={"behaviour": "unsendable"})
    assert info.value.remote_type == "medigan_iso_runner.protocol.ProtocolError"
    assert "a object cannot cross the pipe" in info.value.remote_message
    assert len(collect(runner, 2)) == 2


def test_a_model_that_overwrites_its_output_buffer_still_streams_each_batch_intact(
    runner: RunnerProcess,
) -> None:
    # The runner sends batch k while the model computes batch k+1: it must send a snapshot.
    batches = list(runner.generate(60, batch_size=2, kwargs={"behaviour": "reuses_buffer"}))
    firsts = [int(batch[0][0, 0]) for batch in batches]
    assert firsts == list(range(firsts[0], firsts[0] + 30))
    for batch in batches:
        assert all(np.all(sample == batch[0][0, 0]) for sample in batch)


def test_small_batches_coalesce_while_the_writer_is_busy_and_keep_their_order() -> None:
    # issue 17: the runner's writer cannot keep up with 4 KiB batches (nobody reads the pipe here until all
    # are sent), so they merge into frames carrying "batches"; decoded, every batch is there, in order
    from medigan_iso_runner.__main__ import Channel

    host_in, runner_in = os.pipe()
    runner_out, host_out = os.pipe()
    channel = Channel(host_in, host_out)
    channel.coalesce_bytes = 1024**2
    for index in range(200):
        tree, arrays = protocol.pack_samples([np.full(4096, index % 251, np.uint8)])
        header = {"kind": "batch", "request": 1, "index": index, "count": 1, "samples": tree}
        channel.send(header, arrays, copy=True)
    reader = os.fdopen(runner_out, "rb", buffering=0)
    frames, batches = 0, []

    def read_all() -> None:
        nonlocal frames
        while True:
            frame = protocol.read_frame(reader.readinto)
            assert frame is not None
            if frame.kind == "done":
                return
            frames += 1
            samples = protocol.unpack_samples(frame.header["samples"], frame.arrays)
            counts = frame.header.get("batches", [len(samples)])
            assert sum(counts) == len(samples) == frame.header["count"]
            batches.extend(int(s[0]) for s in samples)

    thread = threading.Thread(target=read_all)
    # only now does anyone read the pipe: before "done", which waits for the outbox (a frame the pipe took
    # in part, the pending frame and "done" are more than the channel holds)
    thread.start()
    channel.send({"kind": "done", "request": 1})
    channel.flush()
    thread.join(60)
    assert not thread.is_alive()
    reader.close()
    for fd in (host_in, runner_in, host_out):
        os.close(fd)
    assert batches == [i % 251 for i in range(200)]
    assert frames < 200


def test_a_batch_the_pipe_takes_in_part_is_snapshotted_for_the_writer() -> None:
    # issue 17: with the writer idle, the sending thread writes a batch itself without blocking; what the
    # pipe (64 KiB here, nobody reading yet) does not take is copied for the writer thread, so the model may
    # reuse its buffer at once. Small batches sent meanwhile coalesce behind it; every byte arrives in order.
    from medigan_iso_runner.__main__ import Channel

    host_in, runner_in = os.pipe()
    runner_out, host_out = os.pipe()
    channel = Channel(host_in, host_out)
    channel.coalesce_bytes = 1024**2
    buffer = np.zeros(200_000, np.uint8)
    sent = []
    for index in range(3):
        buffer[:] = index + 1
        sent.append(buffer.copy())
        tree, arrays = protocol.pack_samples([buffer])
        channel.send({"kind": "batch", "request": 1, "index": index, "samples": tree}, arrays, copy=True)
    for index in range(3, 40):
        sent.append(np.full(1000, index, np.uint8))
        tree, arrays = protocol.pack_samples([sent[-1]])
        channel.send({"kind": "batch", "request": 1, "index": index, "samples": tree}, arrays, copy=True)
    buffer[:] = 255  # after send returned: must not show up in what was sent
    reader = os.fdopen(runner_out, "rb", buffering=0)
    got, frames = [], 0

    def read_all() -> None:
        nonlocal frames
        while True:
            frame = protocol.read_frame(reader.readinto)
            assert frame is not None
            if frame.kind == "done":
                return
            frames += 1
            got.extend(protocol.unpack_samples(frame.header["samples"], frame.arrays))

    thread = threading.Thread(target=read_all)
    thread.start()  # before "done": the channel holds the rest of the first batch and the pending frame only
    channel.send({"kind": "done", "request": 1})
    channel.flush()
    thread.join(60)
    assert not thread.is_alive()
    reader.close()
    for fd in (host_in, runner_in, host_out):
        os.close(fd)
    assert len(got) == len(sent) and frames < len(sent)
    for a, b in zip_strict(got, sent):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("size", "shared"), [(600, True), (32, False)], ids=["2MiB-batches", "6KiB-batches"])
def test_shared_memory_carries_big_batches_and_the_pipe_small_ones_with_the_same_bytes(
    numpy_env: Path, zoo: Path, tmp_path: Path, size: int, shared: bool
) -> None:
    # Batches of at least SHM_THRESHOLD_BYTES travel through the memfd (on Python 3.7 too); smaller ones,
    # and every batch of a runner started without shared memory, take the pipe. The bytes are the same.
    assert (2 * size * size * 3 >= SHM_THRESHOLD_BYTES) is shared
    got = {}
    for on in (True, False):
        with RunnerProcess.start(numpy_env, log_path=tmp_path / "r.log", shared_memory=on) as proc:
            assert (proc.hello["shared_memory"] is not None) is on
            proc.load(zoo, model_file=zoo / "weights.npy", package_name=PACKAGE_NAME)
            got[on] = collect(proc, 9, batch_size=2, seed=5, kwargs={"size": size})
            assert proc.shared_frames == (5 if on and shared else 0)
            assert collect(proc, 1, seed=6, kwargs={"size": size})[0].shape == (size, size, 3)  # still usable
    assert len(got[True]) == 9 and len({a.tobytes() for a in got[True]}) == 9
    for a, b in zip_strict(got[True], got[False]):
        assert a.shape == (size, size, 3) and np.array_equal(a, b)


def _recording(send: Any, kinds: list[str]) -> Any:
    """The host's real frame sender, noting the kind of every frame it writes to the runner."""

    def record(header: dict[str, Any], arrays: Any = ()) -> None:
        kinds.append(header["kind"])
        send(header, arrays)

    return record


@pytest.mark.parametrize("policy", ["copy", "view"])
def test_slots_go_back_on_the_release_pipe_and_many_batches_match_the_pipe(
    numpy_env: Path, zoo: Path, tmp_path: Path, policy: str
) -> None:
    # issue 17: a release frame woke the runner's reader thread; slots now go back as one byte each on a
    # pipe of their own that the model's thread drains when it needs a slot. 20 batches cycle 3 slots
    # several times, twice in a row, with the same bytes as a runner without shared memory.
    sent: list[str] = []
    got = {}
    for on in (True, False):
        log = tmp_path / f"{policy}-{on}.log"
        with RunnerProcess.start(numpy_env, log_path=log, shared_memory=on, sample_memory=policy) as proc:
            proc._send = _recording(proc._send, sent)  # type: ignore[method-assign]
            proc.load(zoo, model_file=zoo / "weights.npy", package_name=PACKAGE_NAME)
            got[on] = []
            for _ in range(2):  # copied while streaming: a view's slot goes back when its batch is dropped
                for batch in proc.generate(20, batch_size=1, seed=9, kwargs={"size": 600}):
                    got[on] += [a.copy() for a in batch]
                del batch
            if on:
                assert proc.shared_frames > 2 * SHM_SLOTS  # each slot came back more than once
                if policy == "copy":
                    assert proc.shared_frames == 40 and proc.release_writes == 40
                else:
                    assert proc.release_writes >= proc.shared_frames - SHM_SLOTS
            else:
                assert proc.shared_memory is None and proc.release_writes == 0
    assert "release" not in sent and sent.count("generate") == 4
    assert len({a.tobytes() for a in got[True][:20]}) == 20
    for a, b in zip_strict(got[True], got[False]):
        assert np.array_equal(a, b)


def test_the_runner_ignores_garbage_on_its_release_pipe() -> None:
    # Bytes naming no slot, or a slot already free, free nothing; a real slot number frees that slot.
    from medigan_iso_runner.__main__ import _SharedWriter

    fd = os.memfd_create("test-shm")
    os.ftruncate(fd, 3 * 4096)
    read_end, write_end = os.pipe()
    writer = _SharedWriter(fd, 3, 4096, 1, 1, read_end)
    assert [writer.acquire() for _ in range(3)] == [0, 1, 2]
    os.write(write_end, bytes([3, 255, 200, 1, 1, 7]))  # out of range, and slot 1 twice
    assert writer.acquire() == 1
    os.write(write_end, bytes([1, 0]))
    assert writer.acquire() == 1 and writer.acquire() == 0
    fd = os.memfd_create("test-shm")
    os.ftruncate(fd, 3 * 4096)
    view = _SharedWriter(fd, 3, 4096, 1, 0, os.dup(read_end))
    assert [view.acquire() for _ in range(3)] == [0, 1, 2]
    assert view.acquire() is None  # views: waits at most SHM_VIEW_WAIT_S, then the pipe
    os.write(write_end, bytes([2]))
    assert view.acquire() == 2
    os.close(write_end)


@pytest.mark.parametrize(
    "layout",
    [
        "{fd}:3:4096:1:1",
        "{fd}:3:4096:1:1:{fd}",
        "{fd}:3:4096:1:1:-1",
        "{fd}:0:4096:1:1:{r}",
        "{fd}:3:4096:1:2:{r}",
        "{fd}:3:4096:1:1:{r}:9",
        "{fd}:x:4096:1:1:{r}",
        "{fd}:300:4096:1:1:{r}",
    ],
)
def test_a_malformed_shared_memory_layout_leaves_the_pipe(
    layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medigan_iso_runner.__main__ import SHM_ENV, _SharedWriter

    fd = os.memfd_create("test-shm")
    os.ftruncate(fd, 3 * 4096)
    read_end, write_end = os.pipe()
    monkeypatch.setenv(SHM_ENV, layout.format(fd=fd, r=read_end))
    assert _SharedWriter.from_env() is None
    for end in (fd, read_end, write_end):
        with contextlib.suppress(OSError):
            os.close(end)


def test_a_runner_that_does_not_take_up_shared_memory_keeps_the_pipe(
    numpy_env: Path, zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An older runner ignores the segment (modelled by hiding its description from the runner); the
    # switch turns the segment off on the host.
    hidden = RunnerProcess.start(numpy_env, log_path=tmp_path / "r.log", env_overrides={SHM_SWITCH_ENV: None})
    monkeypatch.setenv(SHM_SWITCH_ENV, "0")
    switched_off = RunnerProcess.start(numpy_env, log_path=tmp_path / "r2.log")
    for proc in (hidden, switched_off):
        with proc:
            assert proc.hello["shared_memory"] is None and proc.shared_memory is None
            proc.load(zoo, model_file=zoo / "weights.npy", package_name=PACKAGE_NAME)
            images = collect(proc, 2, batch_size=2, kwargs={"size": 600})
            assert [a.shape for a in images] == [(600, 600, 3)] * 2 and proc.shared_frames == 0


def test_a_batch_bigger_than_the_slots_takes_the_pipe_and_is_logged_once(
    numpy_env: Path, zoo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The caller sizes the slots (clamped to the floor and the cap); a bigger batch is not lost nor
    # silent: it takes the pipe, with one warning per runner, and the runner says how big it was.
    for asked, got in ((1, SHM_MIN_SLOT_BYTES), (2**40, SHM_MAX_SLOT_BYTES)):
        with RunnerProcess.start(numpy_env, log_path=tmp_path / "c.log", shm_slot_bytes=asked) as proc:
            assert proc.hello["shared_memory"]["slot_bytes"] == got
    with RunnerProcess.start(
        numpy_env, log_path=tmp_path / "r.log", shm_slot_bytes=SHM_MIN_SLOT_BYTES
    ) as proc:
        proc.load(zoo, model_file=zoo / "weights.npy", package_name=PACKAGE_NAME)
        fits = collect(proc, 2, batch_size=1, seed=3, kwargs={"size": 1000})  # 3 MB batches
        assert proc.shared_frames == 2 and proc.oversized_batch_bytes == 0
        big = collect(proc, 4, batch_size=2, seed=3, kwargs={"size": 1000})  # 6 MB batches
        info = proc.shared_memory
    assert info is not None and info["frames"] == 2 and info["oversized_batch_bytes"] == 6_000_000
    [record] = [r for r in caplog.records if "larger than its shared-memory slots" in r.getMessage()]
    assert "5.7 MiB" in record.getMessage() and "4.0 MiB" in record.getMessage()
    assert [a.shape for a in fits + big] == [(1000, 1000, 3)] * 6


def test_views_are_read_only_slots_released_when_garbage_and_never_stall_the_runner(
    numpy_env: Path, zoo: Path, tmp_path: Path
) -> None:
    import gc

    with RunnerProcess.start(numpy_env, log_path=tmp_path / "c.log") as proc:
        proc.load(zoo, model_file=zoo / "weights.npy", package_name=PACKAGE_NAME)
        copies = collect(proc, 8, batch_size=1, seed=9, kwargs={"size": 600})  # 1 MiB batches
    with RunnerProcess.start(numpy_env, log_path=tmp_path / "v.log", sample_memory="view") as proc:
        assert proc.hello["shared_memory"]["samples"] == "view"
        proc.load(zoo, model_file=zoo / "weights.npy", package_name=PACKAGE_NAME)
        # Holding every sample holds every slot: the runner sends the rest through the pipe, no waiting.
        views = collect(proc, 8, batch_size=1, seed=9, kwargs={"size": 600})
        assert proc.shared_frames == SHM_SLOTS and proc.held_slots == SHM_SLOTS
        for a, b in zip_strict(views, copies):
            assert np.array_equal(a, b) and not a.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            views[0][0, 0, 0] = 1
        with pytest.raises(ValueError, match="read-only"):
            views[-1][0, 0, 0] = 1  # a piped one too: the policy, not the path, decides
        kept = views[0]
        del views
        gc.collect()
        assert proc.held_slots == 1  # ``kept`` still views its slot
        del kept
        gc.collect()
        assert proc.held_slots == 0
        again = collect(proc, 2, batch_size=1, seed=9, kwargs={"size": 600})  # the slots are the runner's
        assert proc.shared_frames == SHM_SLOTS + 2
        assert np.array_equal(again[0], copies[0])
        last = again[1]
    assert proc.returncode == 0
    assert np.array_equal(last, copies[1])  # a view outlives its runner: the mapping lives with it


def test_a_slow_reader_gets_the_batches_of_a_fast_one(runner: RunnerProcess) -> None:
    # coalesced frames are split back into the batches asked for: same lists, same order, same counts
    fast = list(runner.generate(120, batch_size=1, seed=7, kwargs={"size": 64}))
    stream = runner.generate(120, batch_size=1, seed=7, kwargs={"size": 64})
    time.sleep(0.5)  # let the runner run ahead so its small batches coalesce (not asserted: timing)
    slow, indices = [], []
    for batch in stream:
        slow.append(batch)
        indices.append(stream.batch_index)
    assert indices == list(range(120))  # the global index of each batch, coalesced or not
    assert [len(b) for b in slow] == [1] * 120 and stream.batches == 120 and stream.produced == 120
    assert stream.frames <= stream.batches
    for a, b in zip_strict(fast, slow):
        np.testing.assert_array_equal(a[0], b[0])


# --- seeds, kwargs, shortfalls, saving ---------------------------------------------------------------


def test_seeded_generation_is_reproducible_and_seeds_differ(runner: RunnerProcess) -> None:
    a = collect(runner, 5, seed=1234)
    b = collect(runner, 5, seed=1234)
    c = collect(runner, 5, seed=99)
    for x, y in zip_strict(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip_strict(a, c))


def test_batch_seed_follows_its_documented_formula() -> None:
    import hashlib

    def expected(seed: int, index: int) -> int:
        data = b"medigan-iso batch seed v1\x00" + seed.to_bytes(8, "big") + index.to_bytes(8, "big")
        return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") >> 1

    for seed, index in ((0, 0), (7, 0), (7, 1), (2**63 - 1, 12345)):
        assert protocol.batch_seed(seed, index) == expected(seed, index)
        assert 0 <= protocol.batch_seed(seed, index) < protocol.SEED_LIMIT
    assert len({protocol.batch_seed(7, k) for k in range(100)}) == 100
    with pytest.raises(ValueError, match="must be in"):
        protocol.batch_seed(-1, 0)


def test_a_request_split_at_batch_boundaries_equals_the_whole(runner: RunnerProcess) -> None:
    whole = list(runner.generate(20, batch_size=4, seed=11))
    assert len(whole) == 5
    parts = [list(runner.generate(8, batch_size=4, seed=11, batch_offset=off)) for off in (0, 2)]
    tail = list(runner.generate(4, batch_size=4, seed=11, batch_offset=4))
    split = parts[0] + parts[1] + tail
    assert len(split) == len(whole)
    for got, want in zip_strict(split, whole):
        for x, y in zip_strict(got, want):
            np.testing.assert_array_equal(x, y)
    # Out of order too: batch 3 alone is batch 3 of the whole.
    alone = list(runner.generate(4, batch_size=4, seed=11, batch_offset=3))
    for x, y in zip_strict(alone[0], whole[3]):
        np.testing.assert_array_equal(x, y)
    # Each batch is seeded on its own: batches of one request differ.
    assert not np.array_equal(whole[0][0], whole[1][0])


def test_a_request_without_a_seed_draws_one_that_reproduces_it(runner: RunnerProcess) -> None:
    stream = runner.generate(6, batch_size=2)
    first = [s for batch in stream for s in batch]
    assert isinstance(stream.seed, int) and 0 <= stream.seed < protocol.SEED_LIMIT
    assert (stream.batch_size, stream.batch_offset, stream.batch_index) == (2, 0, 2)
    again = collect(runner, 6, batch_size=2, seed=stream.seed)
    for x, y in zip_strict(first, again):
        np.testing.assert_array_equal(x, y)
    other = runner.generate(6, batch_size=2)
    list(other)
    assert other.seed != stream.seed


def test_bad_batch_offsets_and_seeds_are_refused(runner: RunnerProcess) -> None:
    with pytest.raises(ValueError, match="batch_offset >= 0"):
        runner.generate(2, batch_size=2, batch_offset=-1)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*63\)"):
        runner.generate(2, batch_size=2, seed=2**63)
    assert len(collect(runner, 2)) == 2


def test_the_hello_names_the_seeding_scheme(runner: RunnerProcess) -> None:
    assert runner.hello["seeding"] == protocol.SEEDING_SCHEME


def test_caller_kwargs_override_custom_defaults(numpy_env: Path, zoo: Path, tmp_path: Path) -> None:
    with RunnerProcess.start(numpy_env, log_path=tmp_path / "r.log") as proc:
        proc.load(zoo, model_file=zoo / "weights.npy", package_name=PACKAGE_NAME, custom_defaults={"size": 5})
        assert collect(proc, 1)[0].shape == (5, 5, 3)
        assert collect(proc, 1, kwargs={"size": 3})[0].shape == (3, 3, 3)
        # the four base args are forced: a caller's num_samples cannot change the batch size
        assert len(collect(proc, 2, batch_size=2, kwargs={"num_samples": 50})) == 2


def test_fewer_samples_than_asked_are_streamed_and_reported(runner: RunnerProcess) -> None:
    stream = runner.generate(7, batch_size=3, kwargs={"behaviour": "short"})
    batches = list(stream)
    assert [len(b) for b in batches] == [2, 2, 0]
    assert (stream.produced, stream.shortfall) == (4, 3)
    assert stream.warnings == [
        "batch 0: model returned 2 of 3 samples asked",
        "batch 1: model returned 2 of 3 samples asked",
        "batch 2: model returned 0 of 1 samples asked",
    ]


def test_save_images_uses_medigan_batch_naming(runner: RunnerProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    stream = runner.generate(70, batch_size=32, save_images=True, output_path=out)
    assert list(stream) == []
    names = sorted(p.name for p in out.iterdir())
    expected = sorted(
        [f"batch_0_sample_{i}.npy" for i in range(32)]
        + [f"batch_1_sample_{i}.npy" for i in range(32)]
        + [f"batch_2_sample_{i}.npy" for i in range(6)]
    )
    assert names == expected
    assert stream.files == 70
    assert [(index, len(files)) for index, files in stream.saved] == [(0, 32), (1, 32), (2, 6)]
    assert sorted(name for _, files in stream.saved for name in files) == expected
    assert np.load(out / "batch_2_sample_5.npy").shape == (8, 8, 3)


def test_save_images_names_batches_by_their_global_index(runner: RunnerProcess, tmp_path: Path) -> None:
    whole, part = tmp_path / "whole", tmp_path / "part"
    list(runner.generate(9, batch_size=3, seed=5, save_images=True, output_path=whole))
    stream = runner.generate(3, batch_size=3, seed=5, batch_offset=2, save_images=True, output_path=part)
    list(stream)
    assert sorted(p.name for p in part.iterdir()) == [f"batch_2_sample_{i}.npy" for i in range(3)]
    assert stream.saved == [(2, [f"batch_2_sample_{i}.npy" for i in range(3)])]
    for path in part.iterdir():
        assert path.read_bytes() == (whole / path.name).read_bytes()


def test_save_images_with_a_multiple_of_32_asks_no_empty_batch(runner: RunnerProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    stream = runner.generate(64, batch_size=32, save_images=True, output_path=out)
    list(stream)
    assert stream.files == 64
    assert not any(p.name.startswith("batch_2") for p in out.iterdir())


def test_zero_samples_is_an_empty_stream(runner: RunnerProcess) -> None:
    stream = runner.generate(0, batch_size=4)
    assert list(stream) == [] and stream.produced == 0 and stream.finished


def test_bad_arguments_are_refused_before_anything_is_sent(runner: RunnerProcess) -> None:
    with pytest.raises(ValueError, match="batch_size >= 1"):
        runner.generate(3, batch_size=0)
    with pytest.raises(ValueError, match="save_images=True needs an output_path"):
        runner.generate(3, batch_size=1, save_images=True)
    assert len(collect(runner, 1)) == 1


# --- cancel ----------------------------------------------------------------------------------------


def test_cancel_stops_between_batches_and_the_runner_stays_usable(runner: RunnerProcess) -> None:
    stream = runner.generate(10_000, batch_size=2)
    first = next(stream)
    assert len(first) == 2
    runner.cancel()
    rest = list(stream)  # batches already in flight are dropped
    assert rest == []
    assert stream.cancelled is True
    assert stream.produced < 10_000
    assert len(collect(runner, 3)) == 3


def test_an_open_stream_blocks_a_second_request_until_closed(runner: RunnerProcess) -> None:
    stream = runner.generate(100, batch_size=1)
    next(stream)
    with pytest.raises(RunnerError, match="still open") as info:
        runner.generate(1, batch_size=1)
    assert info.value.remedy == "exhaust or close() it first"
    stream.close()
    assert stream.finished
    assert len(collect(runner, 1)) == 1


def test_a_dropped_unfinished_stream_stops_the_runner_with_the_reason(runner: RunnerProcess) -> None:
    stream = runner.generate(100, batch_size=1)
    next(stream)
    del stream  # its frames are still in the pipe: the runner cannot be trusted with another request
    with pytest.raises(RunnerError, match="stopped: a generate stream was dropped before it finished"):
        runner.generate(1, batch_size=1)


# --- failures --------------------------------------------------------------------------------------


def test_a_model_exception_raises_model_error_with_remote_traceback(runner: RunnerProcess) -> None:
    with pytest.raises(ModelError) as info:
        collect(runner, 2, kwargs={"behaviour": "raises"})
    err = info.value
    assert err.remote_type == "ValueError"
    assert err.remote_message == "latent vector has the wrong size"
    assert "in inner" in err.traceback_text and "ProGAN-4ch/__init__.py" in err.traceback_text
    assert "model raised ValueError: latent vector has the wrong size" in str(err)
    assert len(collect(runner, 2)) == 2  # the runner survives a model error


def test_os_exit_raises_runner_crashed_error_not_a_timeout(runner: RunnerProcess) -> None:
    # The runner fixture's inactivity timeout is 30 s: a crash noticed only by that clock would raise
    # RunnerTimeoutError, so the error type is the proof of prompt detection (no wall-clock bound).
    with pytest.raises(RunnerCrashedError) as info:
        collect(runner, 2, kwargs={"behaviour": "exits"})
    assert info.value.returncode == 3 and info.value.signal_name is None
    assert "exited with code 3" in str(info.value)
    assert info.value.log_path == runner.log_path
    with pytest.raises(RunnerError, match="this runner has stopped: it crashed") as stopped:
        runner.generate(1, batch_size=1)
    assert stopped.value.remedy == "start a new RunnerProcess"


def test_a_killed_runner_reports_the_signal_name(runner: RunnerProcess) -> None:
    stream = runner.generate(1_000_000, batch_size=1)
    next(stream)
    os.kill(runner.pid, signal.SIGKILL)
    with pytest.raises(RunnerCrashedError) as info:
        list(stream)
    assert info.value.signal_name == "SIGKILL" and info.value.returncode == -9
    assert "killed by SIGKILL" in str(info.value)


def test_a_hanging_model_raises_the_inactivity_timeout(numpy_env: Path, zoo: Path, tmp_path: Path) -> None:
    with RunnerProcess.start(numpy_env, log_path=tmp_path / "r.log", inactivity_timeout_s=1.0) as proc:
        proc.load(zoo, model_file=zoo / "weights.npy", package_name=PACKAGE_NAME)
        started = time.monotonic()
        with pytest.raises(RunnerTimeoutError) as info:
            collect(proc, 1, kwargs={"behaviour": "hangs"})
        assert time.monotonic() - started > 0.9  # a lower bound holds on any machine, however loaded
        assert (info.value.phase, info.value.timeout_s) == ("inactivity", 1.0)
        assert "runner timed out waiting for inactivity after 1 s" in str(info.value)
        pid = proc.pid
    assert pid_gone(pid)  # close() escalated past the hung model


def test_garbage_on_the_protocol_pipe_raises_protocol_error(tmp_path: Path) -> None:
    # A "runner" that writes text instead of frames: the host must translate, not crash or hang.
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho 'this is not a frame at all'\nsleep 30\n")
    fake.chmod(0o755)
    from medigan_iso.errors import ProtocolError

    with pytest.raises(ProtocolError, match="bad magic") as info:
        RunnerProcess.start(fake, log_path=tmp_path / "r.log", ready_timeout_s=5)
    assert "see the runner log" in str(info.value)


def test_a_silent_runner_raises_the_ready_timeout(tmp_path: Path) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    with pytest.raises(RunnerTimeoutError) as info:
        RunnerProcess.start(fake, log_path=tmp_path / "r.log", ready_timeout_s=0.5)
    assert (info.value.phase, info.value.timeout_s) == ("ready", 0.5)


# --- no orphans ------------------------------------------------------------------------------------


def test_a_host_killed_with_sigkill_leaves_no_runner_behind(numpy_env: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from medigan_iso.runner_process import RunnerProcess
        proc = RunnerProcess.start({str(numpy_env)!r}, log_path={str(tmp_path / "r.log")!r})
        print(proc.pid, flush=True)
        time.sleep(600)
        """
    )
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert host.stdout is not None
    runner_pid = int(host.stdout.readline())
    assert not pid_gone(runner_pid)
    host.kill()
    host.wait()
    host.stdout.close()
    deadline = time.monotonic() + 5
    while not pid_gone(runner_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_gone(runner_pid)


@pytest.mark.parametrize("spawn_in_thread", [False, True], ids=["pdeathsig", "parent-watchdog"])
def test_a_dead_host_kills_the_runner_even_while_its_stdin_stays_open(
    numpy_env: Path, tmp_path: Path, spawn_in_thread: bool
) -> None:
    # A bystander keeps the runner's stdin pipe open, so no EOF arrives: PR_SET_PDEATHSIG (main-thread
    # spawn) or the runner's parent watchdog (spawned from a thread, where the signal is not armed) must act.
    script = textwrap.dedent(
        f"""
        import subprocess, threading, time
        from medigan_iso.runner_process import RunnerProcess
        started = []
        def spawn():
            started.append(RunnerProcess.start({str(numpy_env)!r}, log_path={str(tmp_path / "r.log")!r}))
        if {spawn_in_thread!r}:
            worker = threading.Thread(target=spawn)
            worker.start()
            worker.join()
        else:
            spawn()
        proc = started[0]
        holder = subprocess.Popen(["sleep", "600"], pass_fds=[proc._in_fd], start_new_session=True)
        print(proc.pid, holder.pid, flush=True)
        time.sleep(600)
        """
    )
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert host.stdout is not None
    runner_pid, holder_pid = map(int, host.stdout.readline().split())
    try:
        host.kill()
        host.wait()
        deadline = time.monotonic() + 5
        while not pid_gone(runner_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pid_gone(runner_pid)
        assert not pid_gone(holder_pid)  # the pipe really was still held open
    finally:
        host.stdout.close()
        os.kill(holder_pid, signal.SIGKILL)


def test_a_runner_spawned_from_a_finished_thread_stays_alive(
    numpy_env: Path, zoo: Path, tmp_path: Path
) -> None:
    # PR_SET_PDEATHSIG would kill it when the spawning thread exits; the host must not arm it there.
    started: list[RunnerProcess] = []
    worker = threading.Thread(
        target=lambda: started.append(RunnerProcess.start(numpy_env, log_path=tmp_path / "r.log"))
    )
    worker.start()
    worker.join()
    with started[0] as proc:
        time.sleep(0.5)
        assert proc.is_alive()
        proc.load(zoo, model_file=zoo / "weights.npy", package_name=PACKAGE_NAME)
        assert len(collect(proc, 2)) == 2


def test_closing_stdin_alone_makes_the_runner_exit(numpy_env: Path) -> None:
    argv = [str(numpy_env), "-I", "-m", "medigan_iso_runner"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        frame = protocol.read_frame(proc.stdout.readinto)
        assert frame is not None and frame.kind == "hello"
        proc.stdin.close()
        assert proc.wait(timeout=5) == 0


def test_a_wrong_protocol_version_from_the_host_exits_with_code_2(numpy_env: Path) -> None:
    argv = [str(numpy_env), "-I", "-m", "medigan_iso_runner"]
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        protocol.read_frame(proc.stdout.readinto)
        protocol.write_frame(proc.stdin.write, {"kind": "load", "protocol": 999})
        proc.stdin.flush()
        assert proc.wait(timeout=5) == 2
        assert b"host speaks protocol 999" in proc.stderr.read()


def test_a_malformed_frame_from_the_host_exits_with_code_2(numpy_env: Path) -> None:
    argv = [str(numpy_env), "-I", "-m", "medigan_iso_runner"]
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        protocol.read_frame(proc.stdout.readinto)
        proc.stdin.write(b"GET / HTTP/1.1\r\n\r\n")
        proc.stdin.flush()
        assert proc.wait(timeout=5) == 2
        assert b"bad frame from the host: bad magic" in proc.stderr.read()


# --- other envs --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torch_model_generates_reproducibly_with_a_seed(tmp_path_factory: pytest.TempPathFactory) -> None:
    env = build_runner_env(tmp_path_factory.mktemp("env-torch"), ["numpy", "msgpack", "torch==2.13.0"])
    pkg = write_torch_model(tmp_path_factory.mktemp("packages-torch") / "torch-demo")
    with RunnerProcess.start(env, log_path=pkg.parent / "r.log") as proc:
        assert proc.hello["packages"]["torch"].startswith("2.13.0")
        proc.load(pkg, model_file=pkg / "weights.npy", package_name="torch-demo")
        a = collect(proc, 4, seed=7)
        b = collect(proc, 4, seed=7)
        c = collect(proc, 4, seed=8)
    assert all(x.dtype == np.uint8 and x.shape == (8, 8, 3) for x in a)
    for x, y in zip_strict(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip_strict(a, c))


# The torch model's batches as torch.manual_seed makes them: each batch seeded as the runner's determinism
# contract says, called in-process by the env's interpreter. Prints the bytes' sha256 per sample.
TORCH_REFERENCE = """
import hashlib, importlib.util, json, random, sys
import numpy as np
import torch
from medigan_iso_runner import protocol
root, seed, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
spec = importlib.util.spec_from_file_location("m", root + "/__init__.py", submodule_search_locations=[root])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
digests = []
for k in range(-(-n // batch)):
    s = protocol.batch_seed(seed, k)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    out = module.generate(root + "/weights.npy", min(batch, n - k * batch), None, False)
    digests += [hashlib.sha256(x.tobytes()).hexdigest() for x in out]
print(json.dumps(digests))
"""

# The runner's torch seeding against torch.manual_seed: the same generator state, the shortcut taken on
# this CPU-only build, and a wrapped torch.manual_seed (a model's) still called.
TORCH_SEEDING_CHECK = """
import torch
from medigan_iso_runner import protocol
from medigan_iso_runner.__main__ import _torch_cpu_seeder, seed_torch
assert _torch_cpu_seeder(torch) is torch.manual_seed, "a CPU-only build should skip the accelerator seeds"
for k in range(4):
    s = protocol.batch_seed(11, k)
    torch.manual_seed(s)
    expected, first = torch.get_rng_state(), torch.rand(7)
    torch.rand(50)
    seed_torch(torch, s)
    assert torch.equal(torch.get_rng_state(), expected) and torch.equal(torch.rand(7), first), k
calls = []
original = torch.manual_seed
torch.manual_seed = lambda seed: calls.append(seed) or original(seed)
seed_torch(torch, 5)
assert calls == [5], calls
print("ok")
"""


@pytest.mark.slow
def test_the_runner_seeds_torch_as_torch_manual_seed_does(tmp_path_factory: pytest.TempPathFactory) -> None:
    env = build_runner_env(tmp_path_factory.mktemp("env-torch-seed"), ["numpy", "msgpack", "torch==2.13.0"])
    pkg = write_torch_model(tmp_path_factory.mktemp("packages-torch-seed") / "torch-demo")
    check = subprocess.run([str(env), "-I", "-c", TORCH_SEEDING_CHECK], capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.strip() == "ok", check.stderr
    reference = subprocess.run(
        [str(env), "-I", "-c", TORCH_REFERENCE, str(pkg), "123", "10", "4"], capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr
    with RunnerProcess.start(env, log_path=pkg.parent / "r.log") as proc:
        proc.load(pkg, model_file=pkg / "weights.npy", package_name="torch-demo")
        got = collect(proc, 10, batch_size=4, seed=123)
    assert [hashlib.sha256(x.tobytes()).hexdigest() for x in got] == json.loads(reference.stdout)


@pytest.mark.parametrize("version", [OLDEST_PYTHON, "3.8"])
def test_the_runner_works_on_old_pythons_with_only_numpy_and_msgpack(
    tmp_path_factory: pytest.TempPathFactory, zoo: Path, version: str
) -> None:
    env = old_python_env(tmp_path_factory, version)
    listing = subprocess.run(
        [str(env), "-I", "-m", "pip", "--version"], capture_output=True, text=True, check=False
    )
    assert listing.returncode != 0  # a bare uv venv: no pip, only what we installed
    compiled = subprocess.run(
        [str(env), "-I", "-m", "compileall", "-q", "-r", "0", *_runner_files(env)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    with RunnerProcess.start(env, log_path=zoo.parent / f"py{version}.log") as proc:
        assert proc.hello["python"].startswith(f"{version}.")
        proc.load(zoo, model_file=zoo / "weights.npy", package_name=PACKAGE_NAME)
        samples = collect(proc, 3, kwargs={"behaviour": "nested"}, seed=3)
    assert len(samples) == 3 and isinstance(samples[0][1][5], tuple)


def _runner_files(env: Path) -> list[str]:
    out = subprocess.run(
        [
            str(env),
            "-I",
            "-c",
            "import medigan_iso_runner, os; print(os.path.dirname(medigan_iso_runner.__file__))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return [os.path.join(out, name) for name in sorted(os.listdir(out)) if name.endswith(".py")]
