"""``medigan-iso env``: build, list, locate, remove and prune model environments.

Owns the printing for env commands only; all work is done by :mod:`medigan_iso.envs`. MODEL arguments
are resolved through the catalogue (imported when a handler needs it); ``--with REQ`` describes an env by
requirement strings instead, for ad-hoc envs and for tests.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from medigan_iso.envs import (
    BUILDERS,
    EnvSpec,
    ensure_env,
    list_envs,
    prune_envs,
    remove_env,
)
from medigan_iso.errors import EnvError
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
    build.set_defaults(handler=_build)

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


def _specs(args: argparse.Namespace) -> list[Any]:
    specs: list[Any] = []
    if args.models:
        catalogue = importlib.import_module("medigan_iso.catalogue").load_catalogue()
        specs += [catalogue.resolve(model) for model in args.models]
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


def _build(args: argparse.Namespace) -> int:
    for spec in _specs(args):
        started = time.monotonic()
        env = ensure_env(
            spec,
            rebuild=args.rebuild,
            index_url=args.index_url,
            find_links=args.find_links,
            offline=args.offline,
            builder=args.builder,
            progress=_progress(),
        )
        print(
            f"{_label(spec)}: env {env.key} ({env.builder}, Python {env.python_version}) "
            f"ready in {time.monotonic() - started:.1f} s at {env.path}"
        )
    return 0


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
                "models": list(i.models),
            }
            for i in infos
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not infos:
        print(f"no envs under {cache_layout().envs}")
        return 0
    print(f"{'KEY':16}  {'OWN MB':>8}  {'LAST USE':19}  {'BUILDER':10}  {'PYTHON':7}  MODELS")
    for info in infos:
        last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.last_use)) if info.last_use else "never"
        builder = info.builder if info.valid else "BROKEN"
        print(
            f"{info.key:16}  {info.own_bytes / MB:8.1f}  {last:19}  {builder or '-':10}  "
            f"{info.python_version or '-':7}  {neutralise(', '.join(info.models)) or '-'}"
        )
    return 0


def _path(args: argparse.Namespace) -> int:
    for spec in _specs(args):
        print(ensure_env(spec, build=False).path)
    return 0


def _remove(args: argparse.Namespace) -> int:
    envs_dir = cache_layout().envs
    keys = [m for m in args.models if m and not m.startswith(".") and (envs_dir / m).is_dir()]
    args.models = [m for m in args.models if m not in keys]
    if args.models or args.requirements:
        keys += [ensure_env(spec, build=False).key for spec in _specs(args)]
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
