"""Air-gap bundles: everything a set of models needs, carried to a machine with no network.

On a connected machine :func:`create_bundle` writes a folder holding the models' catalogue entries (with
their as-of dates), their packages (verified against their pins), one hash-pinned lock per env and every
wheel those locks name (one ``wheels/`` folder for all envs; sdists are built into wheels here, confined
like env builds), and ``bundle.json``: the sha256 of every file. On the destination
:func:`verify_bundle` checks every hash and :func:`install_bundle` imports the packages into the store,
builds each env from the wheelhouse with no index at all (``--no-index --find-links --offline`` and
``--require-hashes``) and, only once everything succeeded, adds the entries to the local catalogue.

Bundling again into the same folder adds only what is missing (a wheel already there, matched by hash and
compatible with the target interpreter, is not fetched again).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.tags import Tag, compatible_tags, cpython_tags, platform_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from medigan_iso._version import __version__
from medigan_iso.archives import sha256_file, tree_sha256, walk_package_dir
from medigan_iso.catalogue import ModelEntry, load_catalogue, store_local_entry, thaw
from medigan_iso.downloads import discard_partial, download
from medigan_iso.envs._common import _sha256_text, _write_atomic
from medigan_iso.envs.ensure import _ensure
from medigan_iso.envs.index import IndexSettings, index_settings, redact
from medigan_iso.envs.interpreters import _find_interpreter, discover_interpreters
from medigan_iso.envs.resolution import (
    COMPILED_PACKAGES,
    Resolution,
    _choice_key,
    _resolution_cache,
    _resolve,
    _resolve_on,
)
from medigan_iso.envs.spec import RUNNER_REQUIREMENTS, Interpreter, _normalise_spec, _Spec
from medigan_iso.envs.tools import (
    _find_uv,
    _pip_tool_env,
    _tool_env,
    build_confinement,
    build_readables,
    confined_run,
)
from medigan_iso.errors import BundleError, MediganIsoError
from medigan_iso.packages import ModelPackage, ensure_package
from medigan_iso.paths import BUNDLE_ENV, CacheLayout, cache_layout
from medigan_iso.untrusted import get_logger, neutralise

logger = get_logger(__name__)

BUNDLE_FORMAT = 1
MANIFEST_NAME = "bundle.json"
CATALOGUE_NAME = "catalogue.json"
WHEELS_DIR = "wheels"
LOCKS_DIR = "locks"
PACKAGES_DIR = "packages"
_RUNNER_ID = "_runner"  # lock name of the runner's own requirements

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class BundleReport:
    """What :func:`create_bundle` did: the folder, its manifest hash and what was added this time."""

    path: Path
    manifest_sha256: str
    models: tuple[str, ...]
    added_files: tuple[str, ...]
    total_bytes: int


@dataclass(frozen=True)
class InstallReport:
    """What :func:`install_bundle` did: models added to the catalogue and envs built (key per model)."""

    path: Path
    manifest_sha256: str
    models: tuple[str, ...]
    envs: Mapping[str, str]
    skipped: tuple[str, ...]  # env locks for interpreters this machine lacks
    seconds: float


# --- hashing and the manifest --------------------------------------------------------------------


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(str(root), f"{MANIFEST_NAME} is unreadable: {exc}", remedy="bundle again") from exc
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            str(root),
            f"{MANIFEST_NAME} is not a format-{BUNDLE_FORMAT} bundle manifest",
            remedy="make the bundle with this version of medigan-iso (`medigan-iso bundle MODEL -o DIR`)",
        )
    return data


def manifest_sha256(root: str | os.PathLike[str]) -> str:
    """sha256 of ``bundle.json``: the one hash to compare between the two machines."""
    return sha256_file(Path(root) / MANIFEST_NAME)


def verify_bundle(root: str | os.PathLike[str], *, expected_sha256: str | None = None) -> dict[str, Any]:
    """Check every file ``bundle.json`` lists; return the manifest or raise :class:`BundleError` naming
    each missing or altered file, and each file in the folder it does not list. ``expected_sha256``
    also pins ``bundle.json`` itself."""
    folder = Path(root).absolute()
    data = _manifest(folder)
    if data is None:
        raise BundleError(
            str(folder), f"no {MANIFEST_NAME} here", remedy="pass the folder `medigan-iso bundle` wrote"
        )
    if expected_sha256 is not None and manifest_sha256(folder) != expected_sha256.lower():
        raise BundleError(
            str(folder),
            f"{MANIFEST_NAME} has sha256 {manifest_sha256(folder)}, not the expected {expected_sha256}",
            remedy="the manifest was altered or this is another bundle; copy it again from the source",
        )
    problems: list[str] = []
    files = data.get("files", {})
    for rel, want in sorted(files.items()):
        path = folder / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            problems.append(f"{neutralise(rel)}: path outside the bundle")
        elif not path.is_file() or path.is_symlink():
            problems.append(f"{neutralise(rel)}: missing")
        elif sha256_file(path) != want:
            problems.append(f"{neutralise(rel)}: altered (sha256 differs from {MANIFEST_NAME})")
    for path in sorted(folder.rglob("*")):
        rel = _rel(folder, path)
        if rel != MANIFEST_NAME and rel not in files and (path.is_file() or path.is_symlink()):
            problems.append(f"{neutralise(rel)}: not listed in {MANIFEST_NAME} (an extra file)")
    if problems:
        raise BundleError(
            str(folder),
            f"{len(problems)} file(s) fail verification ({len(files)} listed)",
            problems=problems,
            remedy="copy the bundle again from the connected machine (compare the manifest sha256 printed "
            "there)",
        )
    return data


# --- locks and wheels ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _LockLine:
    requirement: str  # "name==version" plus any marker
    name: str
    hashes: frozenset[str]


def _parse_lock(lock: str) -> list[_LockLine]:
    joined = re.sub(r"\\\s*\n\s*", " ", lock)
    out = []
    for raw in joined.splitlines():
        text = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("--hash") else raw.strip()
        if not text or text.startswith("-"):
            continue
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", text))
        requirement = re.split(r"\s--hash=", text, maxsplit=1)[0].strip()
        name = canonicalize_name(re.split(r"[\s=<>!~;\[@]", requirement, maxsplit=1)[0])
        out.append(_LockLine(requirement, name, hashes))
    return out


_PLATFORM = re.compile(r"(x86_64|aarch64|i686|ppc64le|s390x|armv7l)-manylinux_2_(\d+)")


def _platform_tags(target: str | None) -> list[str]:
    """The wheel platform tags a machine of ``target`` (uv's ``--python-platform``, e.g.
    ``aarch64-manylinux_2_28``) installs, newest first; None: this machine's."""
    if target is None:
        return list(platform_tags())
    found = _PLATFORM.fullmatch(target)
    if found is None:
        raise BundleError(
            "-",
            f"--platform {neutralise(target)!r} is not a platform bundles support",
            remedy="give ARCH-manylinux_2_N (uv's --python-platform form), e.g. aarch64-manylinux_2_28 or "
            "x86_64-manylinux_2_17; ARCH is one of x86_64, aarch64, i686, ppc64le, s390x, armv7l",
        )
    arch, glibc = found.group(1), int(found.group(2))
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{arch}" for minor, name in legacy.items() if minor <= glibc]
    return tags


