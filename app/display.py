"""Text from messages made safe to show in text logs and terminals."""
from __future__ import annotations

import re

# SGR colour codes: delta-rs colours the arrows of the causes it nests over several lines.
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def printable(value) -> str:
    """str(value) with every non-printable character backslash-escaped.

    Ids and bodies come from any SQS sender: a raw newline would forge a log line, an
    escape sequence (C0 or C1 controls) would drive the operator's terminal, a bidi
    override would reorder what is shown, and a lone surrogate would not encode. Python's
    isprintable() names them all (controls, format characters, separators, surrogates,
    unassigned code points); printable text in any script stays as it is.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    # \n, \r, \t as Python writes them; anything else by its code point.
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or (
        f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else
        f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")


def error_text(exc: BaseException) -> str:
    """'Type: message' on one line and without colours, as a record or a command tells it."""
    return f"{type(exc).__name__}: {' '.join(_COLOURS.sub('', str(exc)).split())}"
