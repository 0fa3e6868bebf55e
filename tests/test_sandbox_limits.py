"""Issue 16, findings 4 and 6, through real Sessions: limits that bind for root, and auto without bubblewrap.

A hostile package (``_hostile``) is served from a local catalogue whose entries set ``execution.resources``.
The verdicts come from the host: the typed error, the cgroup directory gone, the daemon's pid gone, the
Unix listener that received nothing. Each attack is also shown to land where the protection is off, so the
tests can fail.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _hostile import write_hostile
from _model_fixtures import zoo_execution

from medigan_iso import Session
from medigan_iso.cgroups import CgroupSupport, probe_cgroups
from medigan_iso.errors import ResourceLimitError, RunnerCrashedError, SandboxError
from medigan_iso.packages import tree_sha256
from medigan_iso.sandbox import (
    SANDBOX_ENV,
    Limits,
    SandboxConfig,
    effective_limits,
    plan_launch,
    probe_host,
    protection_gaps,
    seccomp_program,
)

SUPPORT = probe_host()
CGROUPS = probe_cgroups()
needs_cgroup = pytest.mark.skipif(CGROUPS.mechanism is None, reason=f"no cgroup here: {CGROUPS.detail}")
needs_landlock_seccomp = pytest.mark.skipif(
    not (SUPPORT.available("landlock") and SUPPORT.available("seccomp")),
    reason="needs Landlock and seccomp",
)
SMALL = "hostile-small"  # 512 MiB, 64 tasks
TMPFS = "hostile-tmpfs"  # 32 MiB tmpfs
PLAIN = "hostile"
NO_BWRAP = ("seccomp", "landlock", "rlimits")  # auto on a machine without (working) bubblewrap


def _entry(digest: str, resources: dict[str, Any] | None = None) -> dict[str, Any]:
    execution = zoo_execution("models/hostile", digest, package_name="hostile", image_size=None)
    if resources:
        execution["resources"] = resources
    return {"execution": execution, "selection": {}, "description": {"title": "hostile"}}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("limits")
    package = write_hostile(root / "catalogue" / "models" / "hostile")
    digest = tree_sha256(package)
    catalogue = {
        PLAIN: _entry(digest),
        SMALL: _entry(digest, {"memory_mb": 512, "processes": 64}),
        TMPFS: _entry(digest, {"tmpfs_mb": 32}),
    }
    path = root / "catalogue" / "catalogue.json"
    path.write_text(json.dumps(catalogue), encoding="utf-8")
    return {"catalogue": path, "home": root / "home"}


@pytest.fixture
def open_session(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    monkeypatch.delenv(SANDBOX_ENV, raising=False)
    sessions: list[Session] = []

    def factory(**kwargs: Any) -> Session:
        session = Session(config=str(world["catalogue"]), home=world["home"], offline=False, **kwargs)
        sessions.append(session)
        return session

    yield factory
    for session in sessions:
        session.close()


def _groups() -> list[Path]:
    found: list[Path] = []
    for base in CGROUPS.bases.values():
        found += base.glob(f"medigan-iso-{os.getpid()}-*")
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# --- limits that bind for root ----------------------------------------------------------------------


@needs_cgroup
def test_a_fork_bomb_is_stopped_by_the_process_limit_with_a_typed_error(open_session: Any) -> None:
    session = open_session(sandbox="require", inactivity_timeout_s=120)
    with pytest.raises(ResourceLimitError) as info:
        session.generate(SMALL, 1, attack="fork_bomb")
    assert info.value.limit == "processes" and info.value.model_id == SMALL
    assert "more than 64 processes" in str(info.value)
    assert len(session.generate(SMALL, 1)) == 1  # a fresh runner serves the next request
    session.close()
    assert _groups() == []  # every process of the bomb is gone, or the group could not be removed


@needs_cgroup
def test_an_8_gib_allocation_is_stopped_by_the_memory_limit_with_a_typed_error(open_session: Any) -> None:
    session = open_session(sandbox="require", inactivity_timeout_s=120)
    with pytest.raises(ResourceLimitError) as info:
        session.generate(SMALL, 1, attack="allocate", gib=8)
    assert info.value.limit == "memory"
    assert "0.50 GiB" in str(info.value)
    assert len(session.generate(SMALL, 1)) == 1


@pytest.mark.skipif(SUPPORT.bwrap is None, reason="bubblewrap cannot run here")
def test_the_sandbox_tmpfs_is_capped_by_the_entrys_tmpfs_size(open_session: Any) -> None:
    # issue 16: /tmp and /dev/shm held 2 GiB of RAM each while a runner was warm; now 512 MiB by default,
    # per entry in execution.resources, and charged to the runner's memory cgroup
    session = open_session(sandbox="require")
    for where in ("/dev/shm", "/tmp"):
        [result] = session.generate(TMPFS, 1, attack="tmpfs_fill", where=where, mib=64)
        assert result.startswith("full at ") and "No space left on device" in result, result
        assert int(result.split()[2]) <= 32
    assert Limits().tmpfs_bytes == 512 * 1024**2


def test_default_memory_is_half_of_the_machine_and_entries_override_it() -> None:
    base = Limits()
    assert effective_limits(base, machine_memory=16 * 2**30).memory_bytes == 8 * 2**30
    small = effective_limits(base, {"memory_mb": 512, "processes": 64, "cpus": 1.5}, machine_memory=2**34)
    assert (small.memory_bytes, small.pids, small.cpus) == (512 * 2**20, 64, 1.5)
    # a catalogue cannot ask for more than the machine has
    assert effective_limits(base, {"memory_mb": 10**9}, machine_memory=2**34).memory_bytes == 2**34


def test_the_schema_refuses_unknown_resource_keys() -> None:
    from medigan_iso.catalogue import validate_catalogue
    from medigan_iso.errors import CatalogueValidationError

    entry = _entry("0" * 64, {"memory_mb": 512, "gpus_please": 8})
    with pytest.raises(CatalogueValidationError) as info:
        validate_catalogue({"x": entry}, source="t.json")
    assert any("resources" in path for _, path, _ in info.value.violations)


def test_require_as_root_without_a_cgroup_is_refused() -> None:
    if os.geteuid() != 0:
        pytest.skip("the rule is about root")
    no_cgroup = dataclasses.replace(SUPPORT, cgroups=CgroupSupport(None, "none in this test"))
    with pytest.raises(SandboxError) as info:
        plan_launch(
            SandboxConfig(policy="require", layers=("seccomp", "landlock", "rlimits")),
            python="/usr/bin/python3",
            package_root=None,
            output_dir=None,
            support=no_cgroup,
        )
    assert info.value.layer in ("rlimits", "bubblewrap")
    assert "leave a gap" in info.value.reason


# --- auto without bubblewrap -------------------------------------------------------------------------


@needs_landlock_seccomp
def test_without_bubblewrap_the_hosts_proc_is_unreadable(open_session: Any) -> None:
    confined = open_session(sandbox=SandboxConfig(policy="auto", layers=NO_BWRAP))
    [inside] = confined.generate(PLAIN, 1, attack="proc_read", pid=os.getpid())
    assert inside == "denied: PermissionError"
    # the same attack with the sandbox off reads this process's environment
    [leaked] = open_session(sandbox="off").generate(PLAIN, 1, attack="proc_read", pid=os.getpid())
    assert isinstance(leaked, bytes) and b"PATH=" in leaked


@needs_landlock_seccomp
def test_without_bubblewrap_a_path_named_unix_socket_is_unreachable(
    open_session: Any, tmp_path: Path
) -> None:
    address = str(tmp_path / "host.sock")
    received: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(4)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                received.append(conn.recv(16))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        confined = open_session(sandbox=SandboxConfig(policy="auto", layers=NO_BWRAP))
        [inside] = confined.generate(PLAIN, 1, attack="unix_connect", address=address)
        assert inside.startswith("denied: ")
        assert received == []
        [open_result] = open_session(sandbox="off").generate(PLAIN, 1, attack="unix_connect", address=address)
        assert open_result == "connected"
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received == [b"leak"]  # the listener works: the confined attempt really was refused
    finally:
        stop.set()
        thread.join(5)
        server.close()


@needs_cgroup
@needs_landlock_seccomp
def test_without_bubblewrap_a_setsid_daemon_dies_when_the_session_closes(open_session: Any) -> None:
    session = open_session(sandbox=SandboxConfig(policy="auto", layers=NO_BWRAP))
    [pids] = session.generate(PLAIN, 1, attack="daemon")
    daemon = int(np.asarray(pids)[0])
    assert daemon > 0 and _alive(daemon), "the daemon never started: the test proves nothing"
    try:
        session.close()
        deadline = time.monotonic() + 10
        while _alive(daemon) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(daemon)
    finally:
        if _alive(daemon):
            os.kill(daemon, signal.SIGKILL)


def test_protection_gaps_name_what_auto_leaves_open() -> None:
    no_cgroup = dataclasses.replace(SUPPORT, cgroups=CgroupSupport(None, "none in this test"))
    gaps = [gap for _, gap, _ in protection_gaps(no_cgroup, ["rlimits"])]
    assert any("/proc of host processes" in gap for gap in gaps)
    assert any("Unix sockets" in gap for gap in gaps)
    assert any("setsid daemon" in gap for gap in gaps)
    assert protection_gaps(SUPPORT, ["bubblewrap", "seccomp", "landlock", "rlimits"]) == [] or (
        SUPPORT.cgroups.mechanism is None and os.geteuid() == 0
    )


def test_seccomp_without_bubblewrap_refuses_unix_sockets_but_not_socketpairs() -> None:
    with_unix = seccomp_program("x86_64")
    without = seccomp_program("x86_64", allow_unix_sockets=False)
    assert len(with_unix) == len(without) and with_unix != without


def test_doctor_says_which_limit_mechanism_is_in_force_and_what_auto_leaves_open(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medigan_iso.cli import main

    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["sandbox"]
    assert report["resource_limits"]["cgroup"] == CGROUPS.mechanism
    assert report["resource_limits"]["mechanism"] == SUPPORT.limits_mechanism
    assert report["resource_limits"]["memory_bytes"] == effective_limits(Limits()).memory_bytes
    assert isinstance(report["auto_gaps"], list)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"resource limits: {SUPPORT.limits_mechanism}" in out


def test_auto_warns_once_per_session_about_the_gaps_it_leaves(
    open_session: Any, caplog: pytest.LogCaptureFixture
) -> None:
    session = open_session(sandbox=SandboxConfig(policy="auto", layers=("rlimits",)))
    with caplog.at_level("WARNING", logger="medigan_iso.generation"):
        session.generate(PLAIN, 1)
        with pytest.raises(RunnerCrashedError):  # the next request respawns: a second spawn
            session.generate(PLAIN, 1, attack="escape_stderr_crash")
        session.generate(PLAIN, 1)
    gap_lines = [
        r.getMessage() for r in caplog.records if "leaves these protections missing" in r.getMessage()
    ]
    assert len(gap_lines) == 1
    assert "/proc of host processes is readable" in gap_lines[0]
    assert "path-named Unix sockets" in gap_lines[0]


def test_cgroup_v2_layout_is_probed_and_written_as_the_kernel_expects(tmp_path: Path) -> None:
    # This machine has cgroup v1 only; a directory shaped like a delegated v2 hierarchy stands in for
    # /sys/fs/cgroup so the v2 path (probe, limits, join argv) is checked byte for byte.
    own = dict(line.split(":", 2)[1:] for line in Path("/proc/self/cgroup").read_text().splitlines())
    if "" not in own:
        pytest.skip("no cgroup v2 line in /proc/self/cgroup")
    base = tmp_path / own[""].lstrip("/")
    base.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (base / "cgroup.subtree_control").write_text("memory pids\n")
    support = probe_cgroups(tmp_path)
    assert support.mechanism == "cgroup2" and support.bases == {"": base}
    from medigan_iso.cgroups import CgroupLimits, RunnerCgroup

    group = RunnerCgroup.create(support, CgroupLimits(memory_bytes=2**30, pids=64, cpus=1.5), label="t")
    [path] = group.dirs.values()
    assert path.parent == base
    assert (path / "pids.max").read_text() == "64"
    assert (path / "memory.max").read_text() == str(2**30)
    assert (path / "memory.swap.max").read_text() == "0"
    assert group.join_prefix()[:2] == ["/bin/sh", "-c"]
    assert f"echo $$ > {path / 'cgroup.procs'}" in group.join_prefix()[2]
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert group.oom_killed()
    (path / "cgroup.procs").write_text("")
    group.kill(wait_s=0)
    for name in list(path.iterdir()):
        name.unlink()
    group.remove()
    assert not path.exists()
    (base / "cgroup.subtree_control").write_text("cpu\n")
    refused = probe_cgroups(tmp_path)
    assert refused.mechanism is None and "does not delegate memory and pids" in refused.detail


def test_a_session_removes_old_runner_logs_when_it_starts_a_runner(
    open_session: Any, world: dict[str, Path]
) -> None:
    logs = world["home"] / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / ".last-prune").unlink(missing_ok=True)
    old = logs / "runner-ancient.log"
    old.write_text("old")
    then = time.time() - 60 * 24 * 3600
    os.utime(old, (then, then))
    open_session(sandbox="off").generate(PLAIN, 1)
    assert not old.exists()
    assert (logs / ".last-prune").exists()


@needs_cgroup
def test_groups_of_hosts_that_died_are_emptied_and_removed(tmp_path: Path) -> None:
    import subprocess

    from medigan_iso.cgroups import remove_stale_groups

    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"medigan-iso-{dead.pid}-0-runner"
    dirs = [base / name for base in CGROUPS.bases.values()]
    for path in dirs:
        path.mkdir()
    # a daemon the dead host's model left behind, sitting in the group
    orphan = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        for path in dirs:
            (path / "cgroup.procs").write_text(str(orphan.pid))
        assert remove_stale_groups(CGROUPS) >= 1
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert not any(path.exists() for path in dirs)
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
        for path in dirs:
            if path.exists():
                path.rmdir()