def _supported_tags(interp: Interpreter, target: str | None = None) -> set[Tag]:
    version = tuple(int(x) for x in interp.version.split(".")[:2])
    platforms = _platform_tags(target)
    tags = set(cpython_tags(version, platforms=platforms))
    tags |= set(compatible_tags(version, f"cp{version[0]}{version[1]}", platforms))
    return tags


def _wheel_fits(filename: str, name: str, tags: set[Tag]) -> bool:
    try:
        wheel_name, _version, _build, wheel_tags = parse_wheel_filename(filename)
    except ValueError:
        return False
    return canonicalize_name(wheel_name) == name and bool(wheel_tags & tags)


def _fetch_wheels(
    lines: Sequence[_LockLine],
    interp: Interpreter,
    *,
    dest: Path,
    layout: CacheLayout,
    settings: IndexSettings,
    label: str,
    target: str | None = None,
) -> list[Path]:
    """``pip wheel --no-deps --require-hashes`` of ``lines`` for ``interp`` into ``dest``, confined: wheels
    are saved as downloaded, sdists are built into wheels (their build scripts run inside bubblewrap).
    For another platform (``target``) ``pip download --only-binary :all:`` of that platform's wheels."""
    uv = _find_uv()
    if uv is None:
        raise BundleError(str(dest), "bundling needs uv", remedy="install uv (`pip install uv`)")
    confinement = build_confinement()
    readable = build_readables(uv, interp.path, settings)
    with tempfile.TemporaryDirectory(dir=layout.uv_cache, prefix=".bundle-") as scratch:
        venv = Path(scratch) / "venv"
        out_dir = Path(scratch) / "out"
        out_dir.mkdir()
        tmp = Path(scratch) / "tmp"
        tmp.mkdir()
        reqs = Path(scratch) / "requirements.txt"
        reqs.write_text(
            "".join(
                f"{x.requirement} " + " ".join(f"--hash=sha256:{h}" for h in sorted(x.hashes)) + "\n"
                for x in lines
            ),
            encoding="utf-8",
        )
        if target is None:
            fetch = ["wheel", "-w", str(out_dir)]
        else:
            abi = f"cp{interp.minor.replace('.', '')}"
            fetch = ["download", "-d", str(out_dir), "--only-binary", ":all:", "--implementation", "cp"]
            fetch += ["--python-version", interp.minor, "--abi", abi, "--abi", "abi3", "--abi", "none"]
            for tag in _platform_tags(target):
                fetch += ["--platform", tag]
        steps = [
            (
                str(uv),
                "venv",
                "--quiet",
                "--seed",
                "--python",
                str(interp.path),
                "--cache-dir",
                str(layout.uv_cache),
                *settings.uv_args(constraints=False),
                str(venv),
            ),
            (
                # downloads go to the scratch folder on disk, not the sandbox's /tmp (memory): a CUDA torch
                # wheel alone is 2 GB
                "/usr/bin/env",
                f"TMPDIR={tmp}",
                str(venv / "bin" / "python"),
                "-I",
                "-m",
                "pip",
                *fetch,
                "--no-deps",
                "--require-hashes",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
                str(reqs),
                *settings.pip_args(constraints=False),  # the lock is used as is
            ),
        ]
        for argv in steps:
            done = confined_run(
                confinement,
                argv,
                # pip gets the index settings from its arguments only, the same ones uv was given
                env=_pip_tool_env(settings) if "pip" in argv else _tool_env(settings),
                writable=[layout.uv_cache],
                readable=readable,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise BundleError(
                    str(dest),
                    f"cannot fetch the wheels of {label} for Python {interp.minor}:\n"
                    + neutralise(redact((done.stderr or done.stdout)[-3000:]), max_chars=3000),
                    remedy="check the index settings and that every locked package has a wheel or an "
                    "sdist that builds on this machine"
                    + (
                        f" (for --platform {target}: a wheel of that platform; sdists are not built for "
                        "another platform)"
                        if target
                        else ""
                    ),
                )
        moved = []
        for wheel in sorted(out_dir.glob("*.whl")):
            saved = dest / wheel.name
            if saved.exists():
                if sha256_file(saved) != sha256_file(wheel):
                    raise BundleError(
                        str(dest),
                        f"{wheel.name} exists with other content (a wheel built again from its sdist "
                        "differs: its build is not reproducible)",
                        remedy="remove that wheel from the bundle and bundle again",
                    )
            else:
                shutil.move(str(wheel), saved)
            moved.append(saved)
        return moved


def _fill_wheelhouse(
    lock: str,
    interp: Interpreter,
    *,
    root: Path,
    manifest: dict[str, Any],
    layout: CacheLayout,
    settings: IndexSettings,
    label: str,
    target: str | None = None,
) -> tuple[str, list[str]]:
    """Make sure every line of ``lock`` has a wheel for ``interp`` in the wheelhouse; return the lock
    rewritten to pin exactly those wheels, and the wheel files added."""
    wheels = root / WHEELS_DIR
    wheels.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = manifest.setdefault("files", {})
    built: dict[str, str] = manifest.setdefault("built_from_sdist", {})  # wheel file -> sdist sha256
    tags = _supported_tags(interp, target)
    lines = _parse_lock(lock)

    def chosen(line: _LockLine) -> str | None:
        for rel, sha in sorted(files.items()):
            name = rel.rsplit("/", 1)[-1]
            if not rel.startswith(f"{WHEELS_DIR}/") or not _wheel_fits(name, line.name, tags):
                continue
            if sha in line.hashes or built.get(name) in line.hashes:
                return rel
        return None

    missing = [line for line in lines if chosen(line) is None]
    added: list[str] = []
    if missing:
        logger.info("fetching %d wheel(s) of %s for Python %s", len(missing), label, interp.minor)
        for wheel in _fetch_wheels(
            missing, interp, dest=wheels, layout=layout, settings=settings, label=label, target=target
        ):
            sha = sha256_file(wheel)
            rel = _rel(root, wheel)
            if rel not in files:
                added.append(rel)
            files[rel] = sha
            line = next((x for x in missing if _wheel_fits(wheel.name, x.name, tags)), None)
            if line is not None and sha not in line.hashes:
                built[wheel.name] = sorted(line.hashes)[0]  # any hash of the sdist it came from
    out = []
    for line in lines:
        found = chosen(line)
        if found is None:
            raise BundleError(
                str(root),
                f"no wheel of {line.requirement} for Python {interp.minor} after fetching ({label})",
                remedy=f"that version may have no wheel for {target or 'this platform'} and no sdist",
            )
        out.append(f"{line.requirement} \\\n    --hash=sha256:{files[found]}")
    return "\n".join(out) + "\n", added


# --- packages ------------------------------------------------------------------------------------


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80] or "model"


