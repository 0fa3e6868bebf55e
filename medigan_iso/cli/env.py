"""``medigan-iso env``: build, list, locate, remove and prune model environments.

Owns the printing for env commands only; all work is done by :mod:`medigan_iso.envs`. MODEL arguments
are resolved through the catalogue (imported when a handler needs it); ``--with REQ`` describes an env by
requirement strings instead, for ad-hoc envs and for tests.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from medigan_iso.envs import (
    BUILDERS,
    EnvSpec,
    ImportCheck,
    ModelEnv,
    check_env,
    ensure_env,
    failed_checks,
    list_envs,
    prune_envs,
    remove_env,
    resolve,
)
from medigan_iso.errors import EnvBuildError, EnvError, MediganIsoError
from medigan_iso.paths import cache_layout
from medigan_iso.untrusted import neutralise

__all__ = ["register"]

MB = 1_000_000


def register(subparsers: Any) -> None:
    env = subparsers.add_parser("env", help="build, list, locate, remove and prune model environments")
    sub = env.add_subparsers(dest="env_command", metavar="ENV_COMMAND")

    build = sub.add_parser("build", help="build (or reuse) the env of each MODEL")
    build.add_argument("models", nargs="*", metavar="MODEL", help="model id (e.g. 00001 or its full key)")
    _spec_options(build)
    build.add_argument("--rebuild", action="store_true", help="resolve and build again even if it exists")
    build.add_argument("--index-url", help="package index to use instead of pip's/uv's configured one")
    build.add_argument(
        "--find-links",
        action="append",
        default=[],
        metavar="PATH_OR_URL",
        help="extra wheel location (repeatable)",
    )
    build.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="use only uv's cache (default: $MEDIGAN_ISO_OFFLINE)",
    )
    build.add_argument("--online", dest="offline", action="store_false", help="allow network access")
    build.add_argument("--builder", choices=BUILDERS, help="force a builder (default: uv, else virtualenv)")
    build.add_argument(
        "--check",
        action="store_true",
        help="import every declared dependency inside the env; fail when one does not import",
    )
    build.add_argument(
        "--all", action="store_true", help="every model of the catalogue; prints the catalogue report table"
    )
    build.add_argument(
        "--report", type=Path, metavar="FILE", help="with --all: also write the table (Markdown) to FILE"
    )
    build.set_defaults(handler=_build)

    check = sub.add_parser(
        "check", help="import every declared dependency of MODEL inside its env (builds it if needed)"
    )
    check.add_argument("models", nargs="*", metavar="MODEL")
    _spec_options(check)
    check.add_argument("--no-build", action="store_true", help="fail instead of building a missing env")
    check.add_argument("--json", action="store_true", help="print JSON for scripts")
    check.set_defaults(handler=_check)

    listing = sub.add_parser(
        "list", help="envs with their own disk use, last use and the models sharing them"
    )
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    listing.set_defaults(handler=_list)

    path = sub.add_parser("path", help="print the directory of MODEL's env (never builds)")
    path.add_argument("models", nargs="*", metavar="MODEL")
    _spec_options(path)
    path.set_defaults(handler=_path)

    remove = sub.add_parser("remove", help="delete the env of MODEL (or the env with that KEY)")
    remove.add_argument("models", nargs="*", metavar="MODEL_OR_KEY")
    _spec_options(remove)
    remove.set_defaults(handler=_remove)

    prune = sub.add_parser(
        "prune", help="delete leftovers of killed builds, broken envs and old or excess envs"
    )
    prune.add_argument("--older-than", type=float, metavar="DAYS", help="also remove envs unused for DAYS")
    prune.add_argument(
        "--max-size",
        type=float,
        metavar="GB",
        help="then remove least recently used envs until they use at most GB",
    )
    prune.set_defaults(handler=_prune)

    env.set_defaults(handler=lambda _args: _usage(env))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _spec_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--with",
        dest="requirements",
        action="append",
        default=[],
        metavar="REQ",
        help="describe an env by requirement strings instead of a model (repeatable)",
    )
    parser.add_argument(
        "--python",
        dest="python_requires",
        metavar="SPEC",
        help="Python version range for a --with env (e.g. '>=3.8,<3.12')",
    )
    parser.add_argument("--name", help="name recorded for a --with env (shown by `env list`)")
    parser.add_argument(
        "--as-of",
        metavar="DATE|latest",
        help="resolve as the index was on DATE (YYYY-MM-DD) or as it is now ('latest'); default: the "
        "model's own date (execution.dependencies_as_of, its package, description.provided_date, "
        "selection.year)",
    )
    parser.add_argument(
        "--config",
        action="append",
        metavar="PATH|URL",
        help="catalogue file, directory or URL (repeatable; replaces $MEDIGAN_ISO_CONFIG)",
    )


def _specs(args: argparse.Namespace) -> list[Any]:
    specs: list[Any] = []
    every = getattr(args, "all", False)
    if args.models or every:
        catalogue = importlib.import_module("medigan_iso.catalogue").load_catalogue(args.config)
        specs += list(catalogue.entries) if every else [catalogue.resolve(model) for model in args.models]
    if args.requirements or args.python_requires:
        specs.append(EnvSpec(tuple(args.requirements), python_requires=args.python_requires, name=args.name))
    if not specs:
        raise SystemExit("medigan-iso: error: name at least one MODEL (or --with REQ)")
    return specs


def _progress() -> Callable[[str], None] | None:
    if not sys.stderr.isatty():
        return None
    return lambda message: print(f"  {message}", file=sys.stderr, flush=True)


def _label(spec: Any) -> str:
    name = getattr(spec, "model_id", None) or getattr(spec, "name", None)
    return neutralise(name) if name else neutralise(", ".join(spec.requirements)) or "(runner only)"


def _package_date(spec: Any, args: argparse.Namespace) -> date | None:
    """The newest file date of the model's package, as ``generate`` sees it (fetched if needed)."""
    if not hasattr(spec, "package_link") or not spec.package_link:
        return None
    packages = importlib.import_module("medigan_iso.packages")
    try:
        package = packages.ensure_package(spec, offline=getattr(args, "offline", None))
        newest: date | None = package.newest_file_date
    except MediganIsoError as exc:
        print(
            f"{_label(spec)}: package not available ({neutralise(str(exc).splitlines()[0])}); its date is "
            "not used",
            file=sys.stderr,
        )
        return None
    return newest


