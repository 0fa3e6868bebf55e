"""Building: an env from a lock, in a temp dir, stamped last and renamed into place; the runner copy."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import filelock
from medigan_iso_runner.protocol import PROTOCOL_VERSION

from medigan_iso.envs._common import (
    BYTECODE_MARKER_PREFIX,
    LOCK_NAME,
    OLD_PREFIX,
    STAMP_FORMAT,
    STAMP_NAME,
    TMP_PREFIX,
    ProgressFn,
    _now_iso,
    _rmtree,
    _sha256_text,
    _tail,
    _write_atomic,
)
from medigan_iso.envs.index import IndexSettings, redact
from medigan_iso.envs.resolution import Resolution
from medigan_iso.envs.spec import Interpreter, _date_args, _local_references, _locked_names, _Spec
from medigan_iso.envs.store import _site_packages, _valid_stamp
from medigan_iso.envs.tools import (
    _pip_tool_env,
    _tool_env,
    _UvUnusable,
    build_confinement,
    build_readables,
    confined_run,
    interpreter_root,
    python_argv,
    uv_starts,
)
from medigan_iso.errors import (
    EnvBuildError,
)
from medigan_iso.paths import CacheLayout
from medigan_iso.untrusted import get_logger

logger = get_logger(__name__)


def _runner_dir() -> Path:
    """The installed medigan_iso_runner package directory, found without importing it."""
    spec = importlib.util.find_spec("medigan_iso_runner")
    if spec is None or not spec.submodule_search_locations:
        raise EnvBuildError(
            None,
            "the medigan_iso_runner package is not installed next to medigan_iso",
            remedy="reinstall medigan-iso (`pip install --force-reinstall medigan-iso`)",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _runner_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
    )


def runner_sha256(root: Path | None = None) -> str:
    """Content hash of the runner package (sorted relative POSIX paths and bytes; no bytecode)."""
    root = _runner_dir() if root is None else root
    digest = hashlib.sha256()
    for file in _runner_files(root):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()


def _copy_runner(site_packages: Path, *, dest_name: str = "medigan_iso_runner") -> Path:
    source = _runner_dir()
    dest = site_packages / dest_name
    for file in _runner_files(source):
        target = dest / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    return dest


def _link_shared_bytecode(
    env_dir: Path, site_packages: Path, interp: Interpreter, layout: CacheLayout, log: Any
) -> set[str]:
    """Compile each wheel once inside uv's cache and hardlink the .pyc files into the env.

    uv hardlinks every file of an unpacked wheel from ``<uv cache>/archive-v0/<id>/`` into the env, so a
    ``.pyc`` written next to those sources is valid for every env linking them (same inode, same mtime;
    CPython rewrites ``co_filename`` on load). ``uv pip install --compile-bytecode`` instead writes fresh
    .pyc files into every env: 8.7 s and ~150 MB per torch env on this project's machines. If uv's cache
    layout differs from what this expects, nothing matches and the env is compiled in place instead.
    """
    archives = layout.uv_cache / "archive-v0"
    covered: set[str] = set()  # top-level site-packages entries that received shared .pyc files
    if not archives.is_dir():
        return covered
    wanted: dict[tuple[int, int], Path] = {}
    for dist_info in site_packages.glob("*.dist-info"):
        with contextlib.suppress(OSError):
            st = (dist_info / "METADATA").stat()
            if st.st_nlink > 1:
                wanted[(st.st_dev, st.st_ino)] = dist_info
    matched: list[Path] = []
    if wanted:
        for archive in archives.iterdir():
            for dist_info in archive.glob("*.dist-info"):
                with contextlib.suppress(OSError):
                    st = (dist_info / "METADATA").stat()
                    if (st.st_dev, st.st_ino) in wanted:
                        matched.append(archive)
    marker = BYTECODE_MARKER_PREFIX + interp.cache_tag
    cold = [a for a in matched if not (a / marker).exists()]
    if cold:
        log.write(f"compiling bytecode into the uv cache for {len(cold)} wheel(s)\n")
        log.flush()
        subprocess.run(
            python_argv(
                env_dir / "bin" / "python",
                *("-m", "compileall", "-q", "-j", "0"),
                # never inside <dist>.data/ or .dist-info/: uv installs .data/ from the cached archive and
                # refuses what RECORD does not list (a __pycache__ beside websocket-client's scripts or
                # networkx's example files made every later install of those wheels fail)
                *("-x", r"[/\\][^/\\]+\.(data|dist-info)[/\\]"),
                *map(str, cold),
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
        for archive in list(cold):
            try:
                (archive / marker).touch()
            except OSError:  # a read-only uv cache: these wheels get compiled inside the env instead
                cold.remove(archive)
                matched.remove(archive)
    suffix = f".{interp.cache_tag}.pyc"
    for archive in matched:
        covered.update(entry.name for entry in archive.iterdir() if not entry.name.startswith("."))
    # uv links every file of an archive, .pyc included, so archives compiled before this install are
    # already complete in the env; only the ones compiled just now need their .pyc linked by hand.
    for archive in cold:
        base = len(str(archive)) + 1
        for root, dirs, files in os.walk(archive):
            if not root.endswith("__pycache__"):
                dirs[:] = [d for d in dirs if d == "__pycache__" or not d.endswith(".dist-info")]
                continue
            target_dir = site_packages / root[base:]
            if not target_dir.parent.is_dir():
                continue
            target_dir.mkdir(exist_ok=True)
            for name in files:
                if name.endswith(suffix):
                    with contextlib.suppress(FileExistsError, OSError):
                        os.link(os.path.join(root, name), target_dir / name)  # noqa: PTH118
    return covered


def _build(
    *,
    spec: _Spec,
    resolution: Resolution,
    key: str,
    builder: str,
    uv: Path | None,
    settings: IndexSettings,
    layout: CacheLayout,
    env_dir: Path,
    log_path: Path,
    reason: str,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    """Build into a temp dir, stamp it, rename it to ``env_dir``. Caller holds the key lock."""
    interp = resolution.interpreter
    say = progress or (lambda _msg: None)
    for attempt in range(3):  # another build of this root may remove the empty build area in between
        layout.build_area.mkdir(parents=True, exist_ok=True)
        try:
            tmp = Path(tempfile.mkdtemp(dir=layout.build_area, prefix=f"{TMP_PREFIX}{key}-{os.getpid()}-"))
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    tmp.chmod(0o755)  # mkdtemp makes it 0700; runners in a sandbox may run as another user
    started = time.monotonic()
    # Installing runs third-party code (an sdist's build backend): confined where bubblewrap works, with
    # only this env, the uv cache and a private /tmp writable, and no home folder.
    confinement = build_confinement()
    readable = [
        *build_readables(uv, interp.path, settings),
        str(tmp.parent / f"{tmp.name}.lock.txt"),
        os.fspath(interpreter_root(sys.executable)),  # virtualenv and pip, for the fallback builder
        *_local_references(spec.requirements),
    ]
    with log_path.open("a", encoding="utf-8") as log:
        log.write(
            f"=== medigan-iso env build {key} started {_now_iso()} pid {os.getpid()} builder {builder} "
            f"python {interp.version} ({interp.path}) reason: {reason}; build {confinement.detail}\n"
        )
        log.flush()

        def run(args: Sequence[str], what: str, *, fatal: bool = True, pip: bool = False) -> bool:
            log.write(
                f"[+{time.monotonic() - started:.2f}s] $ "
                + " ".join(shlex.quote(redact(a)) for a in args)
                + "\n"
            )
            log.flush()
            try:
                done = confined_run(
                    confinement,
                    list(args),
                    env=_pip_tool_env(settings) if pip else _tool_env(settings),
                    writable=[layout.uv_cache],  # holds ``tmp``: one mount, so hardlinks work
                    readable=readable,
                    cwd=layout.envs,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            except OSError as exc:
                if builder == "uv":
                    raise _UvUnusable(f"{args[0]}: {exc}") from exc
                raise EnvBuildError(spec.name, f"{what}: {exc}", log_path=log_path) from exc
            if done.returncode != 0 and not fatal:
                # compileall exits 1 when any file fails to compile; wheels ship such files on purpose
                # (torch's py312_intrinsics.py on 3.11), and pip and uv ignore them too.
                log.write(f"(ignored: {what}, exit code {done.returncode})\n")
                return False
            if done.returncode != 0:
                log.flush()
                raise EnvBuildError(
                    spec.name,
                    what,
                    returncode=done.returncode,
                    log_path=log_path,
                    log_tail=_tail(log_path),
                    remedy=f"read the log above; rebuild with `medigan-iso env build {spec.name or '...'} "
                    "--rebuild` once fixed",
                )
            return True

        try:
            lock_file = tmp.parent / f"{tmp.name}.lock.txt"  # moved into the env once it exists
            lock_file.write_text(resolution.lock, encoding="utf-8")
            python = tmp / "bin" / "python"
            if builder == "uv":
                assert uv is not None
                uv_version = uv_starts(uv, confinement, readable=readable)
                say(f"creating env {key} (Python {interp.version}, {uv_version})")
                run(
                    [
                        str(uv),
                        "venv",
                        "--quiet",
                        "--relocatable",
                        "--no-project",
                        "--allow-existing",
                        "--python",
                        str(interp.path),
                        "--cache-dir",
                        str(layout.uv_cache),
                        str(tmp),
                    ],
                    "uv venv failed",
                )
                say(f"installing {len(_locked_names(resolution.lock))} locked packages")
                install = [
                    str(uv),
                    "pip",
                    "install",
                    "--python",
                    str(python),
                    "--require-hashes",
                    "-r",
                    str(lock_file),
                    "--link-mode",
                    "hardlink",
                    "--cache-dir",
                    str(layout.uv_cache),
                    *settings.uv_args(constraints=False),
                    # sdists in the lock build with build dependencies of the same era (setuptools
                    # with pkg_resources for a 2021 visdom), as at resolution
                    *_date_args(spec),
                ]
                # The lock pins every file by hash, so uv's cached index pages are as good as fresh ones;
                # trying offline first skips ~0.25 s of index requests when every wheel is cached.
                if settings.offline or not run(
                    [*install, "--offline"],
                    "not every wheel is in the uv cache; installing online",
                    fatal=False,
                ):
                    run(
                        install,
                        "uv pip install failed",
                    )
                tool_version = uv_version
            else:
                say(f"creating env {key} with virtualenv (Python {interp.version})")
                run(
                    [
                        sys.executable,
                        "-m",
                        "virtualenv",
                        "--quiet",
                        "--no-setuptools",
                        "--no-periodic-update",
                        "-p",
                        str(interp.path),
                        str(tmp),
                    ],
                    "virtualenv failed",
                )
                say(f"installing {len(_locked_names(resolution.lock))} locked packages with pip")
                run(
                    [
                        str(python),
                        "-m",
                        "pip",
                        "install",
                        "--require-hashes",
                        "--no-input",
                        "--disable-pip-version-check",
                        "-r",
                        str(lock_file),
                        *settings.pip_args(constraints=False),  # the lock is used as is, as with uv
                    ],
                    "pip install failed",
                    pip=True,
                )
                # read, not run: `python -m pip` would start the env's interpreter with its site (and
                # every installed .pth) on the host
                pip_dist = sorted(_site_packages(tmp, interp.minor).glob("pip-*.dist-info"))
                pip_v = pip_dist[-1].name[len("pip-") : -len(".dist-info")] if pip_dist else "?"
                tool_version = f"virtualenv+pip {pip_v}"
            lock_file = lock_file.replace(tmp / LOCK_NAME)
            site_packages = _site_packages(tmp, interp.minor)
            if not site_packages.is_dir():
                raise EnvBuildError(spec.name, f"no site-packages at {site_packages}", log_path=log_path)
            say("compiling bytecode")
            covered = (
                _link_shared_bytecode(tmp, site_packages, interp, layout, log) if builder == "uv" else None
            )
            runner_hash = runner_sha256()
            runner_copy = _copy_runner(site_packages)
            # pip compiles what it installs; uv's files get the shared .pyc above. Compile the rest: the
            # runner, and whatever the shared step did not cover (uv cache on another filesystem, sdists).
            targets = [runner_copy] + [
                entry
                for entry in (site_packages.iterdir() if covered is not None else ())
                if entry.name not in (covered or ())
                and entry != runner_copy
                and not entry.name.endswith((".dist-info", ".pth", "__pycache__"))
                and (entry.is_dir() or entry.suffix == ".py")
            ]
            run(
                python_argv(python, "-m", "compileall", "-q", *map(str, targets)),
                "compiling bytecode failed",
                fatal=False,
            )
            stamp = {
                "format": STAMP_FORMAT,
                "key": key,
                "name": spec.name,
                "requirements": list(resolution.requirements),
                "dropped": list(resolution.dropped),
                "python_requires": spec.python_requires,
                "as_of": resolution.as_of.as_json(),
                "lock_origin": resolution.origin,
                "lock_sha256": _sha256_text(resolution.lock),
                "interpreter": interp.as_json(),
                "protocol_version": PROTOCOL_VERSION,
                "builder": builder,
                "builder_version": tool_version,
                "runner_sha256": runner_hash,
                "index": settings.describe(),
                "site_packages": str(site_packages.relative_to(tmp)),
                "built_at": _now_iso(),
                "build_seconds": round(time.monotonic() - started, 3),
                "reason": reason,
            }
            _write_atomic(tmp / STAMP_NAME, json.dumps(stamp, indent=2))
            if env_dir.exists() or env_dir.is_symlink():
                old = env_dir.with_name(f"{OLD_PREFIX}{key}-{os.getpid()}")
                env_dir.rename(old)
                _rmtree(old)
            _move(tmp, env_dir)
            with contextlib.suppress(OSError):  # leave no empty folder per cache root in a shared uv cache
                layout.build_area.rmdir()
            log.write(f"=== done in {time.monotonic() - started:.2f} s\n")
            say(f"env {key} ready in {time.monotonic() - started:.1f} s")
            return stamp
        except BaseException as exc:
            log.write(f"=== failed: {exc!r}\n")
            _rmtree(tmp)
            (tmp.parent / f"{tmp.name}.lock.txt").unlink(missing_ok=True)
            raise


def _move(tmp: Path, env_dir: Path) -> None:
    """Rename the finished build into place (a copy only when the uv cache is on another filesystem)."""
    try:
        tmp.rename(env_dir)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        staging = env_dir.with_name(f"{TMP_PREFIX}{env_dir.name}-{os.getpid()}-copy")
        shutil.copytree(tmp, staging, symlinks=True)
        staging.rename(env_dir)
        _rmtree(tmp)


def _clear_stale(layout: CacheLayout, key: str) -> None:
    """Remove temp/old dirs of ``key`` left by killed builds. Caller holds the key lock."""
    for folder in (layout.envs, layout.build_area):
        for prefix in (TMP_PREFIX, OLD_PREFIX):
            for leftover in folder.glob(f"{prefix}{key}-*"):
                logger.info("removing %s left by an interrupted build", leftover)
                _rmtree(leftover)


def _refresh_runner(
    env_dir: Path, stamp: dict[str, Any], current_hash: str, layout: CacheLayout
) -> dict[str, Any]:
    """Replace the runner copy inside a valid env (same protocol version, new runner code)."""
    key = str(stamp["key"])
    with filelock.FileLock(str(layout.env_lock(key))):
        fresh = _valid_stamp(env_dir, key)
        if fresh is None or fresh.get("runner_sha256") == current_hash:
            return fresh or stamp
        site_packages = env_dir / str(fresh["site_packages"])
        staging = site_packages / f".medigan_iso_runner.new-{os.getpid()}"
        _rmtree(staging)
        _copy_runner(site_packages, dest_name=staging.name)
        subprocess.run(
            python_argv(env_dir / "bin" / "python", "-m", "compileall", "-q", str(staging)),
            capture_output=True,
            check=False,
        )
        current = site_packages / "medigan_iso_runner"
        old = site_packages / f".medigan_iso_runner.old-{os.getpid()}"
        if current.exists():
            current.rename(old)
        staging.rename(current)
        _rmtree(old)
        fresh = {**fresh, "runner_sha256": current_hash, "runner_refreshed_at": _now_iso()}
        _write_atomic(env_dir / STAMP_NAME, json.dumps(fresh, indent=2))
        logger.info("refreshed the runner inside env %s", key)
        return fresh
