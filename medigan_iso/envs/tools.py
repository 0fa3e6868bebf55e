"""The subprocess boundary: the only code in medigan_iso that starts uv, pip, virtualenv or an env's
Python outside the runner. An env's interpreter is always started with ``-I -S`` here (no site
directory, so no ``.pth`` file or ``sitecustomize`` of a dependency runs on the host)."""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from medigan_iso.envs.index import IndexSettings
from medigan_iso.envs.spec import Interpreter
from medigan_iso.errors import SandboxError
from medigan_iso.sandbox import BWRAP_REMEDY, SYSTEM_DIRS, SYSTEM_FILES, probe_host, resolve_policy
from medigan_iso.untrusted import get_logger

logger = get_logger(__name__)


UV_BIN_ENV = "MEDIGAN_ISO_UV"  # seam: path to the uv binary (a missing path forces the fallback)
# How the host starts an env's interpreter (or a discovered one): isolated (-I: no user site, no PYTHON*
# variables, no script dir on sys.path) and without the site module (-S: no .pth file and no
# sitecustomize of any installed distribution runs). Only the confined runner starts without -S.
HOST_PYTHON_FLAGS = ("-I", "-S")


def python_argv(python: Path | str, *args: str) -> list[str]:
    """The argv that runs ``python`` from the host: ``python -I -S *args``."""
    return [os.fspath(python), *HOST_PYTHON_FLAGS, *args]