def _build_one(spec: Any, args: argparse.Namespace) -> tuple[ModelEnv, float, float]:
    """Resolve (timed), then build (timed); returns the env, resolve seconds and build seconds."""
    package_date = _package_date(spec, args)
    options: dict[str, Any] = {
        "index_url": args.index_url,
        "find_links": args.find_links,
        "offline": args.offline,
        "as_of": args.as_of,
        "package_date": package_date,
    }
    started = time.monotonic()
    resolve(spec, refresh=args.rebuild, **options)
    resolved = time.monotonic()
    env = ensure_env(spec, builder=args.builder, progress=_progress(), **options)
    return env, resolved - started, time.monotonic() - resolved


def _build(args: argparse.Namespace) -> int:
    if args.all:
        return _build_all(args)
    failed = 0
    for spec in _specs(args):
        env, resolve_s, build_s = _build_one(spec, args)
        print(
            f"{_label(spec)}: env {env.key} ({env.builder}, Python {env.python_version}, dependencies as of "
            f"{env.as_of}{f' from {neutralise(env.as_of_source)}' if env.as_of_source else ''}) ready in "
            f"{resolve_s + build_s:.1f} s at {env.path}"
        )
        if args.check:
            rows = check_env(env, model_id=getattr(spec, "model_id", None))
            _print_checks(rows)
            failed += bool(failed_checks(rows))
    if failed:
        raise EnvBuildError(
            None,
            f"{failed} env(s) failed the import check (see the table above)",
            remedy="try another date (`--as-of YYYY-MM-DD`) or fix the entry's dependencies",
        )
    return 0


def _print_checks(rows: list[ImportCheck]) -> None:
    print(f"  {'DISTRIBUTION':28}  {'VERSION':14}  {'IMPORTS':28}  RESULT")
    for row in rows:
        imports = ", ".join(row.imports) or "-"
        result = "ok" if row.ok else neutralise(row.error or "failed", max_chars=300)
        print(
            f"  {neutralise(row.distribution):28}  {neutralise(row.version or '-'):14}  "
            f"{neutralise(imports, max_chars=60):28}  {result}"
        )


def _check(args: argparse.Namespace) -> int:
    failed = 0
    out: list[dict[str, Any]] = []
    for spec in _specs(args):
        env = ensure_env(
            spec,
            build=not args.no_build,
            as_of=args.as_of,
            package_date=_package_date(spec, args),
            progress=_progress(),
        )
        rows = check_env(env, model_id=getattr(spec, "model_id", None))
        failed += bool(failed_checks(rows))
        if args.json:
            out.append(
                {
                    "model": _label(spec),
                    "env": env.key,
                    "python": env.python_version,
                    "as_of": env.as_of,
                    "checks": [dataclasses.asdict(r) for r in rows],
                }
            )
            continue
        print(f"{_label(spec)}: env {env.key} (Python {env.python_version}, dependencies as of {env.as_of})")
        _print_checks(rows)
    if args.json:
        print(json.dumps(out, indent=2))
    return 1 if failed else 0


