"""``medigan-iso logs``: list and prune the runner and env build logs (issue 16, finding 3).

Owns the printing only; the pruning policy is :mod:`medigan_iso.logfiles`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from medigan_iso.logfiles import LOG_MAX_AGE_S, LOG_MAX_TOTAL_BYTES, prune_logs
from medigan_iso.paths import cache_layout

__all__ = ["register"]

MB = 1_000_000
DAY_S = 24 * 3600.0


def register(subparsers: Any) -> None:
    logs = subparsers.add_parser("logs", help="show where logs are and remove old ones")
    sub = logs.add_subparsers(dest="logs_command", metavar="LOGS_COMMAND")
    path = sub.add_parser("path", help="print the folder holding runner and env build logs")
    path.set_defaults(handler=_path)
    prune = sub.add_parser("prune", help="remove old logs, then the oldest beyond a total size")
    prune.add_argument(
        "--older-than",
        type=float,
        default=LOG_MAX_AGE_S / DAY_S,
        metavar="DAYS",
        help=f"remove logs untouched for DAYS (default {LOG_MAX_AGE_S / DAY_S:g})",
    )
    prune.add_argument(
        "--max-size",
        type=float,
        default=LOG_MAX_TOTAL_BYTES / MB,
        metavar="MB",
        help=f"then remove the oldest until the rest use at most MB (default {LOG_MAX_TOTAL_BYTES / MB:g})",
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    prune.add_argument("--json", action="store_true", help="print JSON for scripts")
    prune.set_defaults(handler=_prune)
    logs.set_defaults(handler=lambda _args: _usage(logs))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _path(args: argparse.Namespace) -> int:
    print(cache_layout().logs)
    return 0


def _prune(args: argparse.Namespace) -> int:
    if args.older_than < 0 or args.max_size < 0:
        raise SystemExit("medigan-iso logs prune: error: --older-than and --max-size must be >= 0")
    report = prune_logs(
        cache_layout().logs,
        max_age_s=args.older_than * DAY_S,
        max_total_bytes=int(args.max_size * MB),
        dry_run=args.dry_run,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "removed": [str(p) for p in report.removed],
                    "freed_bytes": report.freed_bytes,
                    "kept": report.kept,
                    "kept_bytes": report.kept_bytes,
                    "dry_run": args.dry_run,
                },
                indent=2,
            )
        )
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for path in report.removed:
        print(f"{verb} {path}")
    print(
        f"{verb} {len(report.removed)} log(s), {report.freed_bytes / MB:.1f} MB; "
        f"kept {report.kept} ({report.kept_bytes / MB:.1f} MB)"
    )
    return 0