def _find_uv() -> Path | None:
    override = os.environ.get(UV_BIN_ENV)
    if override:
        path = Path(override)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    try:
        import uv  # the PyPI package that ships the binary

        return Path(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        return Path(found) if found else None


def uv_version() -> tuple[Path | None, str | None]:
    """The uv binary envs would use and its ``--version`` line (None, None when there is none)."""
    uv = _find_uv()
    if uv is None:
        return None, None
    try:
        done = _run_uv(uv, ["--version"], capture_output=True, timeout=30)
    except (_UvUnusable, subprocess.TimeoutExpired):
        return uv, None
    return uv, done.stdout.strip() or None


class _UvUnusable(Exception):
    """uv exists but cannot start; the caller falls back to virtualenv."""


def _tool_env(settings: IndexSettings | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONHOME", "PYTHONPATH", "UV_PYTHON", "UV_SYSTEM_PYTHON"):
        env.pop(var, None)
    env["NO_COLOR"] = "1"
    if settings is not None:
        env.update(settings.uv_env())
    return env


def _pip_tool_env(settings: IndexSettings) -> dict[str, str]:
    """The environment of a pip process: :func:`_tool_env` without pip's own configuration, so the index
    settings pip uses are exactly ``settings.pip_args()``, the ones uv is given."""
    return settings.pip_env(_tool_env(settings))


def _run_uv(uv: Path, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([str(uv), *args], text=True, check=False, **kwargs)
    except OSError as exc:
        raise _UvUnusable(f"{uv}: {exc}") from exc


_PROBE = (
    "import json, platform, sys, sysconfig;"
    "libc = '-'.join(x for x in platform.libc_ver() if x);"
    "print(json.dumps([sys.implementation.name, platform.python_version(),"
    " sysconfig.get_platform() + ('-' + libc if libc else '')]))"
)


def _current_interpreter() -> Interpreter:
    libc = "-".join(x for x in platform.libc_ver() if x)
    base = Path(getattr(sys, "_base_executable", None) or sys.executable)
    return Interpreter(
        path=base,
        version=platform.python_version(),
        implementation=sys.implementation.name,
        platform=sysconfig.get_platform() + (f"-{libc}" if libc else ""),
    )


def _probe(path: Path) -> Interpreter:
    out = subprocess.run(python_argv(path, "-c", _PROBE), capture_output=True, text=True, check=True)
    impl, version, plat = json.loads(out.stdout)
    return Interpreter(path=path, version=version, implementation=impl, platform=plat)


# --- confined builds -------------------------------------------------------------------------------

# What a build may read besides the system dirs: name resolution and TLS roots. /etc is not bound whole
# (netrc, pip.conf with index tokens, cloud credentials, /etc/shadow).
BUILD_ETC_FILES = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
)
BUILD_HOME = "/tmp/home"
_BUILD_BWRAP_FLAGS = (
    "--unshare-all",
    "--share-net",  # the index: uv downloads, sdists fetch their build dependencies
    "--unshare-user",
    "--disable-userns",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
)
_HOME_VARIABLES = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR")


@dataclass(frozen=True)
class Confinement:
    """How env builds run: inside bubblewrap (``bwrap`` set) or, where it cannot work, as they are."""

    bwrap: str | None
    detail: str

    def wrap(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        writable: Iterable[Path | str],
        readable: Iterable[Path | str] = (),
    ) -> tuple[list[str], dict[str, str], str | None]:
        """(argv, environment, cwd) that run ``argv`` confined: read-only system, writable only
        ``writable`` (the env being built, the uv cache) and a private /tmp; no home folder."""
        if self.bwrap is None:
            return list(argv), dict(env), None
        args = [self.bwrap, *_BUILD_BWRAP_FLAGS]
        for path in SYSTEM_DIRS:
            if os.path.islink(path):  # noqa: PTH114 - merged /usr: /lib -> usr/lib
                args += ["--symlink", os.fspath(Path(path).readlink()), path]
            elif os.path.isdir(path):  # noqa: PTH112
                args += ["--ro-bind", path, path]
        for path in (*SYSTEM_FILES, *BUILD_ETC_FILES):
            real = os.path.realpath(path)
            args += ["--ro-bind-try", real, path]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", BUILD_HOME]
        bound: list[str] = []
        for path in _outermost([os.fspath(p) for p in readable]):
            if os.path.exists(path):  # noqa: PTH110
                args += ["--ro-bind", path, path]
                bound.append(path)
        for path in _outermost([os.fspath(p) for p in writable]):
            Path(path).mkdir(parents=True, exist_ok=True)
            args += ["--bind", path, path]
        args += ["--chdir", "/tmp", "--"]
        inner = dict(env)
        for var in _HOME_VARIABLES:
            inner.pop(var, None)
        inner.update({"HOME": BUILD_HOME, "TMPDIR": "/tmp"})
        return [*args, *argv], inner, None


def _outermost(paths: list[str]) -> list[str]:
    """Absolute, real, deduplicated paths, dropping any inside another (bwrap binds in order)."""
    real = sorted({os.path.realpath(p) for p in paths if p})
    out: list[str] = []
    for path in real:
        if not any(path == o or path.startswith(o.rstrip("/") + "/") for o in out) and path != "/":
            out.append(path)
    return out


@functools.lru_cache(maxsize=1)
def _probe_bwrap() -> tuple[str | None, str]:
    support = probe_host()
    layer = support.layers["bubblewrap"]
    return support.bwrap, layer.detail


def build_confinement() -> Confinement:
    """The confinement of env builds under the sandbox policy in force (``$MEDIGAN_ISO_SANDBOX``).

    ``off``: none. ``auto``: bubblewrap where it works, else none with one warning. ``require``: bubblewrap
    or :class:`~medigan_iso.errors.SandboxError`.
    """
    policy = resolve_policy(None).policy
    if policy == "off":
        return Confinement(None, "sandbox policy off")
    bwrap, detail = _probe_bwrap()
    if bwrap is not None:
        return Confinement(bwrap, "bubblewrap")
    if policy == "require":
        raise SandboxError("bubblewrap", f"env builds cannot be confined: {detail}", remedy=BWRAP_REMEDY)
    _warn_unconfined(detail)
    return Confinement(None, f"unconfined: {detail}")


@functools.lru_cache(maxsize=1)
def _warn_unconfined(detail: str) -> None:
    logger.warning(
        "env builds run unconfined (bubblewrap: %s): an sdist's build script runs with your user's rights",
        detail,
    )


def interpreter_root(python: Path | str) -> Path:
    """The installation folder of an interpreter (``<root>/bin/python3``), for binding it read-only."""
    real = Path(os.path.realpath(python))
    return real.parent.parent


def confined_run(
    confinement: Confinement,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    writable: Iterable[Path | str],
    readable: Iterable[Path | str] = (),
    cwd: Path | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run of ``argv``, confined by ``confinement`` (cwd applies only unconfined)."""
    full, inner_env, _ = confinement.wrap(argv, env, writable=writable, readable=readable)
    return subprocess.run(
        full,
        env=inner_env,
        cwd=cwd if confinement.bwrap is None else None,
        check=False,
        **kwargs,
    )


def uv_starts(uv: Path, confinement: Confinement, *, readable: Iterable[Path | str] = ()) -> str:
    """uv's ``--version`` line, run the way builds run it (inside ``confinement``, seeing ``readable``).

    Raises :class:`_UvUnusable` when uv cannot start there: confined, an exec failure is bubblewrap's
    ``execvp`` message and exit code 1, which would otherwise read as a failed resolution (issue 19).
    Remembered per binary (path, size, mtime), confinement and readable paths.
    """
    try:
        st = uv.stat()
    except OSError as exc:
        raise _UvUnusable(f"{uv}: {exc}") from exc
    seen = tuple(sorted({os.path.realpath(uv), *(os.fspath(p) for p in readable)}))
    return _uv_starts(os.fspath(uv), st.st_size, st.st_mtime_ns, confinement, seen)


@functools.lru_cache(maxsize=32)
def _uv_starts(
    uv: str, _size: int, _mtime_ns: int, confinement: Confinement, readable: tuple[str, ...]
) -> str:
    try:
        done = confined_run(
            confinement,
            [uv, "--version"],
            env=_tool_env(),
            writable=[],
            readable=readable,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _UvUnusable(f"{uv}: {exc}") from exc
    line = done.stdout.strip()
    if done.returncode != 0 or not line.startswith("uv "):
        said = (done.stderr.strip() or line).splitlines()
        detail = said[-1] if said else f"exit code {done.returncode}"
        raise _UvUnusable(f"{uv}: {detail} (`uv --version` exit code {done.returncode})")
    return line


def _local_path(location: str) -> str | None:
    if location.startswith("file://"):
        return unquote(urlsplit(location).path)
    if "://" in location:
        return None
    return os.path.abspath(os.path.expanduser(location))  # noqa: PTH100, PTH111


def build_readables(uv: Path | None, python: Path, settings: IndexSettings) -> list[str]:
    """What a confined build reads outside the system dirs: uv, the interpreter's installation and
    local package sources (find-links folders, file:// indexes, constraint files, the CA bundle)."""
    paths = [os.fspath(interpreter_root(python))]
    # a virtualenv's python (the host's own, e.g. a researcher's venv) is a symlink into its base
    # installation: uv reads the venv too (pyvenv.cfg, site-packages) before it accepts the interpreter
    venv = Path(os.path.abspath(python)).parent.parent  # noqa: PTH100
    if (venv / "pyvenv.cfg").is_file() and os.fspath(venv) not in paths:
        paths.append(os.fspath(venv))
    if uv is not None:
        paths.append(os.path.realpath(uv))
    paths += [p for p in map(_local_path, settings.find_links) if p]
    # a file:// simple index links its files relatively, usually beside it (<root>/simple, <root>/files)
    indexes = [settings.index_url or "", *settings.extra_index_urls]
    paths += [os.path.dirname(p.rstrip("/")) for p in map(_local_path, indexes) if p]  # noqa: PTH120
    paths += [os.fspath(p) for p in settings.constraints]
    for cert in (settings.cert, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")):
        if cert:
            paths.append(os.path.expanduser(cert))  # noqa: PTH111
    return paths
