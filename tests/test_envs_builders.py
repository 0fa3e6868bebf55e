"""Which builder builds an env when uv is missing, cannot start, or fails mid-build (issue 19).

Real uv and real virtualenv + pip; uv's absence and breakage come through the envs module's seam
``$MEDIGAN_ISO_UV`` (the path of the uv binary): a path that does not exist, a file that cannot be
executed, and a wrapper that runs the real uv but fails ``uv pip install`` the way a crashed build does.
The pip fallback runs inside bubblewrap with an empty home, so it sees the user's pip configuration only
through the index settings envs translates: a package that only a pip.conf extra index (a real index on
127.0.0.1, behind credentials) has must still be found, and the credentials must not reach the logs.
"""

from __future__ import annotations

import base64
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _extra_index import PASSWORD, SHADOWING, USER, WHEEL, ExtraIndex, extra_index
from uv import find_uv_bin

from medigan_iso.envs import EnvSpec, ensure_env, list_envs
from medigan_iso.errors import EnvBuildError, ResolutionError

SPEC = EnvSpec(["six==1.16.0"], name="builders-six")


@pytest.fixture
def online_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv("MEDIGAN_ISO_OFFLINE", raising=False)
    yield home


# A uv that cannot be executed: confined (bubblewrap), the exec failure is bwrap's "execvp ...: No such file
# or directory" with exit code 1, which once came back as a ResolutionError ("relax or change the conflicting
# requirements") with no fallback. envs runs `uv --version` in the same confinement first.


def _unstartable(tmp_path: Path) -> Path:
    uv = tmp_path / "uv"
    uv.write_text("#!/nonexistent/interpreter\n")  # executable, but exec fails (ENOENT)
    uv.chmod(0o755)
    return uv


def test_builder_uv_without_uv_is_an_error_naming_the_remedy(
    online_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_UV", str(tmp_path / "no-such-uv"))
    with pytest.raises(EnvBuildError) as info:
        ensure_env(SPEC, home=online_home, builder="uv")
    assert info.value.model_id == "builders-six"
    assert info.value.reason == "builder='uv' was requested but no uv binary was found"
    assert info.value.remedy is not None and "pip install uv" in info.value.remedy
    assert list_envs(home=online_home) == []


def test_builder_uv_with_a_uv_that_cannot_start_is_an_error(
    online_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_UV", str(_unstartable(tmp_path)))
    with pytest.raises(EnvBuildError) as info:
        ensure_env(SPEC, home=online_home, builder="uv")
    assert info.value.reason.startswith("uv cannot start:")
    assert info.value.remedy is not None and "--force-reinstall uv" in info.value.remedy


def test_a_uv_that_cannot_start_falls_back_to_virtualenv_with_a_warning(
    online_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_UV", str(_unstartable(tmp_path)))
    caplog.set_level(logging.WARNING, logger="medigan_iso.envs")
    env = ensure_env(SPEC, home=online_home)
    assert env.builder == "virtualenv"
    fallbacks = [
        r.getMessage() for r in caplog.records if "building with virtualenv + pip instead" in r.getMessage()
    ]
    assert len(fallbacks) == 1, fallbacks  # one warning, naming why uv is unusable
    assert str(tmp_path / "uv") in fallbacks[0]
    import_six = [str(env.python), "-I", "-c", "import six; print(six.__version__)"]
    assert subprocess.run(import_six, capture_output=True, text=True, check=True).stdout.strip() == "1.16.0"


def test_uv_failing_mid_build_is_a_build_error_that_leaves_no_env(
    online_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrapper = tmp_path / "uv"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = pip ] && [ "$2" = install ]; then\n'
        "  echo 'error: simulated crash while installing' >&2; exit 101\n"
        "fi\n"
        f'exec {find_uv_bin()} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("MEDIGAN_ISO_UV", str(wrapper))
    with pytest.raises(EnvBuildError) as info:
        ensure_env(SPEC, home=online_home)
    err = info.value
    assert err.returncode == 101
    assert "simulated crash while installing" in err.log_tail
    assert err.log_path is not None and err.log_path.is_file()
    assert list_envs(home=online_home) == []  # nothing half-built is left to be mistaken for an env
    monkeypatch.setenv("MEDIGAN_ISO_UV", find_uv_bin())
    assert ensure_env(SPEC, home=online_home).builder == "uv"  # the next build is not poisoned


# --- the pip fallback and pip's configuration ----------------------------------------------------


@pytest.fixture
def extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ExtraIndex]:
    with extra_index(tmp_path / "extra") as index:
        for var in SHADOWING:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("PIP_CONFIG_FILE", str(index.pip_conf))
        yield index


def test_the_pip_fallback_finds_a_package_only_pip_conf_names(
    online_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: ExtraIndex
) -> None:
    monkeypatch.setenv("MEDIGAN_ISO_UV", str(tmp_path / "no-such-uv"))  # no uv: pip resolves and installs
    env = ensure_env(EnvSpec(["pipargs-extra==1.0"], name="pipargs-extra"), home=online_home)
    assert env.builder == "virtualenv"
    done = subprocess.run(
        [str(env.python), "-I", "-c", "import pipargs_extra; print(pipargs_extra.VALUE)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "extra"
    # pip (resolving, then installing the lock) asked the extra index, with the credentials of its URL
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    pages = extra.fetched_by_pip("/simple/pipargs-extra/")
    assert len(pages) >= 2 and all(h.get("Authorization") == auth for h in pages), pages
    assert extra.fetched_by_pip(f"/files/{WHEEL}")
    log = env.log_path.read_text(encoding="utf-8")
    assert "build bubblewrap" in log  # the pip fallback ran confined, with an empty home
    (install,) = [line for line in log.splitlines() if " -m pip install " in line]
    assert f"--extra-index-url 'http://{USER}:***@127.0.0.1:{extra.port}/simple'" in install
    assert "--trusted-host 127.0.0.1" in install and f"--cert {extra.ca}" in install
    stamp = (env.path / "medigan-iso-stamp.json").read_text(encoding="utf-8")
    assert PASSWORD not in log and PASSWORD not in stamp


def test_credentials_of_an_index_do_not_reach_a_resolution_error(
    online_home: Path, extra: ExtraIndex
) -> None:
    with pytest.raises(ResolutionError) as caught:
        ensure_env(EnvSpec(["pipargs-absent==1.0"], name="pipargs-absent"), home=online_home)
    text = str(caught.value)
    assert f"{USER}:***@127.0.0.1:{extra.port}" in text  # the remedy names the indexes searched ...
    assert PASSWORD not in text  # ... without the password
