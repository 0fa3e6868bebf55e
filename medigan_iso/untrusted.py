"""Neutralising text that came from a model, a runner or a catalogue before a terminal or a log sees it.

This module owns :func:`neutralise` (and :func:`get_logger`, a module logger whose record arguments pass
through it) and imports nothing from the rest of the package, so every layer (errors included) may call it.
It must not print, log or raise on any input: it is the last step before untrusted text reaches a human,
and it has to work on whatever an attacker sends.

Why (issue 16, finding 5): error messages, exception type names, stderr tails and log frames from models,
and ids and descriptions from catalogues, were printed raw. OSC 52 clipboard writes, title changes,
screen clears and a forged ``medigan-iso: error:`` line (after an embedded newline) all reached the
terminal. The rule now: every character that is not printable (C0 and C1 controls, DEL, ESC, bidi
overrides and other format characters, line/paragraph separators, surrogates left by undecodable bytes,
unassigned code points) is written as a visible escape (``\\x1b``, ``\\u202e``), and the length is capped
with a ``…[+N chars]`` marker, so a 2 GiB message costs no more than a short one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

__all__ = ["MAX_CHARS", "NeutralisingFilter", "get_logger", "neutralise"]

MAX_CHARS = 2000
"""Default cap on the characters kept (escapes count with their full visible length)."""

_CONTINUATION = "\n  | "
"""What a kept newline becomes in multiline mode: no untrusted line can start at column 0."""

_BYTES_SLACK = 8


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        # a byte that was not UTF-8, carried through ``surrogateescape``: show the original byte
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _as_text(value: object, limit: int) -> tuple[str, int, str]:
    """(head text, count of input units not in the head, unit name) without reading past ``limit``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value[: limit * 4 + _BYTES_SLACK]) if len(value) > limit else bytes(value)
        return raw.decode("utf-8", "surrogateescape"), len(value) - len(raw), "bytes"
    if isinstance(value, str):
        text = value
    else:
        try:
            text = str(value)
        except Exception as exc:  # any __str__ failure still has to yield a line
            text = f"<unprintable {type(value).__name__}: {type(exc).__name__}>"
    if not isinstance(text, str):  # a __str__ returning a str subclass that lies
        text = "<unprintable>"
    if len(text) > limit:
        return text[:limit], len(text) - limit, "chars"
    return text, 0, "chars"


def neutralise(text: object, *, max_chars: int = MAX_CHARS, multiline: bool = False) -> str:
    """Return ``text`` safe to print or log: controls escaped visibly, at most ``max_chars`` kept.

    ``text`` may be a ``str``, ``bytes`` (decoded as UTF-8; undecodable bytes become ``\\xNN``) or any
    object (its ``str()``). With ``multiline=True`` newlines are kept but every following line is indented
    behind ``"  | "``, so a model cannot forge a line of ours; otherwise a newline is ``\\n`` like any
    other control character. When input is cut, ``…[+N chars]`` (``bytes`` for bytes input) says how much.
    """
    limit = max(0, int(max_chars))
    head, dropped, unit = _as_text(text, limit)
    if dropped == 0 and head.isprintable() and len(head) <= limit:
        return head
    pieces: list[str] = []
    used = 0
    consumed = 0
    for ch in head:
        if ch.isprintable():
            piece = ch
        elif multiline and ch == "\n":
            piece = _CONTINUATION
        elif multiline and ch == "\r":
            piece = ""  # CRLF line ends: the \n carries the break
        else:
            piece = _escape(ch)
        if used + len(piece) > limit:
            break
        pieces.append(piece)
        used += len(piece)
        consumed += 1
    rest = head[consumed:]
    if unit == "bytes":
        dropped += len(rest.encode("utf-8", "surrogateescape"))
    else:
        dropped += len(rest)
    out = "".join(pieces)
    if dropped:
        out += f"…[+{dropped} {unit}]"
    return out


_LOG_ARG_MAX_CHARS = 4000


class NeutralisingFilter(logging.Filter):
    """A logging filter that neutralises every argument of a record that is not a number.

    Message templates are ours; their arguments (model ids, URLs, runner log frames, exception texts) may
    come from a model or a catalogue. Attach it with :func:`get_logger`.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(
                arg
                if arg is None or isinstance(arg, (int, float))
                else neutralise(arg, max_chars=_LOG_ARG_MAX_CHARS)
                for arg in args
            )
        elif isinstance(args, Mapping) and args:
            record.args = {
                key: value
                if value is None or isinstance(value, (int, float))
                else neutralise(value, max_chars=_LOG_ARG_MAX_CHARS)
                for key, value in args.items()
            }
        return True


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with a :class:`NeutralisingFilter` attached (once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, NeutralisingFilter) for f in logger.filters):
        logger.addFilter(NeutralisingFilter())
    return logger
