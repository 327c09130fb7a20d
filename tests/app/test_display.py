"""printable(): text from bodies shown in logs and terminals cannot forge lines or escapes."""
import pytest

from app.display import error_text, printable


@pytest.mark.parametrize("raw, shown", [
    ("ORD-1 Zoë 注文", "ORD-1 Zoë 注文"),  # printable text, any script, unchanged
    ("a\nb\r\tc", "a\\nb\\r\\tc"),
    ("\x1b[2J\x07", "\\x1b[2J\\x07"),
    ("\x9b31m", "\\x9b31m"),  # C1 CSI: an escape to some terminals
    ("x\u2028y\u202ez", "x\\u2028y\\u202ez"),  # line separator, right-to-left override
    ("\ud800", "\\ud800"),  # a lone surrogate would not even encode to UTF-8
    ("\x00", "\\x00"),
])
def test_non_printable_characters_are_escaped(raw, shown):
    assert printable(raw) == shown


def test_every_character_of_the_result_is_printable():
    every = "".join(map(chr, range(0x3000))) + "\ud800\udfff\U000e0001"
    assert printable(every).isprintable()
    assert printable(every).encode("utf-8")


def test_non_strings_are_shown_as_text():
    assert printable(None) == "None"
    assert printable({"k": "a\nb"}) == "{'k': 'a\\nb'}"


def test_an_error_is_told_on_one_line_without_colours():
    # As delta-rs words an unreachable S3: causes nested over coloured lines.
    exc = OSError("Kernel error -> Generic S3 error\n  \x1b[31m↳\x1b[0m Error performing GET "
                  "http://127.0.0.1:9/t\n   \x1b[31m↳\x1b[0m Connection refused (os error 111)\n")
    assert error_text(exc) == ("OSError: Kernel error -> Generic S3 error ↳ Error performing "
                               "GET http://127.0.0.1:9/t ↳ Connection refused (os error 111)")
