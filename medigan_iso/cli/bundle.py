"""``medigan-iso bundle``: carry models, their packages and every wheel to a machine with no network.

``bundle MODEL... -o DIR`` (connected machine), ``bundle verify DIR`` and ``bundle install DIR``
(destination). The work is :mod:`medigan_iso.bundle`; this module parses and prints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from medigan_iso.untrusted import neutralise

__all__ = ["register"]

MB = 1_000_000


def register(subparsers: Any) -> None:
    bundle = subparsers.add_parser(
        "bundle",
        help="write an air-gap bundle (MODEL... -o DIR), or `bundle verify DIR` / `bundle install DIR`",
        description="bundle MODEL... -o DIR [--python X.Y] [--platform P] | "
        "bundle verify DIR [--sha256 HASH] | bundle install DIR",
    )
    bundle.add_argument("words", nargs="+", metavar="MODEL|verify|install", help="model ids, or verb and DIR")
    bundle.add_argument("-o", "--output", metavar="DIR", help="the bundle folder (created or extended)")
    bundle.add_argument(
        "--python", action="append", default=[], metavar="X.Y", help="a destination interpreter (repeatable)"
    )
    bundle.add_argument(
        "--platform",
        metavar="ARCH-manylinux_2_N",
        help="resolve and fetch wheels for another platform (uv's --python-platform, e.g. "
        "aarch64-manylinux_2_28); install refuses a machine of another platform",
    )
    bundle.add_argument("--catalogue-only", action="store_true", help="entries and packages, no envs")
    bundle.add_argument(
        "--sha256", metavar="HASH", help="verify/install: the manifest hash printed at bundling"
    )
    bundle.set_defaults(handler=_run)


def _say(message: str) -> None:
    print(neutralise(message), file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from medigan_iso import bundle

    verb = args.words[0]
    if verb in ("verify", "install"):
        if len(args.words) != 2:
            raise SystemExit(f"medigan-iso bundle {verb}: error: give exactly one DIR")
        if verb == "verify":
            data = bundle.verify_bundle(args.words[1], expected_sha256=args.sha256)
            digest = bundle.manifest_sha256(args.words[1])
            print(f"ok: {len(data['files'])} files verified; bundle.json sha256 {digest}")
            return 0
        report = bundle.install_bundle(args.words[1], expected_sha256=args.sha256, progress=_say)
        for model_id in report.models:
            env = report.envs.get(model_id)
            print(neutralise(f"{model_id}: installed" + (f" (env {env})" if env else "")))
        for skipped in report.skipped:
            print(neutralise(f"skipped env of {skipped}: no such Python here"))
        print(f"installed in {report.seconds:.1f} s from bundle {report.manifest_sha256}")
        return 0
    if not args.output:
        raise SystemExit("medigan-iso bundle: error: -o DIR is required when bundling models")
    made = bundle.create_bundle(
        args.words,
        args.output,
        pythons=args.python,
        catalogue_only=args.catalogue_only,
        platform=args.platform,
        progress=_say,
    )
    print(
        neutralise(
            f"bundle {made.path}: {len(made.models)} model(s), {made.total_bytes / MB:.1f} MB, "
            f"{len(made.added_files)} file(s) added"
        )
    )
    print(f"bundle.json sha256 {made.manifest_sha256}")
    return 0
