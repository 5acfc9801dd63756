"""What came off the wire is shown so that it cannot act on a terminal or forge a line: every
control character is escaped, ordinary Unicode is kept, and no value can make the helpers
raise (pure)."""

from __future__ import annotations

import datetime
import decimal
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobsys.wire.display import (
    cut,
    escape,
    escape_keeping_newlines,
    escape_lines,
    utc_time,
    value_text,
)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("a\rb", "a\\rb"),
        ("a\nb", "a\\nb"),
        ("a\tb", "a\\tb"),
        ("\x00\x08\x7f", "\\x00\\x08\\x7f"),
        ("\x85\x9b2J", "\\x85\\x9b2J"),  # C1: NEL and the one-byte CSI
        ("safe\u202eevil", "safe\\u202eevil"),  # right-to-left override
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
        ("\u2066isolated\u2069", "\\u2066isolated\\u2069"),
        ("\udcff\udc80", "\\udcff\\udc80"),  # undecodable bytes under surrogateescape
    ],
)
def test_escape_writes_every_control_character_visibly(text: str, shown: str) -> None:
    assert escape(text) == shown


@pytest.mark.parametrize(
    "text",
    ["plain-job-id", "café", "東京", "emoji 🎉", "no\u00a0break", "👩\u200d💻", "a\\x1bb", ""],
)
def test_escape_keeps_ordinary_unicode_and_backslashes_as_they_are(text: str) -> None:
    assert escape(text) == text


@given(st.text(st.characters(codec=None, categories=None)))
def test_escape_never_raises_and_its_output_is_one_printable_line(text: str) -> None:
    shown = escape(text)

    assert len(shown.splitlines()) <= 1
    # No control character, line or paragraph separator, or surrogate is left.
    assert not [ch for ch in shown if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")]
    shown.encode("utf-8")  # a terminal can print it: no lone surrogate is left


def test_escape_lines_splits_at_every_line_break_and_escapes_each_line() -> None:
    text = "Traceback:\r\n  File 'x'\n\x1b[2Jboom\rover\u2028sep"

    assert escape_lines(text) == ["Traceback:", "  File 'x'", "\\x1b[2Jboom", "over", "sep"]
    assert escape_lines("") == [""]


def test_escape_keeping_newlines_escapes_everything_but_the_newlines() -> None:
    text = "Traceback (most recent call last):\n  ValueError: bad \x1b[2J\rjob"

    assert escape_keeping_newlines(text) == (
        "Traceback (most recent call last):\n  ValueError: bad \\x1b[2J\\rjob"
    )


def test_cut_keeps_short_text_and_marks_what_it_cuts() -> None:
    assert cut("abc", 3) == "abc"
    assert cut("x" * 10, 4) == "xxxx... (10 characters; cut)"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("text\x1b[31m", "text\\x1b[31m"),
        (b"utf-8 \xc3\xa9", "utf-8 é (bytes)"),
        (bytearray(b"\xff\xfe\x1b"), "\\xff\\xfe\\x1b (bytes, not UTF-8)"),
        (2**63 - 1, str(2**63 - 1)),
        (-(2**63), str(-(2**63))),
        (10**400, str(10**400)),
        (True, "True"),
        (1.5, "1.5"),
        (None, "None"),
        (decimal.Decimal("3.14"), "3.14"),
        (datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), "2026-01-02 03:04:05+00:00"),
        ({"a": ["\x1b", b"\x00"]}, "{'a': ['\\x1b', b'\\x00']}"),
    ],
)
def test_value_text_shows_any_header_value_on_one_safe_line(value: object, shown: str) -> None:
    assert value_text(value) == shown


def test_value_text_of_an_odd_object_uses_its_repr_escaped() -> None:
    class Odd:
        def __repr__(self) -> str:
            return "odd\n\x1b[2J"

    assert value_text(Odd()) == "odd\\n\\x1b[2J"


@pytest.mark.parametrize(
    ("ms", "shown"),
    [
        (1_700_000_009_000, "2023-11-14 22:13:29"),
        (0, "1970-01-01 00:00:00"),
        (-1, "1969-12-31 23:59:59"),
        (2**62, None),
        (-(10**15), None),
        (10**400, None),
    ],
)
def test_utc_time_formats_epoch_milliseconds_or_says_none_when_out_of_range(
    ms: int, shown: str | None
) -> None:
    assert utc_time(ms) == shown
