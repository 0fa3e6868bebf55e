"""The sandbox, attacked by a real model package and judged from the host side.

A catalogue on disk points at the adversary package (tests/_adversary.py); Sessions spawn real runners in
a real uv env under real bubblewrap, seccomp, Landlock and rlimits. Every verdict is taken outside the
sandbox: a listener that received nothing, a file that does not exist, a process that is gone. Tests that
need bubblewrap skip (with the reason) where it cannot run; the `off` twin of the network test shows the
attack landing, so the tests can fail.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _adversary import write_adversary
from _compat import zip_strict
from _envs_for_tests import build_runner_env
from _interpreters import skip_without_python
from _model_fixtures import write_numpy_zoo, write_torch_model, zoo_execution

from medigan_iso import Session
from medigan_iso.errors import (
    InterpreterNotFoundError,
    ModelError,
    ProtocolError,
    RunnerCrashedError,
    RunnerTimeoutError,
    SandboxError,
    SandboxPolicyError,
)
from medigan_iso.packages import tree_sha256
from medigan_iso.runner_process import SHM_SWITCH_ENV, RunnerProcess
from medigan_iso.sandbox import (
    SANDBOX_ENV,
    Limits,
    SandboxConfig,
    layers_in_force,
    plan_launch,
    probe_host,
    resolve_policy,
    seccomp_program,
    stricter,
    verify_hello,
)

ADV = "adversary"
ADV_STRICT = "adversary-require"
SUPPORT = probe_host()
needs_bwrap = pytest.mark.skipif(
    SUPPORT.bwrap is None, reason=f"bubblewrap cannot run here: {SUPPORT.layers['bubblewrap'].detail}"
)
needs_full_stack = pytest.mark.skipif(
    not all(SUPPORT.available(layer) for layer in ("bubblewrap", "seccomp", "landlock", "rlimits")),
    reason="needs bubblewrap, seccomp and Landlock: "
    + "; ".join(f"{k}: {v.detail}" for k, v in SUPPORT.layers.items() if not v.available),
)
# Low limits keep the resource attacks bounded on a small machine.
TEST_LIMITS = Limits(
    address_space_bytes=2 * 1024**3,
    cpu_seconds=None,  # the CPU test sets its own: filling memory costs CPU seconds too
    file_size_bytes=16 * 1024**2,
    open_files=256,
    processes=256,
    tmpfs_bytes=64 * 1024**2,
)
REQUIRE = SandboxConfig(policy="require", limits=TEST_LIMITS)


def _entry(package_link: str, digest: str, *, sandbox: dict[str, str] | None = None) -> dict[str, object]:
    execution = zoo_execution(package_link, digest, package_name="adversary", image_size=None)
    if sandbox is not None:
        execution["sandbox"] = sandbox
    return {"execution": execution, "selection": {}, "description": {"title": "adversary"}}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sandbox")
    package = write_adversary(root / "catalogue" / "models" / "adversary")
    digest = tree_sha256(package)
    catalogue = {
        ADV: _entry("models/adversary", digest),
        ADV_STRICT: _entry("models/adversary", digest, sandbox={"policy": "require"}),
    }
    path = root / "catalogue" / "catalogue.json"
    path.write_text(json.dumps(catalogue), encoding="utf-8")
    return {"catalogue": path, "home": root / "home", "root": root}


@pytest.fixture
def open_session(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Session]]:
    """Sessions over the adversary catalogue (a factory: each test picks its sandbox)."""
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    monkeypatch.delenv(SANDBOX_ENV, raising=False)
    sessions: list[Session] = []

    def factory(**kwargs: object) -> Session:
        kwargs.setdefault("config", str(world["catalogue"]))
        kwargs.setdefault("home", world["home"])
        kwargs.setdefault("offline", False)
        session = Session(**kwargs)  # type: ignore[arg-type]
        sessions.append(session)
        return session

    yield factory  # type: ignore[misc]
    for session in sessions:
        session.close()


class _Listeners:
    """TCP, UDP, pathname and abstract Unix listeners on the host that record anything they receive."""

    def __init__(self, directory: Path) -> None:
        self.received: list[str] = []
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.unix_path = str(directory / "host.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_path)
        self.unix.listen()
        self.abstract_name = f"medigan-iso-test-{uuid.uuid4().hex}"
        self.abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abstract.bind("\0" + self.abstract_name)
        self.abstract.listen()
        for sock in (self.tcp, self.udp, self.unix, self.abstract):
            sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def kwargs(self) -> dict[str, object]:
        return {
            "tcp_port": self.tcp.getsockname()[1],
            "udp_port": self.udp.getsockname()[1],
            "unix_path": self.unix_path,
            "abstract_name": self.abstract_name,
        }

    def _loop(self) -> None:
        while not self._stop.is_set():
            for name, sock in (("tcp", self.tcp), ("unix_path", self.unix), ("unix_abstract", self.abstract)):
                try:
                    conn, _ = sock.accept()
                except OSError:
                    continue
                self.received.append(name)
                conn.close()
            try:
                self.udp.recvfrom(64)
                self.received.append("udp")
            except OSError:
                pass

    def close(self) -> list[str]:
        time.sleep(0.5)  # let anything in flight arrive
        self._stop.set()
        self._thread.join(5)
        for sock in (self.tcp, self.udp, self.unix, self.abstract):
            sock.close()
        return sorted(set(self.received))


def _procs_named(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                comm = Path(f"/proc/{name}/comm").read_text().strip()
                state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if comm == marker[:15] and state not in ("Z", "X"):
                found.append(int(name))
    return found


def _wait_gone(marker: str, timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := _procs_named(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# --- policy ------------------------------------------------------------------------------------------


def test_policy_comes_from_the_call_then_the_environment_then_auto() -> None:
    assert resolve_policy(None, environ={}).policy == "auto"
    assert resolve_policy(None, environ={SANDBOX_ENV: "require"}).policy == "require"
    assert resolve_policy("off", "require", environ={SANDBOX_ENV: "require"}).policy == "off"
    with pytest.raises(SandboxPolicyError, match="MEDIGAN_ISO_SANDBOX must be one of off, auto, require"):
        resolve_policy(None, environ={SANDBOX_ENV: "loose"})


def test_a_catalogue_entry_can_only_tighten_the_policy() -> None:
    assert stricter(SandboxConfig(policy="off"), {"policy": "require"}).policy == "require"
    assert stricter(SandboxConfig(policy="require"), {"policy": "off"}).policy == "require"
    assert stricter(SandboxConfig(policy="auto"), {"network": False}).policy == "auto"


def test_seccomp_program_is_whole_instructions_and_refuses_unknown_architectures() -> None:
    program = seccomp_program("x86_64")
    assert len(program) % 8 == 0 and 40 < len(program) // 8 < 4096
    assert program != seccomp_program("aarch64")
    with pytest.raises(ValueError, match="no seccomp filter for architecture 'mips'"):
        seccomp_program("mips")


def test_require_without_bubblewrap_fails_closed_naming_the_layer_and_the_fix(
    open_session: type[Session], tmp_path: Path
) -> None:
    hidden = SandboxConfig(policy="require", bwrap=tmp_path / "no-bwrap-here")
    session = open_session(sandbox=hidden)
    with pytest.raises(SandboxError) as info:
        session.generate(ADV, 1)
    assert info.value.layer == "bubblewrap"
    assert "no bwrap executable" in info.value.reason
    assert "apt-get install bubblewrap" in str(info.value)
    assert "apparmor_restrict_unprivileged_userns" in (info.value.remedy or "")
    assert session._slots[ADV].runner is None  # nothing was started


def test_a_runner_that_reports_less_than_was_asked_is_refused() -> None:
    plan = plan_launch(REQUIRE, python=sys.executable, package_root=None, output_dir=None, support=SUPPORT)
    with pytest.raises(SandboxError) as info:
        verify_hello(plan, {"sandbox": {"seccomp": 0, "no_new_privs": 0, "namespaces": {}}}, model_id="m")
    assert info.value.layer == plan.layers[1]
    assert "the runner of m reports hygiene in force" in info.value.reason
    assert layers_in_force([]) == {"hygiene"}  # an old runner's empty list proves nothing


# --- attacks -------------------------------------------------------------------------------------------


@needs_full_stack
def test_sandboxed_runner_reports_every_layer_from_inside(open_session: type[Session]) -> None:
    info = open_session(sandbox=REQUIRE).runner_info(ADV)
    assert info["sandbox_layers"] == ["hygiene", "bubblewrap", "seccomp", "landlock", "rlimits"]
    report = info["sandbox"]
    assert report["seccomp"] == 2 and report["no_new_privs"] == 1 and report["landlock_enforced"] is True
    assert report["namespaces"]["net"] != os.readlink("/proc/self/ns/net")
    assert report["rlimits"]["RLIMIT_FSIZE"] == [16 * 1024**2] * 2
    assert info["sandbox_pid"] != info["pid"] and Path(f"/proc/{info['pid']}").exists()


@needs_full_stack
@pytest.mark.parametrize("nbytes", [2**20, 16 * 2**20], ids=["1MiB", "16MiB"])
@pytest.mark.parametrize("policy", ["off", "require"])
def test_shared_memory_carries_the_pipes_bytes_with_and_without_the_sandbox(
    open_session: type[Session], monkeypatch: pytest.MonkeyPatch, policy: str, nbytes: int
) -> None:
    # The memfd passes through bubblewrap, seccomp and Landlock: the runner takes it up (its hello says
    # so) and the samples equal, byte for byte, those the same runner sends through the pipe.
    # The "view" policy hands out the sandboxed runner's slots themselves, read-only.
    config = REQUIRE if policy == "require" else "off"
    got = {}
    for switch, samples in (("1", "copy"), ("0", "copy"), ("1", "view")):
        monkeypatch.setenv(SHM_SWITCH_ENV, switch)
        session = open_session(sandbox=config, sample_memory=samples)
        assert (session.runner_info(ADV)["shared_memory"] is not None) is (switch == "1")
        got[switch, samples] = session.generate(
            ADV, 5, batch_size=1, attack="array", nbytes=nbytes, rng_seed=7
        )
        if switch == "1":
            assert session.runner_info(ADV)["shared_memory"]["frames"] == (3 if samples == "view" else 5)
    assert [a.nbytes for a in got["1", "copy"]] == [nbytes] * 5
    assert len({a.tobytes()[:64] for a in got["1", "copy"]}) == 5  # five different batches
    for shared, piped, viewed in zip_strict(got["1", "copy"], got["0", "copy"], got["1", "view"]):
        assert shared.dtype == piped.dtype == np.uint8 and np.array_equal(shared, piped)
        assert np.array_equal(viewed, piped) and not viewed.flags.writeable


@needs_full_stack
def test_network_attacks_reach_nothing_on_the_host(open_session: type[Session], tmp_path: Path) -> None:
    listeners = _Listeners(tmp_path)
    try:
        [inside] = open_session(sandbox=REQUIRE).generate(ADV, 1, attack="network", **listeners.kwargs())
    finally:
        received = listeners.close()
    assert received == [], inside
    assert "[Errno 97]" in inside["af_inet"], inside  # seccomp: EAFNOSUPPORT for IP sockets


def test_without_the_sandbox_the_same_network_attack_lands(
    open_session: type[Session], tmp_path: Path
) -> None:
    listeners = _Listeners(tmp_path)
    try:
        [inside] = open_session(sandbox="off").generate(ADV, 1, attack="network", **listeners.kwargs())
    finally:
        received = listeners.close()
    assert received == ["tcp", "udp", "unix_abstract", "unix_path"], inside
    assert inside["af_inet"] == "ok"


@pytest.mark.skipif(
    not (SUPPORT.available("seccomp") and SUPPORT.available("landlock")), reason="needs seccomp and Landlock"
)
def test_auto_without_bubblewrap_still_blocks_the_network(
    open_session: type[Session], tmp_path: Path
) -> None:
    config = SandboxConfig(policy="auto", limits=TEST_LIMITS, bwrap=tmp_path / "hidden-bwrap")
    listeners = _Listeners(tmp_path)
    try:
        session = open_session(sandbox=config)
        assert session.runner_info(ADV)["sandbox_layers"] == ["hygiene", "seccomp", "landlock", "rlimits"]
        [inside] = session.generate(ADV, 1, attack="network", **listeners.kwargs())
    finally:
        received = listeners.close()
    assert "tcp" not in received and "udp" not in received, inside
    assert "[Errno 97]" in inside["af_inet"], inside


@needs_full_stack
def test_writes_outside_the_output_directory_leave_no_file(
    open_session: type[Session], world: dict[str, Path], tmp_path: Path
) -> None:
    session = open_session(sandbox=REQUIRE)
    prepared = session.prepare(ADV)
    marker = f"medigan-iso-escape-{uuid.uuid4().hex}"
    site = next(prepared.env.path.glob("lib/python*/site-packages"))
    targets = [
        Path.home() / marker,
        Path("/tmp") / marker,
        Path("/dev/shm") / marker,
        prepared.package.root / marker,
        prepared.env.path / marker,
        site / marker,
        tmp_path / marker,
    ]
    out = tmp_path / "out"
    control = out / "control.txt"
    # The model can write only where Session.save stages its output (moved into `out` when the run ends).
    staged = out / ".medigan-iso-staging" / "control.txt"
    try:
        session.save(ADV, 1, out, attack="write", paths=[*map(str, targets), str(staged)])
        assert [p for p in targets if p.exists()] == []
        assert control.read_text() == "escaped"  # the output directory is writable: the model did run
    finally:
        for path in targets:
            path.unlink(missing_ok=True)


@needs_full_stack
def test_a_planted_pth_file_writes_nothing(open_session: type[Session], tmp_path: Path) -> None:
    session = open_session(sandbox=REQUIRE)
    prepared = session.prepare(ADV)
    site = next(prepared.env.path.glob("lib/python*/site-packages"))
    wrote = [tmp_path / "pth-wrote", Path.home() / f"pth-wrote-{uuid.uuid4().hex}"]
    pth = site / "zz_medigan_iso_attack.pth"
    code = "; ".join(f"open({str(p)!r}, 'w').write('x')" for p in wrote)
    pth.write_text(f"import os; {code}\n", encoding="utf-8")
    try:
        assert len(session.generate(ADV, 1)) == 1  # the runner still starts
        assert [p for p in wrote if p.exists()] == []
        # control: the same interpreter without the sandbox does run the .pth file
        subprocess.run([str(prepared.env.python), "-c", "pass"], check=True, capture_output=True)
        assert all(p.exists() for p in wrote)
    finally:
        pth.unlink()
        for path in wrote:
            path.unlink(missing_ok=True)


@needs_full_stack
def test_a_live_session_refuses_a_runner_reporting_less_confinement_than_asked(
    open_session: type[Session],
) -> None:
    # A .pth file in the env (it runs inside the sandbox, before the runner) rewrites the runner's code as
    # it is loaded so that its hello reports seccomp off: the host must refuse that runner (issue 19).
    session = open_session(sandbox=REQUIRE)
    prepared = session.prepare(ADV)
    site = next(prepared.env.path.glob("lib/python*/site-packages"))
    pth = site / "zz_medigan_iso_lie.pth"
    lie = (
        "import importlib.machinery as m; g = m.SourceFileLoader.get_code; "
        "m.SourceFileLoader.get_code = lambda self, name, g=g: compile(open(self.path).read().replace("
        "'report[\"seccomp\"] = int(value)', 'report[\"seccomp\"] = 0'), self.path, 'exec') "
        "if name == 'medigan_iso_runner.__main__' else g(self, name)\n"
    )
    pth.write_text(lie, encoding="utf-8")
    try:
        with pytest.raises(SandboxError) as info:
            session.generate(ADV, 1)
        assert info.value.layer == "seccomp"
        assert "reports" in info.value.reason and "'seccomp': 0" in info.value.reason
    finally:
        pth.unlink()
    # the control: the same session, env and policy accept an honest runner
    assert len(session.generate(ADV, 1)) == 1


@pytest.mark.parametrize("policy", ["off", "require"])
def test_environment_canaries_never_reach_the_model(
    open_session: type[Session], monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    if policy == "require" and SUPPORT.bwrap is None:
        pytest.skip(f"bubblewrap cannot run here: {SUPPORT.layers['bubblewrap'].detail}")
    canaries = {
        "AWS_SECRET_ACCESS_KEY": "canary-aws-7c1f",
        "HF_TOKEN": "canary-hf-91ab",
        "GITHUB_TOKEN": "canary-gh-55d0",
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "canary-torch-1",
        "PYTHONPATH": "/canary-pythonpath",
        "LD_PRELOAD": "",
        "LD_LIBRARY_PATH": "/canary-ld-library-path",
        "MEDIGAN_ISO_CANARY_SECRET": "canary-medigan-e3",
        "LC_SMUGGLED_TOKEN": "canary-lc-4d2",  # ssh AcceptEnv LC_* passes any LC_ name
    }
    for key, value in canaries.items():
        monkeypatch.setenv(key, value)
    config = "off" if policy == "off" else REQUIRE
    [inside] = open_session(sandbox=config).generate(ADV, 1, attack="environ")
    names = set(inside) - {"__proc_environ__"}
    assert names.isdisjoint(canaries), sorted(names)
    for value in filter(None, canaries.values()):
        assert value not in inside["__proc_environ__"]
    assert "PATH" in names and "HOME" in names


@needs_bwrap
def test_a_double_forked_setsid_daemon_dies_with_the_host(world: dict[str, Path], tmp_path: Path) -> None:
    marker = f"mi-d{uuid.uuid4().hex[:10]}"
    script = textwrap.dedent(
        f"""
        import threading, time
        from medigan_iso import Session
        from medigan_iso.sandbox import SandboxConfig
        s = Session(config={str(world["catalogue"])!r}, home={str(world["home"])!r}, offline=False,
                    sandbox=SandboxConfig(policy="require", layers=("bubblewrap",)))
        # spawned from a worker thread that exits: the launcher must still die with this process
        t = threading.Thread(target=lambda: s.generate({ADV!r}, 1, attack="daemon", marker={marker!r}))
        t.start(); t.join()
        print("ready", flush=True)
        time.sleep(120)
        """
    )
    env = {**os.environ, "MEDIGAN_ISO_CATALOGUE_URL": ""}
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert host.stdout is not None
        assert host.stdout.readline().strip() == "ready"
        # The grandchild names itself after the model returns: give it a moment before looking.
        deadline = time.monotonic() + 10
        while not _procs_named(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _procs_named(marker), "the daemon never started: the test proves nothing"
        host.send_signal(signal.SIGKILL)
        host.wait(10)
        assert _wait_gone(marker) == []
    finally:
        host.kill()
        host.wait(10)
        assert host.stdout is not None
        host.stdout.close()
        for pid in _procs_named(marker):
            os.kill(pid, signal.SIGKILL)


@needs_full_stack
def test_garbage_written_into_the_protocol_pipe_is_a_protocol_error(open_session: type[Session]) -> None:
    # The adversary sleeps after writing: only a refused frame raises ProtocolError; the inactivity clock
    # would raise RunnerTimeoutError (the type is the proof, not the wall time; issue 19).
    session = open_session(sandbox=REQUIRE, inactivity_timeout_s=120)
    with pytest.raises(ProtocolError) as info:
        session.generate(ADV, 1, attack="pipe")
    assert "malformed frame from the runner" in str(info.value)


@needs_full_stack
def test_a_memory_hog_gets_memory_error_and_the_runner_survives(open_session: type[Session]) -> None:
    session = open_session(sandbox=REQUIRE)
    with pytest.raises(ModelError) as info:
        session.generate(ADV, 1, attack="memory")
    assert info.value.remote_type.endswith("MemoryError")  # numpy's _ArrayMemoryError is one
    assert info.value.model_id == ADV
    assert len(session.generate(ADV, 1)) == 1  # the same runner still serves


@needs_full_stack
def test_a_cpu_spin_is_killed_by_its_cpu_limit(open_session: type[Session]) -> None:
    limits = dataclasses.replace(TEST_LIMITS, cpu_seconds=3)
    session = open_session(sandbox=SandboxConfig(policy="require", limits=limits))
    with pytest.raises(RunnerCrashedError) as info:
        session.generate(ADV, 1, attack="spin")
    assert info.value.signal_name in ("SIGXCPU", "SIGKILL"), info.value


@needs_bwrap
def test_require_refuses_a_bubblewrap_that_cannot_create_namespaces(
    open_session: type[Session], tmp_path: Path
) -> None:
    # Real bubblewrap, run inside a user namespace that forbids nested ones (issue 19): installed, but
    # unable to create namespaces, as in a container that denies them.
    wrapper = tmp_path / "bwrap"
    nest = f"{SUPPORT.bwrap} --unshare-user --disable-userns --dev-bind / / --"
    wrapper.write_text(f'#!/bin/sh\nexec {nest} {SUPPORT.bwrap} "$@"\n')
    wrapper.chmod(0o755)
    support = probe_host(bwrap=wrapper)
    assert support.bwrap is None
    assert "cannot create namespaces" in support.layers["bubblewrap"].detail
    config = SandboxConfig(policy="require", limits=TEST_LIMITS, bwrap=wrapper)
    with pytest.raises(SandboxError) as info:
        open_session(sandbox=config).generate(ADV, 1)
    assert info.value.layer == "bubblewrap"
    assert "cannot create namespaces" in info.value.reason
    assert "apt-get install bubblewrap" in str(info.value)
    # the control: auto runs the same model without it
    auto = dataclasses.replace(config, policy="auto")
    session = open_session(sandbox=auto)
    assert len(session.generate(ADV, 1)) == 1
    assert "bubblewrap" not in session.runner_info(ADV)["sandbox_layers"]


@needs_full_stack
def test_a_fork_bomb_is_stopped_with_its_runner(open_session: type[Session]) -> None:
    marker = f"mi-f{uuid.uuid4().hex[:10]}"
    session = open_session(sandbox=REQUIRE, inactivity_timeout_s=4)
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:  # the control: the bomb's children did exist before the runner was stopped
        while not stop.is_set():
            seen.update(_procs_named(marker))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with pytest.raises(RunnerTimeoutError):
            session.generate(ADV, 1, attack="forkbomb", marker=marker, max_forks=150)
    finally:
        stop.set()
        watcher.join()
    assert seen, "the fork bomb started no child: this test proves nothing"
    assert _wait_gone(marker) == []
    assert len(session.generate(ADV, 1)) == 1  # respawned


@needs_full_stack
def test_a_disk_fill_stops_at_the_file_size_limit(open_session: type[Session], tmp_path: Path) -> None:
    session = open_session(sandbox=REQUIRE)
    out = tmp_path / "out"
    with pytest.raises(ModelError) as info:
        session.save(ADV, 1, out, attack="diskfill", max_mib=256)
    assert info.value.remote_type == "OSError" and "File too large" in info.value.remote_message
    [filled] = list(out.rglob("fill.bin"))
    assert filled.stat().st_size <= TEST_LIMITS.file_size_bytes


@needs_bwrap
def test_a_catalogue_entry_demanding_require_gets_the_whole_stack(open_session: type[Session]) -> None:
    session = open_session(sandbox="auto")
    assert "bubblewrap" in session.runner_info(ADV_STRICT)["sandbox_layers"]


def test_save_refuses_a_symlinked_output_directory(open_session: type[Session], tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "out"
    link.symlink_to(target)
    with pytest.raises(ValueError, match="it is a symlink"):
        open_session(sandbox="off").save(ADV, 1, link)
    assert list(target.iterdir()) == []


@needs_full_stack
@pytest.mark.parametrize(
    ("requirements", "python_requires", "package"),
    [
        (["numpy", "msgpack"], "==3.7.*", "zoo"),  # the trampoline and the runner are Python 3.7 code
        (["numpy", "msgpack", "torch==2.13.0"], None, "torch"),  # torch imports under every layer
    ],
)
def test_oldest_python_and_torch_models_run_under_the_full_stack(
    tmp_path_factory: pytest.TempPathFactory,
    requirements: list[str],
    python_requires: str | None,
    package: str,
) -> None:
    try:
        python = build_runner_env(
            tmp_path_factory.mktemp("env"), requirements, python_requires=python_requires
        )
    except InterpreterNotFoundError as exc:  # only a missing Python may skip; a failed build fails
        if os.environ.get("CI"):
            raise  # CI machines have pyenv's 3.7: a skip there would hide a regression
        skip_without_python("3.7", exc)
    writer = write_numpy_zoo if package == "zoo" else write_torch_model
    pkg = writer(tmp_path_factory.mktemp("pkg") / package)
    plan = plan_launch(REQUIRE, python=python, package_root=pkg, output_dir=None, support=SUPPORT)
    with RunnerProcess.start(
        python,
        log_path=pkg.parent / "runner.log",
        command_prefix=plan.command_prefix,
        env_overrides=plan.env_overrides,
    ) as runner:
        verify_hello(plan, runner.hello)
        runner.load(pkg, model_file=pkg / "weights.npy", package_name=package)
        samples = [s for batch in runner.generate(3, batch_size=2, seed=1) for s in batch]
    assert len(samples) == 3 and all(s.shape == (8, 8, 3) for s in samples)
    if python_requires:
        assert runner.hello["python"].startswith("3.7.")
    else:
        assert runner.hello["packages"]["torch"].startswith("2.13.0")


def test_public_surface_is_pinned() -> None:
    from medigan_iso import sandbox

    assert sandbox.__all__ == [
        "LAYERS",
        "POLICIES",
        "PRIVATE_DIR_PLACEHOLDER",
        "SANDBOX_ENV",
        "HostSupport",
        "LaunchPlan",
        "LayerSupport",
        "Limits",
        "SandboxConfig",
        "effective_limits",
        "env_uses_cuda",
        "gpu_devices",
        "layers_in_force",
        "plan_launch",
        "probe_host",
        "protection_gaps",
        "resolve_policy",
        "runner_user",
        "seccomp_program",
        "stricter",
        "verify_hello",
    ]
