"""Model environments with real uv, real virtualenvs and real subprocesses (medigan_iso.envs).

Envs that several tests only read are built once in a module-scoped home; tests that break, race or kill
builds get their own home. The uv cache is shared through $MEDIGAN_ISO_UV_CACHE (tox sets it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _interpreters import skip_without_python

from medigan_iso.catalogue import ModelEntry, load_catalogue
from medigan_iso.envs import (
    EnvSpec,
    IndexSettings,
    ModelEnv,
    diff_stamps,
    ensure_env,
    index_settings,
    list_envs,
    prune_envs,
    remove_env,
    resolve,
)
from medigan_iso.envs.index import redact
from medigan_iso.errors import EnvBuildError, EnvNotBuiltError, InterpreterNotFoundError, ResolutionError
from medigan_iso.paths import cache_layout

NUMPY1 = EnvSpec(["numpy<2"], name="demo-numpy1")
BUILD_HEADER = "=== medigan-iso env build"


def model_entry(
    model_id: str,
    dependencies: tuple[str, ...],
    *,
    python_requires: str | None = None,
    requirements_lock: str | None = None,
) -> ModelEntry:
    """A real catalogue entry, validated and normalised by the catalogue module, with these dependencies."""
    execution: dict[str, object] = {
        "package_name": "pkg",
        "package_link": "https://models.invalid/pkg.zip",
        "model_name": "weights",
        "extension": ".npy",
        "dependencies": list(dependencies),
        "generate_method": {"name": "generate", "args": {"base": [], "custom": {}}},
    }
    if python_requires is not None:
        execution["python_requires"] = python_requires
    if requirements_lock is not None:
        execution["requirements_lock"] = requirements_lock
    raw = {model_id: {"execution": execution, "selection": {}, "description": {}}}
    return load_catalogue(raw, offline=True, official_url="").resolve(model_id)


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("envs") / "medigan-iso-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDIGAN_ISO_HOME", str(root))
        mp.delenv("MEDIGAN_ISO_OFFLINE", raising=False)
        yield root


@pytest.fixture(scope="module")
def numpy1_env(shared_home: Path) -> ModelEnv:
    return ensure_env(NUMPY1, home=shared_home)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDIGAN_ISO_OFFLINE", raising=False)


def run_in_env(env: ModelEnv, code: str) -> str:
    out = subprocess.run(
        [str(env.python), "-I", "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return out.stdout.strip()


def builds_in_log(env: ModelEnv) -> int:
    return env.log_path.read_text(encoding="utf-8").count(BUILD_HEADER)


def locked_pins(lock_text: str) -> dict[str, str]:
    pins = {}
    for line in lock_text.splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split(" ")[0].split("==")
            pins[name.lower()] = version
    return pins


# --- building and reuse ----------------------------------------------------------------------------


def test_env_is_built_once_and_reused(shared_home: Path, numpy1_env: ModelEnv) -> None:
    stamp_before = json.loads((numpy1_env.path / "medigan-iso-stamp.json").read_text())
    again = ensure_env(NUMPY1, home=shared_home)
    assert again == numpy1_env
    assert builds_in_log(numpy1_env) == 1
    assert json.loads((again.path / "medigan-iso-stamp.json").read_text()) == stamp_before
    assert numpy1_env.builder == "uv"
    assert numpy1_env.python == numpy1_env.path / "bin" / "python"
    assert numpy1_env.python_version == f"{sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}"
    assert run_in_env(numpy1_env, "import numpy; print(numpy.__version__)").startswith("1.")


def test_runner_package_is_copied_into_the_env(numpy1_env: ModelEnv) -> None:
    code = "import medigan_iso_runner.protocol as p, msgpack; print(p.PROTOCOL_VERSION, p.__file__)"
    version, where = run_in_env(numpy1_env, code).split()
    assert version == "1"
    assert where.startswith(str(numpy1_env.path))


def test_two_models_with_equal_locks_share_one_env(shared_home: Path, numpy1_env: ModelEnv) -> None:
    # msgpack and numpy are the runner's own requirements, so this resolves to the same lock
    entry = model_entry("00001_SAME_LOCK", ("numpy<2", "msgpack"))
    shared = ensure_env(entry, home=shared_home)
    assert shared.key == numpy1_env.key
    assert builds_in_log(numpy1_env) == 1
    (info,) = [i for i in list_envs(home=shared_home) if i.key == shared.key]
    assert {"00001_SAME_LOCK", "demo-numpy1"} <= set(info.models)
    assert info.valid and info.last_use is not None


def test_changed_requirements_give_a_new_key_and_the_stamp_says_what_changed(
    shared_home: Path, numpy1_env: ModelEnv
) -> None:
    first = ensure_env(model_entry("00002_CHANGES", ("numpy<2",)), home=shared_home)
    assert first.key == numpy1_env.key
    changed = ensure_env(model_entry("00002_CHANGES", ("numpy<2", "six")), home=shared_home)
    assert changed.key != first.key
    stamp = json.loads((changed.path / "medigan-iso-stamp.json").read_text())
    assert stamp["reason"].startswith(f"00002_CHANGES previously used env {first.key}")
    assert "requirements changed: added six" in stamp["reason"]
    assert run_in_env(changed, "import six; print('ok')") == "ok"


def test_diff_stamps_names_every_changed_input() -> None:
    old = {
        "requirements": ["a"],
        "lock_sha256": "1",
        "interpreter": {"version": "3.11.7", "platform": "p"},
        "protocol_version": 1,
        "builder": "uv",
    }
    new = {
        "requirements": ["a"],
        "lock_sha256": "2",
        "interpreter": {"version": "3.12.1", "platform": "p"},
        "protocol_version": 2,
        "builder": "virtualenv",
    }
    assert diff_stamps(old, new) == [
        "the lock changed (same requirements, new resolution or a different requirements_lock)",
        "interpreter 3.11.7 -> 3.12.1",
        "runner protocol 1 -> 2",
        "builder uv -> virtualenv",
    ]


def test_lock_reproduces_exactly_and_the_env_holds_exactly_the_lock(
    home: Path, online: None, numpy1_env: ModelEnv
) -> None:
    fresh = resolve(NUMPY1, home=home)  # a new home: no cached resolution, uv resolves again
    assert not fresh.from_cache
    assert fresh.lock == numpy1_env.lock_path.read_text()
    installed = json.loads(
        run_in_env(
            numpy1_env,
            "import json, importlib.metadata as m;"
            "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))",
        )
    )
    assert installed == locked_pins(fresh.lock)
    assert "--hash=sha256:" in fresh.lock


def test_requirements_lock_is_used_as_given(shared_home: Path, numpy1_env: ModelEnv) -> None:
    lock = numpy1_env.lock_path.read_text()
    entry = model_entry("00003_LOCKED", ("something-never-resolved",), requirements_lock=lock)
    assert ensure_env(entry, home=shared_home).key == numpy1_env.key


def test_junk_dependency_names_are_dropped_with_a_warning(
    shared_home: Path, numpy1_env: ModelEnv, caplog: pytest.LogCaptureFixture
) -> None:
    entry = model_entry("00004_JUNK", ("numpy<2", "Path", "Union", "pathlib"))
    with caplog.at_level(logging.WARNING, logger="medigan_iso.envs"):
        resolution = resolve(entry, home=shared_home)
    assert resolution.dropped == ("Path", "Union", "pathlib")
    assert resolution.from_cache  # same requirement set as NUMPY1 once the junk is gone
    assert "00004_JUNK: dropping 'Path', 'Union', 'pathlib'" in caplog.text
    assert ensure_env(entry, home=shared_home).key == numpy1_env.key


def test_build_false_without_an_env_names_the_command_that_builds_it(shared_home: Path) -> None:
    entry = model_entry("00005_NEVER_BUILT", ("numpy<2", "six==1.16.0"))
    with pytest.raises(EnvNotBuiltError) as info:
        ensure_env(entry, home=shared_home, build=False)
    assert info.value.model_id == "00005_NEVER_BUILT"
    assert info.value.command == "medigan-iso env build 00005_NEVER_BUILT"
    assert "medigan-iso env build 00005_NEVER_BUILT" in str(info.value)


def test_a_changed_runner_is_refreshed_in_place_without_a_rebuild(home: Path, online: None) -> None:
    env = ensure_env(["numpy<2"], home=home)
    runner = env.path / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    (runner / "medigan_iso_runner" / "protocol.py").write_text("PROTOCOL_VERSION = 'stale'\n")
    stamp_path = env.path / "medigan-iso-stamp.json"
    stamp = json.loads(stamp_path.read_text())
    stamp["runner_sha256"] = "0" * 64  # as if the runner source changed since the build
    stamp_path.write_text(json.dumps(stamp))
    again = ensure_env(["numpy<2"], home=home)
    assert again.key == env.key
    assert builds_in_log(env) == 1
    assert run_in_env(again, "import medigan_iso_runner.protocol as p; print(p.PROTOCOL_VERSION)") == "1"
    refreshed = json.loads(stamp_path.read_text())
    assert refreshed["runner_sha256"] != "0" * 64 and "runner_refreshed_at" in refreshed


def test_a_half_built_or_foreign_dir_is_never_trusted(home: Path, online: None) -> None:
    env = ensure_env(["numpy<2"], home=home)
    (env.path / "medigan-iso-stamp.json").unlink()  # as if the build died before its stamp
    with pytest.raises(EnvNotBuiltError):
        ensure_env(["numpy<2"], home=home, build=False)
    rebuilt = ensure_env(["numpy<2"], home=home)
    assert builds_in_log(rebuilt) == 2
    stamp = json.loads((rebuilt.path / "medigan-iso-stamp.json").read_text())
    assert "incomplete or foreign" in stamp["reason"]
    (rebuilt.path / "bin" / "python").unlink()
    (rebuilt.path / "bin" / "python").symlink_to("/nonexistent/python")
    with pytest.raises(EnvNotBuiltError):
        ensure_env(["numpy<2"], home=home, build=False)
    assert run_in_env(ensure_env(["numpy<2"], home=home), "print('ok')") == "ok"


# --- crashes and races ----------------------------------------------------------------------------

_ENSURE_SCRIPT = textwrap.dedent(
    """
    import sys
    from medigan_iso.envs import ensure_env
    env = ensure_env(sys.argv[2:], home=sys.argv[1], offline=False)
    print(env.key)
    """
)


def test_sigkill_mid_build_leaves_nothing_a_rebuild_trips_over(home: Path, online: None) -> None:
    reqs = ["numpy<2", "six"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _ENSURE_SCRIPT, str(home), *reqs],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    envs = home / "envs"
    # builds happen in the uv cache's build area (one mount with the cache), then move into envs/
    area = cache_layout(home).build_area
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any((p / "pyvenv.cfg").exists() for p in area.glob(f".tmp-*-{proc.pid}-*") if p.is_dir()):
            break
        time.sleep(0.005)
    else:
        pytest.fail("the build never reached its temp dir")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = [p for p in area.glob(f".tmp-*-{proc.pid}-*") if p.is_dir()]
    assert leftovers, "the kill came after the build finished; nothing was tested"
    assert not [p for p in envs.iterdir() if not p.name.startswith(".")]
    env = ensure_env(reqs, home=home)
    assert run_in_env(env, "import six, numpy; print(numpy.__version__[0])") == "1"
    assert not list(area.glob(".tmp-*")) and not list(envs.glob(".tmp-*"))


def test_prune_removes_a_killed_builds_temp_dir(home: Path) -> None:
    envs = home / "envs"
    envs.mkdir(parents=True)
    leftover = envs / ".tmp-0123456789abcdef-999-x"
    (leftover / "lib").mkdir(parents=True)
    (leftover / "lib" / "f").write_bytes(b"x" * 10000)
    report = prune_envs(home=home)
    assert report.removed == (leftover,)
    assert report.freed_bytes >= 10000
    assert not leftover.exists()


def test_four_processes_racing_on_a_cold_key_build_once_and_all_succeed(home: Path, online: None) -> None:
    reqs = ["numpy<2", "six"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _ENSURE_SCRIPT, str(home), *reqs],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _, err in results]
    keys = {out.strip() for out, _ in results}
    assert len(keys) == 1
    (key,) = keys
    log = (home / "logs" / f"env-{key}.log").read_text()
    assert log.count(BUILD_HEADER) == 1


# --- fallback -------------------------------------------------------------------------------------


def test_virtualenv_fallback_builds_the_same_lock_and_runs_a_module(
    shared_home: Path, numpy1_env: ModelEnv
) -> None:
    env = ensure_env(NUMPY1, home=shared_home, builder="virtualenv")
    assert env.builder == "virtualenv"
    assert env.key != numpy1_env.key  # the builder is part of the key
    assert env.lock_path.read_text() == numpy1_env.lock_path.read_text()
    stamp = json.loads((env.path / "medigan-iso-stamp.json").read_text())
    assert stamp["builder"] == "virtualenv" and stamp["builder_version"].startswith("virtualenv+pip")
    code = "import medigan_iso_runner.protocol as p, numpy; print(p.PROTOCOL_VERSION, numpy.__version__[0])"
    assert run_in_env(env, code) == "1 1"


def test_missing_uv_falls_back_with_one_warning_about_the_cost(
    shared_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_UV", "/nonexistent/uv")
    with caplog.at_level(logging.WARNING, logger="medigan_iso.envs"):
        env = ensure_env(NUMPY1, home=shared_home)
    assert env.builder == "virtualenv"
    warnings = [r.getMessage() for r in caplog.records if "uv is unusable" in r.getMessage()]
    assert len(warnings) == 1
    assert "20x slower" in warnings[0] and "0.9 GB" in warnings[0]
    assert run_in_env(env, "import numpy; print(numpy.__version__[0])") == "1"


# --- errors ---------------------------------------------------------------------------------------


def test_conflicting_requirements_fail_with_the_resolvers_explanation(shared_home: Path) -> None:
    entry = model_entry("00006_CONFLICT", ("numpy<2", "numpy>=2"))
    with pytest.raises(ResolutionError) as info:
        ensure_env(entry, home=shared_home)
    err = info.value
    assert err.model_id == "00006_CONFLICT"
    assert "numpy<2" in err.requirements and "numpy>=2" in err.requirements
    assert "unsatisfiable" in err.explanation
    assert str(err).startswith("cannot resolve model 00006_CONFLICT:")
    assert "relax or change the conflicting requirements" in str(err)


def test_a_missing_package_names_the_model_and_the_requirement(shared_home: Path) -> None:
    entry = model_entry("00007_TYPO", ("medigan-iso-no-such-package-zz==1.0",))
    with pytest.raises(ResolutionError) as info:
        ensure_env(entry, home=shared_home)
    err = info.value
    assert err.model_id == "00007_TYPO"
    assert err.offline_may_help is False
    assert "model 00007_TYPO requires 'medigan-iso-no-such-package-zz==1.0'" in str(err)


def test_a_network_failure_says_whether_offline_could_work(
    shared_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    with pytest.raises(ResolutionError) as info:
        ensure_env(["six==1.16.0"], home=shared_home, index_url="http://127.0.0.1:9/simple")
    err = info.value
    assert "network failure while resolving" in str(err)
    assert err.offline_may_help is False
    assert "an offline retry would fail too" in str(err)


def test_an_unavailable_python_raises_interpreter_not_found(shared_home: Path) -> None:
    entry = model_entry("00008_FUTURE", (), python_requires=">=3.99")
    with pytest.raises(InterpreterNotFoundError) as info:
        ensure_env(entry, home=shared_home)
    assert info.value.model_id == "00008_FUTURE"
    assert info.value.python_requires == ">=3.99"
    assert "uv python install '>=3.99'" in str(info.value)


def test_a_single_string_spec_is_rejected_with_a_hint() -> None:
    with pytest.raises(TypeError, match="pass a list of requirement strings"):
        ensure_env("numpy<2")  # type: ignore[arg-type]


def test_an_invalid_requirement_is_reported_with_the_model(shared_home: Path) -> None:
    with pytest.raises(ResolutionError) as info:
        ensure_env(model_entry("00009_BAD", ("numpy>>1",)), home=shared_home)
    assert info.value.model_id == "00009_BAD"
    assert "'numpy>>1' is not a valid PEP 508 requirement" in str(info.value)


# --- coexistence ----------------------------------------------------------------------------------


def test_a_torch_env_and_a_numpy1_env_coexist(shared_home: Path, numpy1_env: ModelEnv) -> None:
    # torch 2.13.0 (CPU) is reachable only through pip's find-links on the project's machines: this
    # passes only if the pip settings are translated to uv flags.
    torch_env = ensure_env(EnvSpec(["torch==2.13.0"], name="demo-torch"), home=shared_home)
    assert torch_env.key != numpy1_env.key
    torch_version, numpy_major = run_in_env(
        torch_env, "import torch, numpy; print(torch.__version__, numpy.__version__.split('.')[0])"
    ).split()
    assert torch_version.startswith("2.13.0")
    assert numpy_major == "2"
    # bytecode was compiled into the shared uv cache and hardlinked, not written anew into this env
    site = torch_env.path / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    pyc = site / "torch" / "__pycache__" / f"__init__.{sys.implementation.cache_tag}.pyc"
    assert pyc.is_file() and pyc.stat().st_nlink > 1
    assert run_in_env(numpy1_env, "import numpy; print(numpy.__version__.split('.')[0])") == "1"


def test_python_requires_picks_another_interpreter(shared_home: Path) -> None:
    other = "3.12" if sys.version_info[:2] != (3, 12) else "3.11"
    spec = EnvSpec([], python_requires=f"=={other}.*", name=f"demo-py{other.replace('.', '')}")
    try:
        env = ensure_env(spec, home=shared_home)
    except InterpreterNotFoundError as exc:
        skip_without_python(other, exc)
    assert env.python_version.startswith(f"{other}.")
    expected = str(tuple(int(part) for part in other.split(".")))
    assert run_in_env(env, "import sys, medigan_iso_runner; print(sys.version_info[:2])") == expected


# --- index settings -------------------------------------------------------------------------------


def test_pip_settings_are_translated_to_uv_flags(tmp_path: Path) -> None:
    system = tmp_path / "pip.conf"
    system.write_text("[global]\nindex-url = https://mirror.example/simple\nfind-links = /srv/a /srv/b\n")
    user = tmp_path / "user.conf"
    user.write_text(
        "[global]\nextra-index-url = https://u:secret@extra.example/simple\n"
        f"constraint = {tmp_path / 'c.txt'}\n[install]\nfind-links = /srv/c\n"
    )
    settings = index_settings(environ={}, pip_config_files=[system, user], offline=False)
    assert settings.uv_args() == [
        "--index-url",
        "https://mirror.example/simple",
        "--extra-index-url",
        "https://u:secret@extra.example/simple",
        "--find-links",
        "/srv/c",
        "--index-strategy",
        "unsafe-best-match",
        "--constraint",
        str(tmp_path / "c.txt"),
    ]
    assert "secret" not in settings.describe()
    assert "u:***@extra.example" in settings.describe()
    # pip gets the same settings as options (it runs with an empty home and PIP_CONFIG_FILE=/dev/null)
    assert settings.pip_args() == [
        "--index-url",
        "https://mirror.example/simple",
        "--extra-index-url",
        "https://u:secret@extra.example/simple",
        "--find-links",
        "/srv/c",
        "--constraint",
        str(tmp_path / "c.txt"),
    ]
    assert "--constraint" not in settings.pip_args(constraints=False)  # a lock is installed as is


def test_certificates_trusted_hosts_and_timeout_reach_uv_and_pip(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nextra-index-url = http://mirror.internal:8080/simple\n"
        "trusted-host = mirror.internal:8080\n  other.internal\ncert = ~/ca.pem\n"
        "client-cert = /srv/me.pem\ntimeout = 33\n"
    )
    settings = index_settings(environ={}, pip_config_files=[conf], offline=False)
    assert settings.trusted_hosts == ("mirror.internal:8080", "other.internal")
    ca = os.path.expanduser("~/ca.pem")
    assert settings.uv_args() == [
        "--extra-index-url",
        "http://mirror.internal:8080/simple",
        "--index-strategy",
        "unsafe-best-match",
        "--allow-insecure-host",
        "mirror.internal:8080",
        "--allow-insecure-host",
        "other.internal",
    ]
    assert settings.uv_env() == {
        "SSL_CERT_FILE": ca,
        "SSL_CLIENT_CERT": "/srv/me.pem",
        "UV_HTTP_TIMEOUT": "33",
    }
    assert settings.pip_args() == [
        "--extra-index-url",
        "http://mirror.internal:8080/simple",
        "--trusted-host",
        "mirror.internal:8080",
        "--trusted-host",
        "other.internal",
        "--cert",
        ca,
        "--client-cert",
        "/srv/me.pem",
        "--timeout",
        "33",
    ]


def test_pip_args_carry_every_setting_of_an_index_settings() -> None:
    settings = IndexSettings(
        index_url="https://i.example/simple",
        extra_index_urls=("https://e1.example/simple", "file:///srv/e2/simple"),
        find_links=("/srv/wheels",),
        constraints=(Path("/srv/c.txt"),),
        no_index=True,
        index_strategy="unsafe-best-match",  # uv only: pip always takes the best match across indexes
        cert="/srv/ca.pem",
        client_cert="/srv/me.pem",
        trusted_hosts=("i.example",),
        timeout_s="9",
        wheels_only=True,
    )
    assert settings.pip_args() == [
        *("--index-url", "https://i.example/simple"),
        *("--extra-index-url", "https://e1.example/simple", "--extra-index-url", "file:///srv/e2/simple"),
        *("--find-links", "/srv/wheels", "--no-index", "--trusted-host", "i.example"),
        *("--cert", "/srv/ca.pem", "--client-cert", "/srv/me.pem", "--timeout", "9"),
        *("--constraint", "/srv/c.txt", "--only-binary", ":all:"),
    ]
    assert IndexSettings(offline=True).pip_args() == ["--no-index"]  # pip has no offline mode
    assert IndexSettings().pip_args() == []


def test_pip_runs_without_its_own_configuration() -> None:
    base = {"PATH": "/usr/bin", "PIP_INDEX_URL": "https://other/simple", "PIP_CONFIG_FILE": "/x", "UV_X": "1"}
    assert IndexSettings().pip_env(base) == {"PATH": "/usr/bin", "UV_X": "1", "PIP_CONFIG_FILE": os.devnull}
    # what pip does not pass on to the pip that installs build dependencies, it reads from variables
    given = IndexSettings(cert="/srv/ca.pem", client_cert="/srv/me.pem", timeout_s="7").pip_env(base)
    assert {k: v for k, v in given.items() if k.startswith("PIP_")} == {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_CERT": "/srv/ca.pem",
        "PIP_CLIENT_CERT": "/srv/me.pem",
        "PIP_TIMEOUT": "7",
    }


def test_uv_variables_are_read_by_uv_and_given_to_pip(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nextra-index-url = https://conf.example/simple\nfind-links = /srv/conf\n")
    environ = {
        "UV_DEFAULT_INDEX": "corp=https://tok@corp.example/simple",
        "UV_INDEX": "https://a.example/simple b=https://b.example/simple",
        "UV_FIND_LINKS": "/srv/a,/srv/b",
        "UV_INSECURE_HOST": "corp.example",
        "UV_OFFLINE": "1",
        "SSL_CERT_FILE": "/srv/ca.pem",
    }
    settings = index_settings(environ=environ, pip_config_files=[conf], offline=False)
    assert settings.uv_args() == []  # uv reads every one of them itself
    assert settings.uv_env() == {}
    assert settings.pip_args() == [
        *("--index-url", "https://tok@corp.example/simple"),
        *("--extra-index-url", "https://a.example/simple", "--extra-index-url", "https://b.example/simple"),
        *("--find-links", "/srv/a", "--find-links", "/srv/b", "--no-index"),
        *("--trusted-host", "corp.example", "--cert", "/srv/ca.pem"),
    ]
    assert "tok@" not in settings.describe() and "find_links" in settings.describe()
    # uv ignores UV_FIND_LINKS once --find-links is on its command line: then it is given all of them
    per_call = index_settings(find_links=["/srv/call"], environ=environ, pip_config_files=[], offline=False)
    assert per_call.uv_args() == [
        "--find-links",
        "/srv/call",
        "--find-links",
        "/srv/a",
        "--find-links",
        "/srv/b",
    ]
    pip = per_call.pip_args()
    assert [pip[i + 1] for i, a in enumerate(pip) if a == "--find-links"] == ["/srv/call", "/srv/a", "/srv/b"]


def test_an_unreadable_pip_conf_is_ignored_without_logging_its_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("index-url = https://alice:s3cret@mirror.example/simple\n")  # no [global] section
    good = tmp_path / "good.conf"
    good.write_text("[global]\nfind-links = /srv/good\n")
    caplog.set_level(logging.WARNING, logger="medigan_iso.envs")
    settings = index_settings(environ={}, pip_config_files=[conf, good], offline=False)
    assert settings.index_url is None and settings.find_links == ("/srv/good",)
    (warning,) = [
        r.getMessage() for r in caplog.records if "ignoring unreadable pip configuration" in r.getMessage()
    ]
    assert "alice:***@mirror.example" in warning and "s3cret" not in warning


def test_credentials_in_urls_are_hidden() -> None:
    text = (
        "Looking in https://alice:s3cret@mirror.example/simple and http://T0KEN@127.0.0.1:8080/simple, "
        "git+https://bob:pw@git.example/x.git, not in /srv/a@b or mail@example.org"
    )
    assert redact(text) == (
        "Looking in https://alice:***@mirror.example/simple and http://***@127.0.0.1:8080/simple, "
        "git+https://bob:***@git.example/x.git, not in /srv/a@b or mail@example.org"
    )


def test_pip_variables_beat_pip_conf_and_uv_variables_beat_both(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://conf.example/simple\nfind-links = /srv/conf\n")
    environ = {"PIP_INDEX_URL": "https://env.example/simple", "PIP_FIND_LINKS": "/srv/env"}
    settings = index_settings(environ=environ, pip_config_files=[conf], offline=False)
    assert settings.index_url == "https://env.example/simple"
    assert settings.find_links == ("/srv/env",)
    uv_set = index_settings(
        environ={**environ, "UV_INDEX_URL": "https://uv.example/simple"},
        pip_config_files=[conf],
        offline=False,
    )
    assert uv_set.index_url == "https://uv.example/simple"
    assert "--index-url" not in uv_set.uv_args()  # uv reads UV_INDEX_URL itself; pip is given it
    assert uv_set.pip_args()[:2] == ["--index-url", "https://uv.example/simple"]
    per_call = index_settings(
        index_url="https://call.example/simple",
        find_links=["/srv/call"],
        environ=environ,
        pip_config_files=[conf],
        offline=True,
    )
    assert per_call.uv_args() == [
        "--index-url",
        "https://call.example/simple",
        "--find-links",
        "/srv/call",
        "--find-links",
        "/srv/env",
        "--offline",
    ]


def test_pip_config_file_variable_is_read_last(tmp_path: Path) -> None:
    conf = tmp_path / "extra.conf"
    conf.write_text("[global]\nno-index = true\n")
    settings = index_settings(environ={"PIP_CONFIG_FILE": str(conf)}, offline=False)
    assert settings.no_index
    assert "--no-index" in settings.uv_args()


def test_offline_defaults_to_the_medigan_iso_offline_variable() -> None:
    assert index_settings(environ={"MEDIGAN_ISO_OFFLINE": "1"}, pip_config_files=[]).offline
    assert not index_settings(environ={}, pip_config_files=[]).offline


# --- listing and removal --------------------------------------------------------------------------


def test_remove_env_deletes_it_and_build_false_then_fails(home: Path, online: None) -> None:
    env = ensure_env(EnvSpec(["numpy<2"], name="to-remove"), home=home)
    (info,) = list_envs(home=home)
    assert info.models == ("to-remove",) and info.own_bytes > 0
    assert remove_env(env.key, home=home) == env.path
    assert not env.path.exists()
    with pytest.raises(EnvNotBuiltError):
        ensure_env(EnvSpec(["numpy<2"], name="to-remove"), home=home, build=False)
    with pytest.raises(EnvNotBuiltError):
        remove_env(env.key, home=home)


def test_prune_older_than_removes_unused_envs(home: Path, online: None) -> None:
    env = ensure_env(["numpy<2"], home=home)
    users = env.path / "medigan-iso-models.json"
    users.write_text(json.dumps({"models": {}, "last_use": time.time() - 10 * 86400}))
    assert prune_envs(home=home, older_than_days=30).removed == ()
    report = prune_envs(home=home, older_than_days=5)
    assert report.removed == (env.path,)
    assert not env.path.exists()


# --- command line ---------------------------------------------------------------------------------


def test_cli_env_build_list_path_remove_and_prune(
    home: Path, online: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from medigan_iso.cli import main

    assert main(["env", "build", "--with", "numpy<2", "--name", "cli-demo"]) == 0
    built = capsys.readouterr().out
    assert built.startswith("cli-demo: env ") and "(uv, Python 3." in built
    key = built.split()[2]
    assert main(["env", "list"]) == 0
    listing = capsys.readouterr().out
    assert "MODELS" in listing and key in listing and "cli-demo" in listing
    assert main(["env", "path", "--with", "numpy<2"]) == 0
    assert capsys.readouterr().out.strip() == str(home / "envs" / key)
    assert main(["env", "remove", key]) == 0
    assert capsys.readouterr().out.strip() == f"removed {home / 'envs' / key}"
    assert main(["env", "path", "--with", "numpy<2"]) == 1
    err = capsys.readouterr().err
    assert "has no environment yet" in err and "medigan-iso env build" in err
    assert main(["env", "prune"]) == 0
    assert "pruned 0 item(s)" in capsys.readouterr().out


def test_cli_env_build_failure_shows_the_resolver_message(
    home: Path, online: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from medigan_iso.cli import main

    assert main(["env", "build", "--with", "numpy<2", "--with", "numpy>=2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medigan-iso: error: cannot resolve requirements:")
    assert "unsatisfiable" in err


def test_a_failed_install_raises_with_the_log_tail_and_leaves_nothing(
    home: Path, online: None, numpy1_env: ModelEnv
) -> None:
    lock = numpy1_env.lock_path.read_text()
    bad_lock = re.sub(r"sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, lock)
    entry = model_entry("00010_BAD_HASH", (), requirements_lock=bad_lock)
    with pytest.raises(EnvBuildError) as info:
        ensure_env(entry, home=home)
    err = info.value
    assert err.model_id == "00010_BAD_HASH"
    assert err.reason == "uv pip install failed" and err.returncode not in (None, 0)
    assert err.log_path is not None and err.log_path.is_file()
    assert "hash" in err.log_tail.lower()
    assert err.log_tail in str(err) and "medigan-iso env build 00010_BAD_HASH --rebuild" in str(err)
    assert [p.name for p in (home / "envs").iterdir() if not p.name.startswith(".")] == []
    assert not list((home / "envs").glob(".tmp-*"))
    assert not list(cache_layout(home).build_area.glob(".tmp-*"))


def test_prune_max_size_removes_least_recently_used_envs_first(home: Path, online: None) -> None:
    old = ensure_env(["numpy<2"], home=home)
    new = ensure_env(["numpy<2", "six"], home=home)
    for env, age_days in ((old, 3), (new, 1)):
        users = env.path / "medigan-iso-models.json"
        users.write_text(json.dumps({"models": {}, "last_use": time.time() - age_days * 86400}))
    sizes = {i.key: i.own_bytes for i in list_envs(home=home)}
    report = prune_envs(home=home, max_size_gb=(sizes[new.key] + 1) / 1e9)
    assert report.removed == (old.path,)
    assert [i.key for i in list_envs(home=home)] == [new.key]


def test_rebuild_replaces_the_env_in_place_and_says_why(home: Path, online: None) -> None:
    env = ensure_env(["numpy<2"], home=home)
    marker = env.path / "marker-from-first-build"
    marker.write_text("x")
    messages: list[str] = []
    again = ensure_env(["numpy<2"], home=home, rebuild=True, progress=messages.append)
    assert again.key == env.key and again.path == env.path
    assert not marker.exists()
    assert builds_in_log(again) == 2
    assert json.loads((again.path / "medigan-iso-stamp.json").read_text())["reason"] == "rebuild requested"
    assert messages[0].startswith("resolving ") and messages[-1].startswith(f"env {env.key} ready in")
    assert run_in_env(again, "import numpy; print(numpy.__version__[0])") == "1"
    assert [p.name for p in (home / "envs").iterdir() if not p.name.startswith(".")] == [env.key]