def _bundle_package(
    entry: ModelEntry, root: Path, manifest: dict[str, Any], home: Path | None
) -> tuple[str, ModelPackage]:
    """Copy the package of ``entry`` into the bundle, verified against its pin; (relative link, package).

    A directory package is copied as a directory (pinned by its tree hash); an archive is downloaded or
    copied once into the bundle and imported into the store from there (pinned by its sha256).
    """
    files: dict[str, str] = manifest.setdefault("files", {})
    link = entry.package_link.strip()
    local = (entry.catalogue_dir / link) if entry.catalogue_dir and "://" not in link else None
    if local is not None and local.is_dir():
        package = ensure_package(entry, home=home)  # verifies the tree hash and fills the store
        rel_dir = f"{PACKAGES_DIR}/{_safe(entry.model_id)}"
        target = root / rel_dir
        if not target.is_dir() or tree_sha256(target) != package.sha256:
            shutil.rmtree(target, ignore_errors=True)
            for rel, path in walk_package_dir(local):
                dest = target.joinpath(*rel.split("/"))
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
            if tree_sha256(target) != package.sha256:
                raise BundleError(
                    str(root), f"the package of {entry.model_id} changed while it was copied", remedy="retry"
                )
        for rel, path in walk_package_dir(target):
            files[f"{rel_dir}/{rel}"] = sha256_file(path)
        return rel_dir, package
    pin = (entry.package_sha256 or "").strip().lower() or None
    rel = f"{PACKAGES_DIR}/{_safe(entry.model_id)}.zip"
    target = root / rel
    if not (pin and target.is_file() and sha256_file(target) == pin):
        part = target.with_name(target.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        if local is not None and local.is_file():
            shutil.copyfile(local, part)
        else:
            download(link, part)
        part.replace(target)
    discard_partial(target.with_name(target.name + ".part"))  # and its resume metadata: not a bundle file
    actual = sha256_file(target)
    if pin is not None and actual != pin:
        target.unlink(missing_ok=True)
        raise BundleError(
            str(root),
            f"the archive of {entry.model_id} from {neutralise(link)} has sha256 {actual}, not its pin {pin}",
            remedy="the package changed upstream or the download was altered; ask the catalogue maintainer",
        )
    try:  # extracts it into the store (layout checks, md5 pin if any)
        package = ensure_package(
            dataclasses.replace(entry, package_link=os.fspath(target), catalogue_dir=root), home=home
        )
    except MediganIsoError:
        target.unlink(missing_ok=True)
        raise
    files[rel] = package.sha256
    return rel, package


# --- making a bundle -----------------------------------------------------------------------------


def _target_interpreters(pythons: Sequence[str], layout: CacheLayout) -> list[Interpreter]:
    found = {i.minor: i for i in discover_interpreters(layout)}
    out = []
    for wanted in pythons:
        if wanted not in found:
            raise BundleError(
                "-",
                f"no Python {wanted} on this machine to resolve and fetch wheels for",
                remedy=f"install Python {wanted} (pyenv install {wanted}) or leave --python out; found: "
                + ", ".join(sorted(found)),
            )
        out.append(found[wanted])
    return out


def _resolve_for(
    spec: _Spec,
    interp: Interpreter | None,
    layout: CacheLayout,
    settings: IndexSettings,
    target: str | None = None,
) -> Resolution:
    uv = _find_uv()
    if interp is None:
        here = _resolve(spec, layout=layout, settings=settings, uv=uv, refresh=False)
        if target is None:
            return here
        interp = here.interpreter  # the interpreter of the entry's era, resolved again for the target
    return _resolve_on(
        spec,
        interp,
        layout=layout,
        settings=settings,
        uv=uv,
        refresh=False,
        only_binary=COMPILED_PACKAGES if spec.as_of.date else (),
        python_platform=target,
    )


def create_bundle(
    model_ids: Sequence[str],
    out: str | os.PathLike[str],
    *,
    pythons: Sequence[str] = (),
    catalogue_only: bool = False,
    config: Any = None,
    home: str | os.PathLike[str] | None = None,
    find_links: Sequence[str | os.PathLike[str]] = (),
    platform: str | None = None,
    progress: ProgressFn | None = None,
) -> BundleReport:
    """Write (or extend) the bundle in ``out`` for ``model_ids``; see the module docstring.

    ``pythons`` ("3.11", ...) are the destination's interpreters (default: the one each env would use
    here); ``catalogue_only`` bundles entries and packages but no envs; ``config`` is passed to
    :func:`~medigan_iso.catalogue.load_catalogue`; ``find_links`` adds local package folders to the
    index settings translated from pip's configuration; ``platform`` (uv's ``--python-platform`` form,
    e.g. ``aarch64-manylinux_2_28``) resolves and fetches wheels for another platform (wheels only).
    """
    say = progress or (lambda _m: None)
    root = Path(out).absolute()
    root.mkdir(parents=True, exist_ok=True)
    home_path = Path(home) if home is not None else None
    layout = cache_layout(home).ensure()
    tags_wanted = _platform_tags(platform)  # refuses an unsupported platform before any work
    manifest = _manifest(root) or {"format": BUNDLE_FORMAT, "files": {}, "models": {}, "runner": {}}
    if manifest.get("files") and manifest.get("target_platform") != platform:
        raise BundleError(
            str(root),
            f"this bundle was made for {neutralise(manifest.get('target_platform') or 'its machine')}, "
            f"not {platform or 'this machine'}",
            remedy="bundle each platform into its own folder",
        )
    before = dict(manifest["files"])
    settings = index_settings(find_links=find_links, offline=False)
    catalogue = load_catalogue(config, home=home, offline=False)
    entries = [catalogue.resolve(m) for m in model_ids]
    targets: list[Interpreter | None] = list(_target_interpreters(pythons, layout)) if pythons else [None]
    cat_path = root / CATALOGUE_NAME
    bundled_catalogue: dict[str, Any] = (
        json.loads(cat_path.read_text(encoding="utf-8")) if cat_path.is_file() else {}
    )
    for entry in entries:
        say(f"{entry.model_id}: package")
        link, package = _bundle_package(entry, root, manifest, home_path)
        sha = package.sha256
        raw = thaw(entry.raw)
        execution = raw.setdefault("execution", {})
        execution["package_link"] = link
        execution["package_sha256"] = sha
        execution.pop("package_md5", None)
        # the date a Session here would build with (the entry's, else the package's newest file)
        spec = _normalise_spec(entry, package_date=package.newest_file_date)
        execution["dependencies_as_of"] = spec.as_of.label  # the date envs resolved with, made explicit
        record: dict[str, Any] = {
            "package": link,
            "package_sha256": sha,
            "as_of": spec.as_of.as_json(),
            "envs": {},
        }
        if not catalogue_only:
            for target in targets:
                say(f"{entry.model_id}: resolving")
                resolution = _resolve_for(spec, target, layout, settings, platform)
                interp = resolution.interpreter
                say(f"{entry.model_id}: wheels for Python {interp.minor}")
                lock, _added = _fill_wheelhouse(
                    resolution.lock,
                    interp,
                    root=root,
                    manifest=manifest,
                    layout=layout,
                    settings=settings,
                    label=entry.model_id,
                    target=platform,
                )
                rel = f"{LOCKS_DIR}/{_safe(entry.model_id)}-py{interp.minor}.txt"
                (root / LOCKS_DIR).mkdir(exist_ok=True)
                _write_atomic(root / rel, lock)
                manifest["files"][rel] = _sha256_text(lock)
                record["envs"][interp.minor] = {"lock": rel, "python": interp.version}
        manifest["models"][entry.model_id] = record
        bundled_catalogue[entry.model_id] = raw
    if not catalogue_only:
        # the runner's own requirements for each target interpreter (msgpack and numpy of today)
        minors = {e["python"]: m for r in manifest["models"].values() for m, e in r["envs"].items()}
        layout_interps = {i.minor: i for i in discover_interpreters(layout)}
        for minor in sorted(set(minors.values())):
            interp = layout_interps.get(minor) or _find_interpreter(None, name=None, layout=layout)
            spec = _normalise_spec(list(RUNNER_REQUIREMENTS))
            resolution = _resolve_on(
                spec,
                interp,
                layout=layout,
                settings=settings,
                uv=_find_uv(),
                refresh=False,
                python_platform=platform,
            )
            lock, _added = _fill_wheelhouse(
                resolution.lock,
                interp,
                root=root,
                manifest=manifest,
                layout=layout,
                settings=settings,
                label="the runner",
                target=platform,
            )
            rel = f"{LOCKS_DIR}/{_RUNNER_ID}-py{minor}.txt"
            (root / LOCKS_DIR).mkdir(exist_ok=True)
            _write_atomic(root / rel, lock)
            manifest["files"][rel] = _sha256_text(lock)
            manifest["runner"][minor] = rel
    text = json.dumps(bundled_catalogue, indent=2, sort_keys=True)
    _write_atomic(cat_path, text)
    manifest["files"][CATALOGUE_NAME] = _sha256_text(text)
    manifest["medigan_iso_version"] = __version__
    manifest["platform"] = platform or next(iter(platform_tags()))
    manifest["target_platform"] = platform  # None: the machine that made it
    manifest["platform_tags"] = tags_wanted  # install refuses a machine that supports none of them
    _write_atomic(root / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True))
    total = sum((root / rel).stat().st_size for rel in manifest["files"])
    added = tuple(sorted(set(manifest["files"]) - set(before)))
    return BundleReport(root, manifest_sha256(root), tuple(sorted(manifest["models"])), added, total)


