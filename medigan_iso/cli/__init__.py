"""The ``medigan-iso`` command line: the only part of medigan_iso that prints.

Each command group lives in a submodule with a ``register(subparsers)`` function that adds its
subcommands; every subcommand's handler takes the parsed args and returns an exit code. Library errors
(:class:`~medigan_iso.errors.MediganIsoError`) become one readable message on stderr and exit code 1,
never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from medigan_iso import __version__
from medigan_iso.errors import MediganIsoError

__all__ = ["main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medigan-iso",
        description="Generate synthetic medical images with medigan's models, each isolated in its own env.",
    )
    parser.add_argument("--version", action="version", version=f"medigan-iso {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (repeatable)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _command_groups():
        register(subparsers)
    return parser


def _command_groups() -> list[Callable[[Any], None]]:
    """The ``register`` function of every command group, in help order (one import per group)."""
    from medigan_iso.cli import catalogue, doctor, env, generate, packages

    return [catalogue.register, generate.register, packages.register, env.register, doctor.register]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="medigan-iso: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(handler(args))
    except MediganIsoError as exc:
        print(f"medigan-iso: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # `medigan-iso list | head`: the reader left; say nothing more (Python docs, "Note on SIGPIPE")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("medigan-iso: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
