"""``medigan-iso verify DIR [--regenerate]``: check an output folder against its manifest."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from medigan_iso.untrusted import neutralise

__all__ = ["register"]

MAX_NAMED = 50  # files named per category before "... and N more"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check a generated folder against its manifest (and optionally make it again)",
        description=(
            "Hash every file of DIR and compare with DIR/manifest.jsonl: a changed, missing or extra file is "
            "named and the exit status is 1. --regenerate makes every listed file again from the recorded "
            "catalogue entry, package sha256, env lock (rebuilt when missing), seed and batch layout into a "
            "temporary folder and compares the bytes."
        ),
    )
    parser.add_argument(
        "directory", type=Path, help="a folder written by medigan-iso generate or Session.save"
    )
    parser.add_argument("--regenerate", action="store_true", help="also regenerate and compare bytes")
    parser.add_argument(
        "--sandbox",
        choices=("off", "auto", "require"),
        default=None,
        help="confine the regenerating model (default: $MEDIGAN_ISO_SANDBOX, else auto)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_run)


def _named(label: str, paths: tuple[str, ...]) -> None:
    if not paths:
        return
    print(f"{label} ({len(paths)}):")
    for path in paths[:MAX_NAMED]:
        print(f"  {neutralise(path)}")
    if len(paths) > MAX_NAMED:
        print(f"  ... and {len(paths) - MAX_NAMED} more")


def _run(args: argparse.Namespace) -> int:
    from medigan_iso.verify import verify

    report = verify(args.directory, regenerate=args.regenerate, sandbox=args.sandbox)
    if args.json:
        data = {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in ((n, getattr(report, n)) for n in report.__dataclass_fields__)
        }
        data["directory"] = str(report.directory)
        data["ok"] = report.ok
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0 if report.ok else 1
    where = neutralise(str(report.directory))
    _named("changed", report.changed)
    _named("missing", report.missing)
    _named("extra (not in the manifest)", report.extra)
    _named("partial writes of an interrupted run (not counted)", report.partial)
    _named("recorded by a killed run just before it landed (not counted)", report.not_landed)
    for note in report.notes:
        print(f"note: {neutralise(note)}", file=sys.stderr)
    if report.unfinished_runs:
        print(
            f"note: {len(report.unfinished_runs)} run(s) did not finish; their manifest lines cover the "
            "files they wrote",
            file=sys.stderr,
        )
    print(f"{where}: {len(report.matched)} of {report.files} file(s) match the manifest")
    if report.regenerated is not None:
        _named("not reproduced", report.not_reproduced)
        print(f"reproduced {report.reproduced} of {report.regenerated}")
    if not report.ok:
        print(f"{where}: verification FAILED", file=sys.stderr)
        return 1
    return 0