# --- installing a bundle -------------------------------------------------------------------------


def _seed_resolution(
    spec: _Spec, lock: str, interp: Interpreter, settings: IndexSettings, layout: CacheLayout
) -> None:
    """Record ``lock`` as the resolution of ``spec`` under ``settings``, so nothing resolves again."""
    uv = _find_uv()
    cache = _resolution_cache(spec, interp, settings, uv, layout)
    cache.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(cache, lock)
    if spec.as_of.date is not None and uv is not None and spec.given_lock is None:
        choice = layout.interpreter_choice(_choice_key(spec, settings, uv))
        choice.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(choice, json.dumps(interp.as_json()))


def _installed_record(layout: CacheLayout, sha: str) -> Path:
    return layout.root / "bundles" / f"{sha}.json"


def install_bundle(
    root: str | os.PathLike[str],
    *,
    home: str | os.PathLike[str] | None = None,
    expected_sha256: str | None = None,
    progress: ProgressFn | None = None,
) -> InstallReport:
    """Verify the bundle in ``root``, import its packages into the store, build its envs offline from its
    wheelhouse and add its entries to the local catalogue (last, so a failed install leaves no model
    pointing at it). The entries link the packages' trees in the store, not the bundle folder, which can
    be deleted afterwards."""
    say = progress or (lambda _m: None)
    started = time.monotonic()
    folder = Path(root).absolute()
    manifest = verify_bundle(folder, expected_sha256=expected_sha256)
    sha = manifest_sha256(folder)
    wanted = manifest.get("platform_tags")
    if isinstance(wanted, list) and wanted and not set(map(str, wanted)) & set(platform_tags()):
        raise BundleError(
            str(folder),
            f"the bundle was made for the platform {neutralise(manifest.get('platform'))}; this machine is "
            f"{next(iter(platform_tags()))} and can install none of its wheels",
            remedy="make a bundle for this machine on the connected one (`medigan-iso bundle MODEL -o DIR "
            "--platform ARCH-manylinux_2_N`, or without --platform on a machine like this one)",
        )
    layout = cache_layout(home).ensure()
    catalogue = load_catalogue([str(folder / CATALOGUE_NAME)], home=home, offline=True, official_url="")
    local = {i.minor: i for i in discover_interpreters(layout)}
    wheels = os.fspath(folder / WHEELS_DIR)
    install_settings = IndexSettings(find_links=(wheels,), no_index=True, offline=True)
    default_settings = index_settings(offline=True)
    uv = _find_uv()
    if uv is None:
        raise BundleError(str(folder), "installing a bundle needs uv", remedy="install uv with medigan-iso")
    envs: dict[str, str] = {}
    skipped: list[str] = []
    stored: dict[str, str] = {}  # model -> its package's key in the store (archive sha256 or tree hash)
    models = sorted(manifest.get("models", {}))
    for model_id in models:
        record = manifest["models"][model_id]
        entry = catalogue.resolve(model_id)
        say(f"{model_id}: package")
        stored[model_id] = ensure_package(entry, home=home, offline=True, require_hashes=True).sha256
        spec = _normalise_spec(entry)
        usable = [m for m in record.get("envs", {}) if m in local]
        skipped += [f"{model_id} (Python {m})" for m in record.get("envs", {}) if m not in local]
        if record.get("envs") and not usable:
            raise BundleError(
                str(folder),
                f"{model_id}: the bundle holds envs for Python {', '.join(record['envs'])}, none of which "
                "is on this machine",
                remedy="install one of those Pythons here, or bundle again with --python X.Y",
            )
        for minor in usable:
            interp = local[minor]
            lock = (folder / record["envs"][minor]["lock"]).read_text(encoding="utf-8")
            default_interp = _find_interpreter(spec.python_requires, name=model_id, layout=layout)
            for settings in (install_settings, default_settings):
                _seed_resolution(spec, lock, interp, settings, layout)
                if spec.as_of.date is None and default_interp.minor == minor:
                    _seed_resolution(spec, lock, default_interp, settings, layout)
            say(f"{model_id}: env for Python {minor}")
            try:
                env = _ensure(
                    dataclasses.replace(spec),
                    layout=layout,
                    settings=install_settings,
                    uv=uv,
                    builder="uv",
                    build=True,
                    rebuild=False,
                    progress=progress,
                )
            except MediganIsoError as exc:
                raise BundleError(
                    str(folder),
                    f"{model_id}: the env for Python {minor} did not build offline from the wheelhouse",
                    problems=[str(exc)],
                    remedy="verify the bundle (`medigan-iso bundle verify DIR`) and bundle again if it fails",
                ) from exc
            envs[model_id] = env.key
    for model_id in models:
        raw = thaw(catalogue.resolve(model_id).raw)
        # the package's tree in the store, pinned by the same hash (found there without reading the link):
        # the bundle folder may be moved or deleted once installed
        raw["execution"]["package_link"] = os.fspath(layout.package_tree(stored[model_id]))
        raw["execution"]["package_sha256"] = stored[model_id]
        store_local_entry(model_id, raw, home=home)
    record_path = _installed_record(layout, sha)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(record_path, json.dumps({"path": os.fspath(folder), "models": models, "envs": envs}))
    return InstallReport(folder, sha, tuple(models), envs, tuple(skipped), time.monotonic() - started)


def install_from_environment(home: str | os.PathLike[str] | None = None) -> InstallReport | None:
    """Install the bundle named by ``$MEDIGAN_ISO_BUNDLE`` once (a bundle installed before is skipped)."""
    value = os.environ.get(BUNDLE_ENV, "").strip()
    if not value:
        return None
    folder = Path(value).expanduser().absolute()
    layout = cache_layout(home)
    try:
        if _installed_record(layout, manifest_sha256(folder)).is_file():
            return None
    except OSError as exc:
        raise BundleError(
            str(folder),
            f"${BUNDLE_ENV} names no readable bundle: {exc}",
            remedy=f"point ${BUNDLE_ENV} at the folder `medigan-iso bundle` wrote",
        ) from exc
    return install_bundle(folder, home=home)


def bundle_files(root: Path) -> Iterable[Path]:
    """Every file in the bundle folder (for size reports)."""
    return (p for p in root.rglob("*") if p.is_file())
