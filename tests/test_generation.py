"""generate / stream / Session / the Generators facade / `medigan-iso generate`, end to end.

Real parts only: a catalogue file on disk whose entries point at model packages written by the tests,
packages verified and extracted by the packages module, envs built with uv by the envs module, and real
runner subprocesses. One home per module so the numpy env is built once.
"""

from __future__ import annotations

import csv
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

import numpy as np
import pytest
from _compat import zip_strict
from _model_fixtures import write_numpy_zoo, zoo_execution
from _pkgserver import serve
from _signals import sigint_default
from _zipcraft import package_zip

import medigan_iso
from medigan_iso import Generators, Session
from medigan_iso.cli import main
from medigan_iso.errors import (
    EnvError,
    EnvNotBuiltError,
    ModelError,
    RunnerCrashedError,
    RunnerError,
    RunnerStartError,
    UnknownModelError,
)
from medigan_iso.packages import tree_sha256
from medigan_iso.paths import cache_layout
from medigan_iso.runner_process import SHM_MIN_SLOT_BYTES
from medigan_iso.sandbox import probe_host

ZOO_ID = "test-zoo"
TUPLE_ID = "test-zoo-tuples"
NOT_BUILT_ID = "test-not-built"


def _entry(package_link: str, package_sha256: str, *, custom: dict[str, object], deps: list[str]) -> dict:
    return {
        "execution": zoo_execution(package_link, package_sha256, custom=custom, dependencies=deps),
        "selection": {"modality": ["test"], "tags": ["zoo"], "performance": {"FID": 1.0}},
        "description": {"title": "test zoo"},
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A catalogue file with three entries over one zoo package, and a home shared by the module."""
    root = tmp_path_factory.mktemp("generation")
    package = write_numpy_zoo(root / "catalogue" / "models" / "zoo")
    digest = tree_sha256(package)
    catalogue = {
        ZOO_ID: _entry("models/zoo", digest, custom={"behaviour": "plain", "size": 8}, deps=["numpy"]),
        TUPLE_ID: _entry("models/zoo", digest, custom={"behaviour": "tuple3", "size": 6}, deps=["numpy"]),
        # Same package, different requirements: a different env that nobody has built.
        NOT_BUILT_ID: _entry("models/zoo", digest, custom={}, deps=["numpy", "msgpack<1.1"]),
    }
    path = root / "catalogue" / "catalogue.json"
    path.write_text(json.dumps(catalogue), encoding="utf-8")
    home = root / "home"
    with pytest.MonkeyPatch.context() as env:  # module-scoped: undone after the module's last test
        env.setenv("MEDIGAN_ISO_HOME", str(home))
        env.setenv("MEDIGAN_ISO_CONFIG", str(path))
        env.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")  # no official catalogue: these tests know their models
        yield {"catalogue": path, "home": home, "root": root}


@pytest.fixture
def session(world: dict[str, Path]) -> Iterator[Session]:
    with Session(offline=False) as s:
        yield s


def test_generate_returns_the_samples_and_seeds_reproduce(world: dict[str, Path]) -> None:
    first = medigan_iso.generate(ZOO_ID, 5, seed=7, batch_size=2)
    again = medigan_iso.generate(ZOO_ID, 5, seed=7, batch_size=2)
    other = medigan_iso.generate(ZOO_ID, 5, seed=8, batch_size=2)
    assert len(first) == 5
    assert all(isinstance(a, np.ndarray) and a.shape == (8, 8, 3) and a.dtype == np.uint8 for a in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_each_runner_gets_a_thread_budget_before_numpy_loads(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 17: the CPUs divided among the warm runners by default, the Session's budget when given
    from medigan_iso.runner_process import THREAD_ENV, usable_cpus

    for key in THREAD_ENV:
        monkeypatch.delenv(key, raising=False)
    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
    with Session(offline=False) as session:
        (first,) = session.generate(ZOO_ID, 1, behaviour="echo_thread_env")
        (second,) = session.generate(TUPLE_ID, 1, behaviour="echo_thread_env")
    assert first == dict.fromkeys(keys, str(usable_cpus()))
    assert second == dict.fromkeys(keys, str(max(1, usable_cpus() // 2)))  # the first runner is warm
    with Session(offline=False, threads=3) as session:
        (fixed,) = session.generate(ZOO_ID, 1, behaviour="echo_thread_env")
        assert session.runner_info(ZOO_ID)["thread_budget"] == 3
    assert fixed == dict.fromkeys(keys, "3")
    with Session(offline=False, threads=0) as session:  # no budget: the pools size themselves
        (unbudgeted,) = session.generate(ZOO_ID, 1, behaviour="echo_thread_env")
        assert session.runner_info(ZOO_ID)["thread_budget"] is None
    assert unbudgeted == dict.fromkeys(keys)
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the caller's own setting is left alone
    with Session(offline=False) as session:
        (inherited,) = session.generate(ZOO_ID, 1, behaviour="echo_thread_env")
    assert inherited["OMP_NUM_THREADS"] == "5" and inherited["OPENBLAS_NUM_THREADS"] is None
    for wrong in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="threads must be an int >= 1, 0 "):
            Session(threads=wrong)  # type: ignore[arg-type]


def test_a_runner_logs_where_cache_layout_says(world: dict[str, Path]) -> None:
    layout = cache_layout(world["home"])
    before = set(layout.logs.glob("runner-*.log"))
    for _ in range(2):  # two runners of one model in (most likely) the same second: two logs
        with Session(offline=False) as s:
            s.generate(ZOO_ID, 1, seed=1)
    logs = sorted(set(layout.logs.glob("runner-*.log")) - before)
    assert len(logs) == 2, logs
    for log in logs:
        day, time_of_day, pid, serial = log.name[len(f"runner-{ZOO_ID}-") : -len(".log")].split("-")
        assert int(pid) == os.getpid()
        started = f"{day}-{time_of_day}"
        assert log == layout.runner_log(ZOO_ID, started=started, pid=os.getpid(), serial=int(serial))


def test_a_session_job_split_at_batch_boundaries_equals_the_whole(session: Session) -> None:
    whole = session.generate(ZOO_ID, 10, seed=21, batch_size=3)
    assert (whole.seed, whole.batch_size, whole.batch_offset, whole.model_id) == (21, 3, 0, ZOO_ID)
    # samples 3..8 alone (batches 1 and 2), then the last, short batch 3 (sample 9)
    middle = session.generate(ZOO_ID, 6, seed=21, batch_size=3, batch_offset=1)
    last = session.generate(ZOO_ID, 1, seed=21, batch_size=3, batch_offset=3)
    assert middle.batch_offset == 1
    for got, want in zip_strict(list(middle) + list(last), whole[3:]):
        np.testing.assert_array_equal(got, want)
    batches = session.stream(ZOO_ID, 6, seed=21, batch_size=3, batch_offset=1)
    assert (batches.seed, batches.batch_size, batches.batch_offset, batches.batch_index) == (21, 3, 1, None)
    indices = []
    for batch in batches:
        assert batches.batch_index is not None
        indices.append(batches.batch_index)
        first = batches.batch_index * 3
        for got, want in zip_strict(batch, whole[first : first + 3]):
            np.testing.assert_array_equal(got, want)
    assert indices == [1, 2]


def test_a_request_without_a_seed_records_the_seed_it_drew(session: Session) -> None:
    drawn = session.generate(ZOO_ID, 4, batch_size=2)
    assert isinstance(drawn.seed, int) and 0 <= drawn.seed < 2**63
    again = session.generate(ZOO_ID, 4, batch_size=2, seed=drawn.seed)
    assert all(np.array_equal(a, b) for a, b in zip_strict(drawn, again))
    batches = session.stream(ZOO_ID, 2)
    assert isinstance(batches.seed, int) and batches.seed != drawn.seed
    batches.close()


def test_bad_seeds_and_offsets_raise_value_errors(session: Session, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed must be an int in"):
        session.generate(ZOO_ID, 1, seed=-3)
    with pytest.raises(ValueError, match="batch_offset must be a non-negative int"):
        session.generate(ZOO_ID, 1, batch_offset=-1)
    with pytest.raises(ValueError, match="batch_offset must be a non-negative int"):
        session.save(ZOO_ID, 1, tmp_path / "out", batch_offset=True)
    assert not (tmp_path / "out").exists()


def test_abbreviated_and_unknown_ids(session: Session) -> None:
    with pytest.raises(UnknownModelError) as info:
        session.generate("test-zo", 1)
    assert info.value.model_id == "test-zo"
    assert ZOO_ID in info.value.close_matches


def test_custom_defaults_are_merged_with_caller_kwargs(session: Session) -> None:
    tuples = session.generate(TUPLE_ID, 3)
    assert [len(t) for t in tuples] == [3, 3, 3]
    image, mask, label = tuples[0]
    assert image.shape == (6, 6, 3) and mask.dtype == np.uint8 and label == "benign"
    overridden = session.generate(TUPLE_ID, 2, behaviour="plain", size=4)
    assert all(isinstance(a, np.ndarray) and a.shape == (4, 4, 3) for a in overridden)


def test_session_keeps_one_warm_runner_per_model(session: Session) -> None:
    pid = session.runner_info(ZOO_ID)["pid"]
    session.generate(ZOO_ID, 3)
    session.generate(ZOO_ID, 2, batch_size=1)
    assert session.runner_info(ZOO_ID)["pid"] == pid
    assert session.runner_info(TUPLE_ID)["pid"] != pid


def test_stream_yields_batches_and_an_early_stop_keeps_the_runner(session: Session) -> None:
    pid = session.runner_info(ZOO_ID)["pid"]
    sizes = []
    for batch in session.stream(ZOO_ID, 1000, batch_size=7):
        sizes.append(len(batch))
        if len(sizes) == 3:
            break
    assert sizes == [7, 7, 7]
    assert [len(b) for b in session.stream(ZOO_ID, 5, batch_size=2)] == [2, 2, 1]
    assert session.runner_info(ZOO_ID)["pid"] == pid


def test_models_run_concurrently_from_threads(session: Session) -> None:
    results: dict[str, list[object]] = {}
    errors: list[BaseException] = []

    def work(model_id: str) -> None:
        try:
            results[model_id] = session.generate(model_id, 20, batch_size=4, seed=3)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(m,)) for m in (ZOO_ID, TUPLE_ID)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert len(results[ZOO_ID]) == 20 and len(results[TUPLE_ID]) == 20
    # Runners spawned for threads that have ended are still alive (PR_SET_PDEATHSIG is per thread).
    assert len(session.generate(ZOO_ID, 1)) == 1


def test_a_model_error_keeps_the_runner_and_carries_the_remote_traceback(session: Session) -> None:
    pid = session.runner_info(ZOO_ID)["pid"]
    with pytest.raises(ModelError) as info:
        session.generate(ZOO_ID, 2, behaviour="raises")
    assert info.value.remote_type == "ValueError"
    assert "latent vector has the wrong size" in info.value.traceback_text
    assert session.runner_info(ZOO_ID)["pid"] == pid


def test_a_crash_respawns_the_runner_and_repeated_crashes_give_up(world: dict[str, Path]) -> None:
    with Session(offline=False, max_consecutive_crashes=2) as session:
        first_pid = session.runner_info(ZOO_ID)["pid"]
        with pytest.raises(RunnerCrashedError) as info:
            session.generate(ZOO_ID, 1, behaviour="exits")
        assert info.value.returncode == 3
        assert len(session.generate(ZOO_ID, 2)) == 2  # respawned after a backoff
        assert session.runner_info(ZOO_ID)["pid"] != first_pid
        for _ in range(2):
            with pytest.raises(RunnerCrashedError):
                session.generate(ZOO_ID, 1, behaviour="exits")
        with pytest.raises(RunnerError) as gave_up:
            session.generate(ZOO_ID, 1)
        assert "failed 2 times in a row" in str(gave_up.value)


def test_a_closed_session_refuses_work_and_stops_its_runners(world: dict[str, Path]) -> None:
    session = Session(offline=False)
    pid = session.runner_info(ZOO_ID)["pid"]
    session.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"runner {pid} outlived its closed Session")
    with pytest.raises(RunnerError, match="Session is closed"):
        session.generate(ZOO_ID, 1)


def test_facade_generate_saves_with_medigan_naming_or_returns_samples(
    world: dict[str, Path], tmp_path: Path
) -> None:
    with Generators() as generators:
        out = tmp_path / "saved"
        assert generators.generate(ZOO_ID, num_samples=35, output_path=out, install_dependencies=True) is None
        names = sorted(p.name for p in out.iterdir() if p.name not in ("manifest.jsonl", "run.json"))
        assert len(names) == 35
        assert {n.split("_")[1] for n in names} == {"0", "1"}  # batches of 32: batch_0_*, batch_1_*
        samples = generators.generate(ZOO_ID, num_samples=3, save_images=False)
        assert len(samples) == 3 and all(isinstance(s, np.ndarray) for s in samples)


def test_facade_generate_function_keeps_the_runner_warm(world: dict[str, Path]) -> None:
    with Generators() as generators:
        gen = generators.get_generate_function(ZOO_ID, num_samples=4, install_dependencies=True)
        pid = generators.session.runner_info(ZOO_ID)["pid"]
        assert len(gen()) == 4
        assert len(gen(num_samples=2, size=3)) == 2
        assert gen(num_samples=1, size=3)[0].shape == (3, 3, 3)
        assert generators.session.runner_info(ZOO_ID)["pid"] == pid


def test_build_never_makes_the_facade_name_the_build_command(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_BUILD", "never")
    with Generators() as generators, pytest.raises(EnvNotBuiltError) as info:
        # install_dependencies=True does not override the deployment's "never"
        generators.generate(NOT_BUILT_ID, num_samples=1, save_images=False, install_dependencies=True)
    assert info.value.model_id == NOT_BUILT_ID
    assert info.value.command == f"medigan-iso env build {NOT_BUILT_ID}"
    assert info.value.reason == "MEDIGAN_ISO_BUILD=never"
    assert f"medigan-iso env build {NOT_BUILT_ID}" in str(info.value)
    assert "MEDIGAN_ISO_BUILD=never" in str(info.value)
    with pytest.raises(EnvNotBuiltError):
        medigan_iso.generate(NOT_BUILT_ID, 1)


def test_build_never_makes_the_cli_generate_name_the_build_command(
    world: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_BUILD", "never")
    assert main(["generate", NOT_BUILT_ID, "-n", "1", "-o", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "MEDIGAN_ISO_BUILD=never" in err and f"medigan-iso env build {NOT_BUILT_ID}" in err


def test_session_without_install_dependencies_names_the_build_command(world: dict[str, Path]) -> None:
    with Session(install_dependencies=False) as session, pytest.raises(EnvNotBuiltError) as info:
        session.generate(NOT_BUILT_ID, 1)
    assert info.value.reason == "install_dependencies=False"
    assert str(info.value).endswith(
        "(unset MEDIGAN_ISO_BUILD=never / pass install_dependencies=True to Session)"
    )


def test_an_unknown_build_policy_is_refused(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_BUILD", "sometimes")
    with pytest.raises(EnvError, match="MEDIGAN_ISO_BUILD='sometimes' is not a build policy") as info:
        Session()
    assert info.value.remedy == "set MEDIGAN_ISO_BUILD to one of auto, never, or unset it"


def test_facade_find_and_generate(world: dict[str, Path]) -> None:
    with Generators() as generators:
        ranked = generators.find_models_rank_and_generate(
            ["zoo"], metric="FID", num_samples=2, save_images=False, install_dependencies=True
        )
        assert len(ranked) == 2
        # Three models match "zoo": find_model_and_generate needs exactly one and returns None.
        assert generators.find_model_and_generate(["zoo"], num_samples=1, save_images=False) is None


def test_cli_generate_writes_pngs_masks_and_labels(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    code = main(["generate", TUPLE_ID, "-n", "5", "-o", str(out), "--batch-size", "2", "--seed", "1"])
    assert code == 0
    assert sorted(p.name for p in out.glob("sample_*.png") if "_mask" not in p.name) == [
        f"sample_{i:05d}.png" for i in range(5)
    ]
    assert len(list(out.glob("sample_*_mask.png"))) == 5
    with (out / "labels.csv").open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["sample", "label"] and {r[1] for r in rows[1:]} == {"benign"}


def test_cli_generate_npy_keeps_exact_arrays_and_set_overrides(
    world: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "npy"
    code = main(["generate", ZOO_ID, "-n", "3", "-o", str(out), "--format", "npy", "--set", "size=5"])
    assert code == 0
    arrays = [np.load(p, allow_pickle=False) for p in sorted(out.glob("*.npy"))]
    assert [a.shape for a in arrays] == [(5, 5, 3)] * 3


def test_cli_generate_refuses_to_overwrite_existing_files_with_one_clear_error(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "again"
    assert main(["generate", ZOO_ID, "-n", "1", "-o", str(out)]) == 0
    before = (out / "sample_00000.png").read_bytes()
    capsys.readouterr()
    # issue 16: this ended in a raw FileExistsError traceback
    assert main(["generate", ZOO_ID, "-n", "1", "-o", str(out), "--seed", "5"]) == 1
    err = capsys.readouterr().err
    assert f"medigan-iso: error: {out / 'sample_00000.png'} already exists" in err
    assert "write into an empty or new folder" in err and "Traceback" not in err
    assert (out / "sample_00000.png").read_bytes() == before


def test_sample_writer_raises_output_exists_error_carrying_the_path(tmp_path: Path) -> None:
    from medigan_iso.errors import OutputExistsError
    from medigan_iso.images import SampleWriter

    SampleWriter(tmp_path, fmt="npy").write(0, np.zeros((2, 2)))
    with pytest.raises(OutputExistsError) as info:
        SampleWriter(tmp_path, fmt="npy").write(0, np.ones((2, 2)))
    assert isinstance(info.value, FileExistsError)
    assert info.value.path == tmp_path / "sample_00000.npy" and info.value.directory == tmp_path
    assert np.load(tmp_path / "sample_00000.npy").sum() == 0


@pytest.mark.parametrize("policy", ["off", "auto"])
def test_ctrl_c_stops_the_runner_and_keeps_what_was_written(
    world: dict[str, Path], tmp_path: Path, policy: str
) -> None:
    # Issue 19: runners are found as the host's descendants and recorded (pid and start time) before the
    # signal, because under bubblewrap the runner's environment names pid 1, not the host.
    out = tmp_path / "interrupted"
    script = textwrap.dedent(
        f"""
        import sys
        from medigan_iso.cli import main
        sys.exit(main(["generate", {ZOO_ID!r}, "-n", "100000", "-o", {str(out)!r}, "--batch-size", "1",
                       "--format", "npy", "--sandbox", {policy!r}]))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*.npy"))) < 5 and proc.poll() is None:
        time.sleep(0.05)
    tree = _descendants(proc.pid)
    runners = [pid for pid, (_, cmdline) in tree.items() if _is_runner(cmdline)]
    assert len(runners) == 1, f"not one runner among the host's descendants: {tree}"
    if policy == "auto" and probe_host().bwrap is not None:  # the runner inside bwrap, inside bwrap's init
        assert sum(_argv0(cmdline) == "bwrap" for _, cmdline in tree.values()) == 2, tree
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    kept = list(out.glob("*.npy"))
    assert len(kept) >= 5
    assert all(np.load(p).shape == (8, 8, 3) for p in kept)  # every kept file is whole
    assert not list(out.glob(".*.part"))
    left = _wait_until_gone({pid: start for pid, (start, _) in tree.items()})
    assert not left, f"left behind after Ctrl-C: {[_describe(pid, tree[pid][1]) for pid in left]}"


def _argv0(cmdline: str) -> str:
    return Path(cmdline.split(" ", 1)[0]).name


def _describe(pid: int, cmdline: str) -> str:
    return f"{pid} {_argv0(cmdline)}{' (runner)' if _is_runner(cmdline) else ''}"


def _is_runner(cmdline: str) -> bool:
    # off: `<env>/bin/python -I -m medigan_iso_runner`; auto: the env's python running the trampoline,
    # whose argv names the runner module (bwrap's argv names it too: it is not a python).
    return _argv0(cmdline).startswith("python") and "medigan_iso_runner" in cmdline


def _proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a live process, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), fields[19]


