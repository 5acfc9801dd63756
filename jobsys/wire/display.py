"""Showing what came off the wire (header names and values, job ids, job types, error text) on
a terminal or in a log line, so that it can neither forge output nor break it (pure, no I/O).

A header or a job id is whatever its publisher wrote: ESC sequences that clear the screen, set
the window title or hide text; a carriage return that overwrites a line; a newline that forges a
table row or a log line; a bidirectional override that reorders what is shown. ``escape``
writes each such character as a visible escape (``\\x1b``, ``\\r``, ``\\n``, ``\\u202e``) and
keeps ordinary Unicode (accents, CJK, emoji, non-breaking spaces) as it is. Lone surrogates
(what undecodable bytes become under ``surrogateescape``) are escaped too: a terminal cannot
print them, and ``print`` would raise.

Backslashes are kept as they are: the point is that nothing shown can act on the terminal, not
that every value can be read back exactly.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

#: C0 controls (all of them, tab and line feed too), DEL, C1 controls, the Unicode line and
#: paragraph separators, the bidirectional marks, embeddings, overrides and isolates, and lone
#: surrogates.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CUT_MARK = "... ({} characters; cut)"


def escape(text: str) -> str:
    """``text`` with every control character written as a visible escape; one line, always."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_lines(text: str) -> list[str]:
    """``text`` split at its line breaks (any of them), each line escaped: for a value that is
    meant to span lines (a traceback), shown as continuation lines the caller indents."""
    return [escape(line) for line in text.splitlines()] or [""]


def escape_keeping_newlines(text: str) -> str:
    """``text`` escaped except for its ``\\n`` line breaks: for a traceback in a log, whose lines
    stay lines while an ESC or a carriage return in an exception message is made visible."""
    return "\n".join(escape(line) for line in text.split("\n"))


def cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked with its full length when cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + _CUT_MARK.format(len(text))


def value_text(value: object) -> str:
    """One header value as one safe line, as well as its type allows.

    Text is escaped; bytes are decoded as UTF-8 and marked ``(bytes)``, or, when they are not
    UTF-8, shown with ``\\xNN`` for the bad bytes and marked ``(bytes, not UTF-8)``; numbers,
    booleans, decimals, times and None as Python writes them; tables and arrays as their
    ``repr``.
    """
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, bytes | bytearray):
        try:
            return f"{escape(bytes(value).decode('utf-8'))} (bytes)"
        except UnicodeDecodeError:
            shown = bytes(value).decode("utf-8", "backslashreplace")
            return f"{escape(shown)} (bytes, not UTF-8)"
    if value is None or isinstance(value, bool | int | float):
        return str(value)
    # Imported here: the supervisor of --processes imports this module, and decimal is a
    # quarter of a MiB it never needs (a header holds a Decimal only in a broker client).
    from decimal import Decimal

    return escape(str(value) if isinstance(value, datetime | Decimal) else repr(value))


def utc_time(ms: int) -> str | None:
    """Milliseconds since the epoch as ``YYYY-MM-DD HH:MM:SS`` in UTC; None when no calendar
    date has that time (a forged or corrupt header: ``2**62``, ``-10**15``)."""
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):
        return None
