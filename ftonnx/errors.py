"""The one exception type of ftonnx: its message is a single line a user can act on. And `printable`, which
makes text from a model, a data set or a file name safe to show on a terminal as part of one line."""

from __future__ import annotations

import re

# C0 and C1 controls (escape sequences, newlines, carriage returns), DEL, line and paragraph separators,
# bidirectional overrides, and lone surrogates (undecodable bytes of a file name, which would not even print).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class FtonnxError(Exception):
    """A problem with the user's input or environment; the CLI prints it and exits with code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name): the reason to show a user."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def printable(text: object) -> str:
    """`text` with every control character written as a visible escape (\\x1b, \\n, \\u202e, ...), so that a
    label, node name or path can neither restyle the terminal nor forge an output line."""
    return _UNPRINTABLE.sub(_escape, str(text))


def _escape(match: re.Match) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