def _descendants(root: int) -> dict[int, tuple[str, str]]:
    """Every live descendant of ``root``: pid -> (start time, command line)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
    found: dict[int, tuple[str, str]] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        stat = _proc_stat(pid)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if stat is not None:
            found[pid] = (stat[2], cmdline)
            todo.extend(children.get(pid, []))
    return found


def _wait_until_gone(processes: dict[int, str], timeout_s: float = 30.0) -> list[int]:
    """Wait for the processes (pid -> start time) to exit; the pids still alive at the end."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for pid, start in processes.items():
            stat = _proc_stat(pid)
            if stat is not None and stat[2] == start and stat[0] not in ("Z", "X"):
                alive.append(pid)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.mark.parametrize("nested", [True, False], ids=["package-folder-layout", "root-layout"])
def test_zipped_packages_served_over_http_generate_in_both_layouts(
    world: dict[str, Path], tmp_path: Path, nested: bool
) -> None:
    """The whole chain: catalogue → download from 127.0.0.1 → verify → safe-extract → env → runner."""
    source = write_numpy_zoo(tmp_path / "src")
    prefix = "ProGAN-4ch/" if nested else ""
    archive = package_zip({prefix + p.name: p.read_bytes() for p in sorted(source.iterdir()) if p.is_file()})
    with serve() as server:
        server.state.files["/zoo.zip"] = archive
        entry = _entry(
            server.url("/zoo.zip"),
            hashlib.sha256(archive).hexdigest(),
            custom={"behaviour": "tuple4", "size": 5},
            deps=["numpy"],
        )
        entry["execution"]["package_name"] = "ProGAN-4ch"
        catalogue = tmp_path / "remote.json"
        catalogue.write_text(json.dumps({"test-remote-zoo": entry}), encoding="utf-8")
        with Session(config=catalogue, offline=False) as session:
            samples = session.generate("test-remote-zoo", 3, seed=1)
        assert len(server.state.gets("/zoo.zip")) == 1
    image, mask, other, label = samples[0]
    assert image.shape == (5, 5, 3) and mask.shape == (5, 5) and other.dtype == np.float32
    assert label == "malignant"


