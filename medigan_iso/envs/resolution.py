"""Resolution: a lock (pinned versions with hashes) for a spec on an interpreter, cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import unquote, urlsplit

import filelock
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from medigan_iso.envs._common import KEY_LENGTH_HEX, TMP_PREFIX, _read_json, _sha256_text, _write_atomic
from medigan_iso.envs.asof import NO_DATE, AsOf
from medigan_iso.envs.index import IndexSettings, index_settings, redact
from medigan_iso.envs.interpreters import MIN_RUNNER_PYTHON, _find_interpreter, _version_tuple, era_candidates
from medigan_iso.envs.spec import (
    RUNNER_REQUIREMENTS,
    Interpreter,
    SpecLike,
    _date_args,
    _local_references,
    _locked_names,
    _normalise_spec,
    _Spec,
)
from medigan_iso.envs.tools import (
    _find_uv,
    _pip_tool_env,
    _tool_env,
    _UvUnusable,
    build_confinement,
    build_readables,
    confined_run,
    uv_starts,
)
from medigan_iso.errors import EnvBuildError, InterpreterNotFoundError, ResolutionError
from medigan_iso.paths import CacheLayout, cache_layout
from medigan_iso.untrusted import get_logger

logger = get_logger(__name__)


_NETWORK_ERROR_MARKERS = (
    "failed to fetch",
    "error sending request",
    "dns error",
    "connection refused",
    "network is unreachable",
    "tcp connect error",
    "timed out",
    "could not connect",
    "failed to download",
)


@dataclass(frozen=True)
class Resolution:
    """A lock for a spec on an interpreter; ``from_cache`` says no resolver ran."""

    lock: str
    interpreter: Interpreter
    requirements: tuple[str, ...]
    dropped: tuple[str, ...]
    origin: str  # "resolved" | "given"
    from_cache: bool
    as_of: AsOf = NO_DATE


def _looks_like_network_error(text: str) -> bool:
    low = text.lower()
    return any(marker in low for marker in _NETWORK_ERROR_MARKERS)


def _clean_uv_message(stderr: str) -> str:
    lines = [
        ln.rstrip()
        for ln in stderr.splitlines()
        if ln.strip() and not ln.startswith(("Resolved", "warning:"))
    ]
    return "\n".join(lines) or stderr.strip()


# Distributions with compiled code: an era resolution must find a wheel of them for the interpreter, never
# build one from source (numpy 1.21 has no wheel for 3.11: use 3.9 rather than compile it for 20 minutes).
COMPILED_PACKAGES = (
    "numpy",
    "scipy",
    "torch",
    "torchvision",
    "torchaudio",
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
    "scikit-image",
    "scikit-learn",
    "pandas",
    "h5py",
    "grpcio",
    "matplotlib",
    "pillow",
    "lmdb",
    "kiwisolver",
    "pywavelets",
    "contourpy",
    "tokenizers",
    "tensorflow",
    "tensorflow-cpu",
)


def _compile(
    uv: Path,
    spec: _Spec,
    interp: Interpreter,
    settings: IndexSettings,
    layout: CacheLayout,
    *,
    only_binary: Sequence[str] = (),
    python_platform: str | None = None,
) -> subprocess.CompletedProcess[str]:
    args = [
        "pip",
        "compile",
        "-",
        "--generate-hashes",
        "--no-header",
        "--no-annotate",
        "--quiet",
        "--python",
        str(interp.path),
        "--cache-dir",
        str(layout.uv_cache),
        *settings.uv_args(),
        *_date_args(spec),
        *(["--python-platform", python_platform] if python_platform else []),
    ]
    if not settings.wheels_only:  # --no-build (strict mode) already means wheels only, for everything
        for name in only_binary:
            args += ["--only-binary", name]
    # resolving may build an sdist to read its metadata: its build backend runs confined
    confinement = build_confinement()
    readable = [*build_readables(uv, interp.path, settings), *_local_references(spec.requirements)]
    uv_starts(uv, confinement, readable=readable)  # a uv that cannot start is not a failed resolution
    try:
        return confined_run(
            confinement,
            [str(uv), *args],
            env=_tool_env(settings),
            writable=[layout.uv_cache],
            readable=readable,
            cwd=layout.envs,
            input="\n".join(spec.requirements) + "\n",
            capture_output=True,
            text=True,
        )
    except OSError as exc:
        raise _UvUnusable(f"{uv}: {exc}") from exc


def _resolution_error(
    spec: _Spec,
    out: subprocess.CompletedProcess[str],
    offline_retry: Callable[[], bool],
    settings: IndexSettings,
) -> ResolutionError:
    explanation = redact(_clean_uv_message(out.stderr))
    missing = re.search(r"Because (\S+?) was not found in the package registry", out.stderr)
    if missing:
        requirement = next(
            (
                r
                for r in spec.requirements
                if canonicalize_name(Requirement(r).name) == canonicalize_name(missing[1])
            ),
            missing[1],
        )
        who = f"model {spec.name}" if spec.name else "this env"
        return ResolutionError(
            spec.name,
            spec.requirements,
            f"{who} requires {requirement!r}, which no configured index or find-links location has\n"
            + explanation,
            offline_may_help=False,
            remedy=f"check the name {requirement!r}; indexes searched: {settings.describe()}",
        )
    if not settings.offline and _looks_like_network_error(out.stderr):
        works = offline_retry()
        remedy = (
            "everything needed is in the uv cache: retry offline (offline=True, MEDIGAN_ISO_OFFLINE=1, "
            "or `medigan-iso env build --offline`)"
            if works
            else "the uv cache does not hold everything either, so an offline retry would fail too; check "
            "the network and the index settings (PIP_INDEX_URL, UV_INDEX_URL, pip.conf)"
        )
        return ResolutionError(
            spec.name,
            spec.requirements,
            "network failure while resolving\n" + explanation,
            offline_may_help=works,
            remedy=remedy,
        )
    if settings.offline and "offline" in out.stderr.lower():
        return ResolutionError(
            spec.name,
            spec.requirements,
            explanation,
            offline_may_help=False,
            remedy="offline mode is on and the uv cache lacks something; build once online "
            "(offline=False, unset MEDIGAN_ISO_OFFLINE)",
        )
    return ResolutionError(
        spec.name,
        spec.requirements,
        explanation,
        remedy="relax or change the conflicting requirements named above",
    )


def _resolve_with_uv(
    uv: Path,
    spec: _Spec,
    interp: Interpreter,
    settings: IndexSettings,
    layout: CacheLayout,
    *,
    only_binary: Sequence[str] = (),
    python_platform: str | None = None,
) -> str:
    out = _compile(
        uv, spec, interp, settings, layout, only_binary=only_binary, python_platform=python_platform
    )
    if out.returncode == 0:
        return out.stdout

    def offline_retry() -> bool:
        offline = dataclasses.replace(settings, offline=True)
        retry = _compile(
            uv, spec, interp, offline, layout, only_binary=only_binary, python_platform=python_platform
        )
        return retry.returncode == 0

    raise _resolution_error(spec, out, offline_retry, settings)


def _resolve_with_pip(spec: _Spec, interp: Interpreter, settings: IndexSettings, layout: CacheLayout) -> str:
    """Resolve without uv: ``pip install --dry-run --report`` in a scratch virtualenv, then pin hashes."""
    with tempfile.TemporaryDirectory(dir=layout.envs, prefix=f"{TMP_PREFIX}resolve-") as scratch:
        venv = Path(scratch) / "venv"
        made = subprocess.run(
            [
                sys.executable,
                "-m",
                "virtualenv",
                "--quiet",
                "--no-setuptools",
                "-p",
                str(interp.path),
                str(venv),
            ],
            capture_output=True,
            text=True,
            check=False,
            env=_tool_env(),
        )
        if made.returncode != 0:
            raise EnvBuildError(
                spec.name,
                "virtualenv could not create a scratch env",
                returncode=made.returncode,
                log_tail=made.stderr[-2000:],
            )
        report = Path(scratch) / "report.json"
        reqs = Path(scratch) / "requirements.in"
        reqs.write_text("\n".join(spec.requirements) + "\n", encoding="utf-8")
        # pip builds sdists to read their metadata: confined like uv
        out = confined_run(
            build_confinement(),
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--disable-pip-version-check",
                "--report",
                str(report),
                "-r",
                str(reqs),
                *settings.pip_args(),
            ],
            capture_output=True,
            text=True,
            env=_pip_tool_env(settings),
            writable=[scratch],
            readable=[*build_readables(None, interp.path, settings), *_local_references(spec.requirements)],
        )
        if out.returncode != 0:
            raise ResolutionError(
                spec.name,
                spec.requirements,
                redact(out.stderr.strip() or out.stdout.strip()),
                remedy="relax or change the conflicting requirements named above",
            )
        data = json.loads(report.read_text(encoding="utf-8"))
    lines = []
    for item in sorted(data.get("install", []), key=lambda i: canonicalize_name(i["metadata"]["name"])):
        info = item.get("download_info", {})
        hashes = info.get("archive_info", {}).get("hashes", {})
        digest = hashes.get("sha256")
        if digest is None and info.get("url", "").startswith("file://"):
            digest = hashlib.sha256(Path(unquote(urlsplit(info["url"]).path)).read_bytes()).hexdigest()
        if digest is None:
            raise ResolutionError(
                spec.name,
                spec.requirements,
                f"pip reported no sha256 for {item['metadata']['name']}",
                remedy="install uv (`pip install uv`), which locks with hashes",
            )
        name = canonicalize_name(item["metadata"]["name"])
        lines.append(f"{name}=={item['metadata']['version']} \\\n    --hash=sha256:{digest}")
    return "\n".join(lines) + "\n"


def _resolution_cache(
    spec: _Spec, interp: Interpreter, settings: IndexSettings, uv: Path | None, layout: CacheLayout
) -> Path:
    """Where the lock for (requirements, interpreter, index settings, resolver) is cached."""
    rkey = _sha256_text(
        json.dumps(
            {
                "requirements": spec.requirements,
                "interpreter": [interp.implementation, interp.version, interp.platform],
                "index": settings.fingerprint(),
                "resolver": "uv" if uv else "pip",
            }
            | ({"as_of": spec.as_of.label, "undated": spec.undated} if spec.as_of.date else {}),
            sort_keys=True,
        )
    )[: KEY_LENGTH_HEX * 2]
    return layout.resolved_lock(rkey)


def _given(spec: _Spec, interp: Interpreter) -> Resolution:
    assert spec.given_lock is not None
    missing = {canonicalize_name(Requirement(r).name) for r in RUNNER_REQUIREMENTS} - _locked_names(
        spec.given_lock
    )
    if missing:
        raise ResolutionError(
            spec.name,
            spec.requirements,
            f"the requirements_lock ({spec.lock_origin}) lacks the runner's {', '.join(sorted(missing))}",
            remedy="add them to the lock (`uv pip compile --generate-hashes` with msgpack and numpy)",
        )
    return Resolution(spec.given_lock, interp, spec.requirements, spec.dropped, "given", from_cache=False)


def _resolution(spec: _Spec, lock: str, interp: Interpreter, *, from_cache: bool) -> Resolution:
    return Resolution(lock, interp, spec.requirements, spec.dropped, "resolved", from_cache, spec.as_of)


def _resolve_on(
    spec: _Spec,
    interp: Interpreter,
    *,
    layout: CacheLayout,
    settings: IndexSettings,
    uv: Path | None,
    refresh: bool,
    only_binary: Sequence[str] = (),
    python_platform: str | None = None,
) -> Resolution:
    """Resolve ``spec`` for ``interp`` (cached by requirements, interpreter, index, date, resolver);
    ``python_platform`` (uv's ``--python-platform``, needs uv) resolves for another platform instead."""
    if python_platform is not None:  # cached apart from the host's resolution
        interp = dataclasses.replace(interp, platform=f"uv:{python_platform}")
    cache = _resolution_cache(spec, interp, settings, uv, layout)
    rkey = cache.stem
    if not refresh and cache.is_file():
        return _resolution(spec, cache.read_text(encoding="utf-8"), interp, from_cache=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(layout.resolve_lock(rkey))):
        if not refresh and cache.is_file():
            return _resolution(spec, cache.read_text(encoding="utf-8"), interp, from_cache=True)
        started = time.monotonic()
        if uv is not None:
            lock = _resolve_with_uv(
                uv, spec, interp, settings, layout, only_binary=only_binary, python_platform=python_platform
            )
        elif python_platform is not None:
            raise ResolutionError(
                spec.name,
                list(spec.requirements),
                f"resolving for the platform {python_platform} needs uv",
                remedy="install uv (`pip install uv`)",
            )
        else:
            if spec.as_of.date is not None:
                logger.warning(
                    "%s: resolving without uv, so the as-of date %s cannot hold versions back",
                    spec.name or "env",
                    spec.as_of.label,
                )
            lock = _resolve_with_pip(spec, interp, settings, layout)
        logger.info("resolved %s in %.1f s", spec.name or "env", time.monotonic() - started)
        _write_atomic(cache, lock)
    return _resolution(spec, lock, interp, from_cache=False)


def _choice_key(spec: _Spec, settings: IndexSettings, uv: Path | None) -> str:
    return _sha256_text(
        json.dumps(
            {
                "requirements": spec.requirements,
                "python_requires": spec.python_requires,
                "as_of": spec.as_of.label,
                "undated": spec.undated,
                "index": settings.fingerprint(),
                "resolver": "uv" if uv else "pip",
            },
            sort_keys=True,
        )
    )[: KEY_LENGTH_HEX * 2]


_INTERPRETER_MARKERS = ("abi tag", "wheel", "python", "requires-python", "platform", "failed to build")


def _interpreter_related(explanation: str) -> bool:
    """Whether a failed era resolution may work on another interpreter (no wheel of the era for this
    one, an sdist that does not build on it, a Requires-Python bound) rather than a plain conflict."""
    low = explanation.lower()
    return any(marker in low for marker in _INTERPRETER_MARKERS)


def _cached_dated(
    spec: _Spec, *, layout: CacheLayout, settings: IndexSettings, uv: Path | None
) -> Resolution | None:
    known = _read_json(layout.interpreter_choice(_choice_key(spec, settings, uv)))
    if known is None or not Path(str(known.get("path"))).exists():
        return None
    interp = Interpreter(Path(known["path"]), known["version"], known["implementation"], known["platform"])
    cached = _resolution_cache(spec, interp, settings, uv, layout)
    if not cached.is_file():
        return None
    return _resolution(spec, cached.read_text(encoding="utf-8"), interp, from_cache=True)


def cached_resolution(
    spec: _Spec, *, layout: CacheLayout, settings: IndexSettings, uv: Path | None
) -> Resolution | None:
    """The lock ``_resolve`` would return, without resolving: None when nothing is cached."""
    if spec.given_lock is not None or spec.as_of.date is None or uv is None:
        interp = _find_interpreter(spec.python_requires, name=spec.name, layout=layout)
        if spec.given_lock is not None:
            return _given(spec, interp)
        cache = _resolution_cache(spec, interp, settings, uv, layout)
        return (
            _resolution(spec, cache.read_text(encoding="utf-8"), interp, from_cache=True)
            if cache.is_file()
            else None
        )
    return _cached_dated(spec, layout=layout, settings=settings, uv=uv)


def _resolve(
    spec: _Spec,
    *,
    layout: CacheLayout,
    settings: IndexSettings,
    uv: Path | None,
    refresh: bool,
) -> Resolution:
    if spec.given_lock is not None or spec.as_of.date is None or uv is None:
        interp = _find_interpreter(spec.python_requires, name=spec.name, layout=layout)
        if spec.given_lock is not None:
            return _given(spec, interp)
        return _resolve_on(spec, interp, layout=layout, settings=settings, uv=uv, refresh=refresh)
    # A dated resolution: the first interpreter (the host's, then the newest) for which every compiled
    # package has a wheel of that era.
    choice = layout.interpreter_choice(_choice_key(spec, settings, uv))
    if not refresh:
        known = _cached_dated(spec, layout=layout, settings=settings, uv=uv)
        if known is not None:
            return known
    tried: list[str] = []
    first_error: ResolutionError | None = None
    conflict: ResolutionError | None = None  # a failure that is not about this interpreter's wheels
    candidates = era_candidates(spec.python_requires, name=spec.name, layout=layout)
    for interp in candidates:
        try:
            resolution = _resolve_on(
                spec,
                interp,
                layout=layout,
                settings=settings,
                uv=uv,
                refresh=refresh,
                only_binary=COMPILED_PACKAGES,
            )
        except ResolutionError as exc:
            if exc.offline_may_help is not None:  # a network failure: another interpreter will not help
                raise
            first_error = first_error or exc
            if not _interpreter_related(exc.explanation):
                conflict = conflict or exc
            lines = [ln.strip(" ╰─▶│") for ln in exc.explanation.splitlines() if ln.strip()]
            reason = next((ln for ln in lines if "because" in ln.lower()), lines[0] if lines else "")
            tried.append(f"Python {interp.minor}: {reason[:200]}")
            logger.info("%s as of %s: not on Python %s", spec.name or "env", spec.as_of.label, interp.minor)
            continue
        choice.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(choice, json.dumps(interp.as_json()))
        if interp.minor != candidates[0].minor:
            logger.info(
                "%s: dependencies as of %s need Python %s (%s)",
                spec.name or "env",
                spec.as_of.label,
                interp.minor,
                "; ".join(tried),
            )
        return resolution
    assert first_error is not None
    if conflict is not None:
        raise conflict  # the requirements conflict on an interpreter with wheels: no interpreter helps
    oldest = min(candidates, key=lambda i: _version_tuple(i.version))
    major, minor = _version_tuple(oldest.version)[:2]
    if (major, minor - 1) >= MIN_RUNNER_PYTHON:
        raise InterpreterNotFoundError(
            spec.name,
            f"{major}.{minor - 1}",
            detail=f"the dependencies as of {spec.as_of.describe()} resolve with wheels on none of the "
            "interpreters here (an older one may work; `--as-of latest` resolves today's versions):\n  "
            + "\n  ".join(tried),
        )
    raise first_error


def resolve(
    spec: SpecLike,
    *,
    home: str | os.PathLike[str] | None = None,
    index_url: str | None = None,
    find_links: Sequence[str | os.PathLike[str]] = (),
    offline: bool | None = None,
    refresh: bool = False,
    as_of: str | date | None = None,
    package_date: date | None = None,
) -> Resolution:
    """The lock ``ensure_env`` would build for ``spec`` (cached; ``refresh=True`` resolves again)."""
    layout = cache_layout(home).ensure()
    settings = index_settings(index_url=index_url, find_links=find_links, offline=offline)
    normalised = _normalise_spec(spec, as_of=as_of, package_date=package_date)
    try:
        return _resolve(normalised, layout=layout, settings=settings, uv=_find_uv(), refresh=refresh)
    except _UvUnusable:
        return _resolve(normalised, layout=layout, settings=settings, uv=None, refresh=refresh)
