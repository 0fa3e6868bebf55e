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

from medigan_iso._version import __version__
from medigan_iso.errors import MediganIsoError
from medigan_iso.untrusted import neutralise

__all__ = ["main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


ERROR_MAX_CHARS = 64_000


def terminal_safe(text: str, *, max_chars: int = ERROR_MAX_CHARS) -> str:
    """Our multi-line message made safe for a terminal, whatever model or catalogue text it carries.

    The last line of defence behind :func:`medigan_iso.untrusted.neutralise` at the sources: every control
    character but the newline is escaped, and every line after the first is indented, so no text inside a
    message can start a line that looks like ``medigan-iso: error: ...`` (issue 16, finding 5).
    """
    lines = [neutralise(line, max_chars=max_chars) for line in text.split("\n")]
    return "\n".join([lines[0], *(line if line[:1] in (" ", "") else "  " + line for line in lines[1:])])


class _TerminalSafeFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(super().format(record))


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the command line, only what it needs (see :func:`_groups_for`)."""
    parser = argparse.ArgumentParser(
        prog="medigan-iso",
        description="Generate synthetic medical images with medigan's models, each isolated in its own env.",
    )
    parser.add_argument("--version", action="version", version=f"medigan-iso {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (repeatable)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _command_groups() if argv is None else _groups_for(argv):
        register(subparsers)
    return parser


# Which group module defines each command, so that one command imports one group (issue 17: building the
# whole parser imported every group's dependencies, numpy and jsonschema included, for `--version` too).
# A command missing here still works: the whole parser is built (tests/test_cli_startup.py checks the map).
_COMMAND_MODULES = {
    "list": "catalogue",
    "search": "catalogue",
    "info": "catalogue",
    "validate": "catalogue",
    "generate": "generate",
    "verify": "verify",
    "fetch": "packages",
    "hash": "packages",
    "env": "env",
    "logs": "logs",
    "doctor": "doctor",
    "contribute": "contribute",
    "explore": "explore",
    "bundle": "bundle",
}


def _groups_for(argv: Sequence[str]) -> list[Callable[[Any], None]]:
    """The register functions a command line needs: none for a bare ``--version``, one for a known
    command, every group otherwise (help, usage errors, a command another group adds)."""
    import importlib

    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command is None and "--version" in argv:
        return []
    module = _COMMAND_MODULES.get(command or "")
    if module is None:
        return _command_groups()
    register: Callable[[Any], None] = importlib.import_module(f"medigan_iso.cli.{module}").register
    return [register]


def _command_groups() -> list[Callable[[Any], None]]:
    """The ``register`` function of every command group, in help order (one import per group)."""
    from medigan_iso.cli import (
        bundle,
        catalogue,
        contribute,
        doctor,
        env,
        explore,
        generate,
        logs,
        packages,
        verify,
    )

    return [
        catalogue.register,
        generate.register,
        verify.register,
        packages.register,
        env.register,
        logs.register,
        doctor.register,
        contribute.register,
        explore.register,
        bundle.register,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    log_handler = logging.StreamHandler(sys.stderr)
    log_handler.setFormatter(_TerminalSafeFormatter("medigan-iso: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), handlers=[log_handler])
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(handler(args))
    except MediganIsoError as exc:
        print(f"medigan-iso: error: {terminal_safe(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # `medigan-iso list | head`: the reader left; say nothing more (Python docs, "Note on SIGPIPE")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("medigan-iso: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