def test_cli_generate_grid_writes_a_contact_sheet(world: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    grid = tmp_path / "grid.png"
    code = main(
        ["generate", ZOO_ID, "-n", "6", "-o", str(tmp_path / "g"), "--grid", str(grid), "--set", "size=10"]
    )
    assert code == 0
    with Image.open(grid) as sheet:
        width, height = sheet.size
    # six 10x10 tiles: wider and taller than one tile, smaller than six in a row
    assert 10 < width < 6 * 10 + 7 * 2 + 1
    assert height >= 10
    assert len(list((tmp_path / "g").glob("sample_*.png"))) == 6


def test_a_runner_that_cannot_start_is_retried_with_backoff_then_given_up(
    world: dict[str, Path], tmp_path: Path
) -> None:
    with Session(home=tmp_path / "own-home", offline=False, max_consecutive_crashes=2) as session:
        env = session.prepare(ZOO_ID).env
        env.python.unlink()  # the env's interpreter vanishes after the env was checked
        for _ in range(2):
            with pytest.raises(RunnerStartError) as info:
                session.generate(ZOO_ID, 1)
            assert str(env.python) in str(info.value)
        with pytest.raises(RunnerError) as gave_up:
            session.generate(ZOO_ID, 1)
        assert not isinstance(gave_up.value, RunnerStartError)
        assert "failed 2 times in a row" in str(gave_up.value)


def test_cli_generate_timeout_gives_up_on_a_silent_model_with_one_clear_error(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 16: the inactivity clock was 600 s with no flag to change it
    out = tmp_path / "silent"
    argv = ["generate", ZOO_ID, "-n", "1", "-o", str(out), "--set", 'behaviour="hangs"', "--timeout", "2"]
    code = main(argv)
    assert code == 1
    err = capsys.readouterr().err
    assert "medigan-iso: error: runner timed out waiting for inactivity after 2 s" in err


def test_max_sample_bytes_follows_the_declared_image_size(world: dict[str, Path]) -> None:
    from medigan_iso.catalogue import ModelEntry
    from medigan_iso.generation import MIN_SAMPLE_BYTES, UNKNOWN_SAMPLE_BYTES, max_sample_bytes

    def entry(size: object) -> ModelEntry:
        return ModelEntry.from_raw("x", {"execution": {"image_size": size}}, source="t")

    assert max_sample_bytes(entry([128, 128])) == MIN_SAMPLE_BYTES
    assert max_sample_bytes(entry([512, 512, 3])) == 512 * 512 * 3 * 4 * 8 * 32
    assert max_sample_bytes(entry(None)) == UNKNOWN_SAMPLE_BYTES
    assert max_sample_bytes(entry(["big"])) == UNKNOWN_SAMPLE_BYTES


# --- shared memory (issue 17) ---------------------------------------------------------------------------


def _catalogue_with(world: dict[str, Path], name: str, entries: dict[str, list[int]]) -> Path:
    """Entries over the module's zoo package (its env too), each declaring the given image_size."""
    package = world["root"] / "catalogue" / "models" / "zoo"
    digest = tree_sha256(package)
    catalogue = {
        model_id: {
            "execution": zoo_execution("models/zoo", digest, custom={"size": 8}, image_size=size),
            "selection": {"modality": ["test"], "tags": ["zoo"], "performance": {"FID": 1.0}},
            "description": {"title": "test zoo, declared size"},
        }
        for model_id, size in entries.items()
    }
    path = world["root"] / "catalogue" / name
    path.write_text(json.dumps(catalogue), encoding="utf-8")
    return path


def test_shared_memory_slots_fit_the_declared_image_size_and_batch_and_the_switch_turns_them_off(
    world: dict[str, Path],
) -> None:
    # 24 samples of 1000x1000x3 in one batch: 72 MB, more than the fixed 64 MiB slots of before. The entry
    # declares 1000x1000, so its runner's slots hold 24 x 16 bytes per pixel; the bytes equal the pipe's.
    config = _catalogue_with(world, "declared.json", {"test-zoo-1000": [1000, 1000]})
    got = {}
    for switch in (True, False):
        with Session(offline=False, config=config, shared_memory=switch) as session:
            got[switch] = session.generate("test-zoo-1000", 24, batch_size=24, seed=4, size=1000)
            info = session.runner_info("test-zoo-1000")["shared_memory"]
        if switch:
            assert info["slot_bytes"] == 24 * 1000 * 1000 * 16 > 64 * 2**20
            assert info["frames"] == 1 and info["oversized_batch_bytes"] == 0 and info["samples"] == "copy"
        else:
            assert info is None
    assert sum(a.nbytes for a in got[True]) == 72_000_000 > 64 * 2**20
    for a, b in zip_strict(got[True], got[False]):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="shared_memory must be"):
        Session(shared_memory="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sample_memory must be one of"):
        Session(sample_memory="share")


def test_a_batch_too_big_for_its_slots_is_logged_and_the_models_next_runner_fits_it(
    world: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # ZOO_ID declares 8x8: its slots are the floor. A batch of 3 x 1.5 MB does not fit: the pipe carries
    # it and the host says so; after release() the model's next runner gets slots that fit it.
    with Session(offline=False) as session:
        first = session.generate(ZOO_ID, 3, batch_size=3, seed=5, size=700)
        info = session.runner_info(ZOO_ID)["shared_memory"]
        assert info["slot_bytes"] == SHM_MIN_SLOT_BYTES and info["frames"] == 0
        assert info["oversized_batch_bytes"] == 3 * 700 * 700 * 3
        assert any("larger than its shared-memory slots" in r.getMessage() for r in caplog.records)
        assert session.release(ZOO_ID)
        again = session.generate(ZOO_ID, 3, batch_size=3, seed=5, size=700)
        info = session.runner_info(ZOO_ID)["shared_memory"]
        assert info["slot_bytes"] >= 3 * 700 * 700 * 3 and info["frames"] == 1
    for a, b in zip_strict(first, again):
        assert np.array_equal(a, b)


def test_view_samples_are_read_only_equal_to_copies_and_outlive_the_session(world: dict[str, Path]) -> None:
    import gc

    with Session(offline=False) as session:
        copies = session.generate(ZOO_ID, 6, batch_size=1, seed=6, size=600)
    with Session(offline=False, sample_memory="view") as session:
        views = session.generate(ZOO_ID, 6, batch_size=1, seed=6, size=600)  # every slot held: no stall
        info = session.runner_info(ZOO_ID)["shared_memory"]
        assert info["samples"] == "view" and info["frames"] == info["held_slots"] == 3
        for a, b in zip_strict(views, copies):
            assert np.array_equal(a, b) and not a.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            views[0][0, 0, 0] = 0
        kept = views[:2]
        del views
        gc.collect()
        assert session.runner_info(ZOO_ID)["shared_memory"]["held_slots"] == 2
    assert np.array_equal(kept[0], copies[0]) and np.array_equal(kept[1], copies[1])
