"""Issue 16 follow-up: on a root host the runner does not run as uid 0 where bubblewrap works.

As root, bubblewrap's user namespace maps the sandbox's uid to the host's uid 0, and the kernel exempts uid 0
(``INIT_USER``) from RLIMIT_NPROC. So a root host's runner runs in bubblewrap without a user namespace, with
only CAP_SETUID/CAP_SETGID, and the trampoline switches to uid/gid 65534 before any model code runs (the
capabilities go with the switch). Verified from inside: the runner's hello reports ``os.getuid()``, and a
fork bomb meets RLIMIT_NPROC (EAGAIN inside the model) before the cgroup's pids limit.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _hostile import write_hostile
from _model_fixtures import zoo_execution

from medigan_iso import Session
from medigan_iso.errors import ModelError
from medigan_iso.packages import tree_sha256
from medigan_iso.sandbox import (
    RUNNER_UID,
    Limits,
    SandboxConfig,
    plan_launch,
    probe_host,
)

SUPPORT = probe_host()
ROOT = os.geteuid() == 0
needs_root_and_bwrap = pytest.mark.skipif(
    not ROOT or SUPPORT.bwrap is None,
    reason="not POSIX root with bubblewrap: the uid switch is for root hosts",
)
PLAIN = "uid-hostile"


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uid")
    package = write_hostile(root / "catalogue" / "models" / "hostile")
    entry = {
        "execution": zoo_execution(
            "models/hostile", tree_sha256(package), package_name="hostile", image_size=None
        ),
        "selection": {},
        "description": {"title": "hostile"},
    }
    path = root / "catalogue" / "catalogue.json"
    path.write_text(json.dumps({PLAIN: entry}), encoding="utf-8")
    return path


@pytest.fixture
def session_factory(catalogue: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    sessions: list[Session] = []

    def factory(sandbox: Any) -> Session:
        session = Session(
            config=str(catalogue), home=catalogue.parent.parent / "home", offline=False, sandbox=sandbox
        )
        sessions.append(session)
        return session

    yield factory
    for session in sessions:
        session.close()


def _plan(tmp_path: Path, *, output_dir: Path | None = None) -> Any:
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True, exist_ok=True)
    python = env / "bin" / "python"
    if not python.exists():
        python.symlink_to(os.path.realpath(sys.executable))
    env.chmod(0o755)
    return plan_launch(
        SandboxConfig(policy="auto"), python=python, package_root=None, output_dir=output_dir, support=SUPPORT
    )


@needs_root_and_bwrap
def test_a_root_hosts_plan_switches_uid_inside_bubblewrap_without_a_user_namespace(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert plan.run_as == (RUNNER_UID, RUNNER_UID)
    argv = list(plan.command_prefix)
    bwrap = argv[: argv.index("--")]
    assert "--unshare-user" not in bwrap and "--unshare-all" not in bwrap
    assert {"--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"} <= set(bwrap)
    adds = [bwrap[i + 1] for i, arg in enumerate(bwrap) if arg == "--cap-add"]
    assert sorted(adds) == ["CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID"]
    assert bwrap.index("--cap-drop") < bwrap.index("--cap-add")
    assert json.loads(argv[-1])["run_as"] == [RUNNER_UID, RUNNER_UID]
    # a runner that writes a host folder itself keeps the host's uid (and its own user namespace)
    kept = _plan(tmp_path, output_dir=tmp_path)
    assert kept.run_as is None and "output folder" in kept.run_as_detail
    assert "--unshare-user" in kept.command_prefix


def test_a_non_root_host_keeps_its_own_uid(tmp_path: Path) -> None:
    if ROOT:
        pytest.skip("host is root: this case needs a non-root host")
    assert _plan(tmp_path).run_as is None


@needs_root_and_bwrap
def test_the_runner_reports_uid_65534_and_rlimit_nproc_binds(session_factory: Any) -> None:
    session = session_factory(SandboxConfig(policy="require", limits=Limits(processes=48)))
    report = session.runner_info(PLAIN)["sandbox"]
    assert (report["uid"], report["euid"], report["gid"]) == (RUNNER_UID, RUNNER_UID, RUNNER_UID)
    [status] = session.generate(PLAIN, 1, attack="capabilities")
    assert status == "CapInh=0 CapPrm=0 CapEff=0 CapBnd=0 CapAmb=0", status  # none, none can come back
    # the cgroup allows 1024 tasks; RLIMIT_NPROC (48) stops the bomb first, as EAGAIN inside the model
    with pytest.raises(ModelError) as info:
        session.generate(PLAIN, 1, attack="fork_bomb")
    assert "Resource temporarily unavailable" in str(info.value) or "BlockingIOError" in str(info.value)
    assert len(session.generate(PLAIN, 1)) == 1


@needs_root_and_bwrap
def test_control_a_runner_that_stays_root_is_not_held_by_rlimit_nproc(
    session_factory: Any, tmp_path: Path
) -> None:
    # the same bomb from a runner that writes an output folder itself (save_images) and so stays uid 0:
    # the kernel ignores RLIMIT_NPROC for it and only the cgroup's pids limit (1024 tasks) stops the bomb
    from medigan_iso.errors import ResourceLimitError

    session = session_factory(SandboxConfig(policy="require", limits=Limits(processes=48)))
    with pytest.raises(ResourceLimitError) as info:
        session.save(PLAIN, 1, tmp_path / "out", attack="fork_bomb")
    assert info.value.limit == "processes" and "more than 1024 processes" in str(info.value)


@needs_root_and_bwrap
def test_doctor_says_which_user_runners_run_as(capsys: pytest.CaptureFixture[str]) -> None:
    from medigan_iso.cli import main

    assert main(["doctor", "--json"]) == 0
    said = json.loads(capsys.readouterr().out)["sandbox"]["runner_user"]
    assert said.startswith(f"uid {RUNNER_UID} inside bubblewrap (host is root; RLIMIT_NPROC binds)")
    assert main(["doctor"]) == 0
    assert f"runners run as: uid {RUNNER_UID} inside bubblewrap" in capsys.readouterr().out