def _lock_version(lock: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}==([^\s;\\]+)", lock, re.MULTILINE)
    return match[1] if match else "-"


def _apparent_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size  # noqa: PTH118
    return total


REPORT_COLUMNS = ("model", "as of", "python", "torch", "numpy", "resolve s", "build s", "env MB", "imports")


def _build_all(args: argparse.Namespace) -> int:
    """Build and check every entry; one row per model, whatever fails (the reason is the row)."""
    rows: list[tuple[str, ...]] = []
    print(" | ".join(REPORT_COLUMNS), flush=True)
    for spec in _specs(args):
        label = _label(spec)
        try:
            env, resolve_s, build_s = _build_one(spec, args)
            lock = env.lock_path.read_text(encoding="utf-8")
            checks = check_env(env, model_id=getattr(spec, "model_id", None))
            bad = failed_checks(checks)
            verdict = (
                f"ok ({len(checks)} distributions)"
                if not bad
                else "; ".join(f"{b.distribution}: {b.error}" for b in bad)
            )
            row = (
                label,
                env.as_of,
                env.python_version,
                _lock_version(lock, "torch"),
                _lock_version(lock, "numpy"),
                f"{resolve_s:.1f}",
                f"{build_s:.1f}",
                f"{_apparent_bytes(env.path) / MB:.0f}",
                verdict,
            )
        except MediganIsoError as exc:
            reason = " ".join(str(exc).split())
            row = (label, "-", "-", "-", "-", "-", "-", "-", f"FAILED: {reason}")
        cells = tuple(neutralise(cell, max_chars=400).replace("|", "\\|") for cell in row)
        rows.append(cells)
        print(" | ".join(cells), flush=True)
    ok = sum(1 for r in rows if r[-1].startswith("ok"))
    summary = f"{ok} of {len(rows)} envs build and import"
    print(summary)
    if args.report is not None:
        lines = [
            "| " + " | ".join(REPORT_COLUMNS) + " |",
            "|" + "---|" * len(REPORT_COLUMNS),
            *("| " + " | ".join(r) + " |" for r in rows),
            "",
            summary + ".",
            "",
        ]
        args.report.write_text("\n".join(lines), encoding="utf-8")
    return 0 if ok == len(rows) else 1


def _list(args: argparse.Namespace) -> int:
    infos = sorted(list_envs(), key=lambda i: -(i.last_use or 0))
    if args.json:
        rows = [
            {
                "key": i.key,
                "path": str(i.path),
                "valid": i.valid,
                "own_bytes": i.own_bytes,
                "last_use": i.last_use,
                "builder": i.builder,
                "python": i.python_version,
                "as_of": i.as_of,
                "as_of_source": i.as_of_source,
                "models": list(i.models),
            }
            for i in infos
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not infos:
        print(f"no envs under {cache_layout().envs}")
        return 0
    print(f"{'KEY':16}  {'OWN MB':>8}  {'LAST USE':19}  {'BUILDER':10}  {'PYTHON':7}  {'AS OF':10}  MODELS")
    for info in infos:
        last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.last_use)) if info.last_use else "never"
        builder = info.builder if info.valid else "BROKEN"
        print(
            f"{info.key:16}  {info.own_bytes / MB:8.1f}  {last:19}  {builder or '-':10}  "
            f"{info.python_version or '-':7}  {info.as_of or '-':10}  "
            f"{neutralise(', '.join(info.models)) or '-'}"
        )
    return 0


def _path(args: argparse.Namespace) -> int:
    for spec in _specs(args):
        print(ensure_env(spec, build=False, as_of=args.as_of, package_date=_package_date(spec, args)).path)
    return 0


def _remove(args: argparse.Namespace) -> int:
    envs_dir = cache_layout().envs
    keys = [m for m in args.models if m and not m.startswith(".") and (envs_dir / m).is_dir()]
    args.models = [m for m in args.models if m not in keys]
    if args.models or args.requirements:
        keys += [
            ensure_env(spec, build=False, as_of=args.as_of, package_date=_package_date(spec, args)).key
            for spec in _specs(args)
        ]
    if not keys:
        raise EnvError("name a MODEL or an env KEY (see `medigan-iso env list`)")
    for key in keys:
        print(f"removed {remove_env(key)}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    report = prune_envs(older_than_days=args.older_than, max_size_gb=args.max_size)
    for path in report.removed:
        print(f"removed {path}")
    print(f"pruned {len(report.removed)} item(s), freed {report.freed_bytes / MB:.1f} MB")
    return 0
