"""Durations as people write them: ``250ms``, ``90s``, ``5m``, ``2h``, ``30d``."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobsys.duration import format_duration, parse_duration_s


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("250ms", 0.25),
        ("90s", 90.0),
        ("90", 90.0),
        ("5m", 300.0),
        ("1.5h", 5400.0),
        ("2h", 7200.0),
        ("30d", 2_592_000.0),
        ("0", 0.0),
        (" 10 s ", 10.0),
        (7, 7.0),
        (0.5, 0.5),
        ("1h30m", 5400.0),
        ("2m8s", 128.0),
        ("1d12h24m32s", 131_072.0),
        ("1h 30m", 5400.0),
        ("1s500ms", 1.5),
        ("1.5h30m", 7200.0),
    ],
)
def test_a_duration_is_read_in_seconds(written: object, seconds: float) -> None:
    assert parse_duration_s(written) == seconds


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("5 minutes", "'5 minutes' is not a duration; write a number with a unit: 250ms, 90s"),
        ("-5s", "'-5s' is not a duration"),
        ("5S", "'5S' is not a duration"),
        ("1e3", "'1e3' is not a duration"),
        ("", "'' is not a duration"),
        ("   ", "'   ' is not a duration"),
        ("30m1h", "'30m1h' is not a duration; write each unit once, largest first (1h30m)"),
        ("1h1h", "'1h1h' is not a duration; write each unit once, largest first"),
        ("1h30", "'1h30' is not a duration"),
        ("h", "'h' is not a duration"),
        ("1h-30m", "'1h-30m' is not a duration"),
        ("1h\x1b[2J30m", "'1h\\x1b[2J30m' is not a duration"),
        ("1h" * 1000, "'" + "1h" * 50 + "' is not a duration"),
        (True, "expected a duration such as 30s, 5m or 2h, got a boolean"),
        (None, "expected a duration such as 30s, 5m or 2h, got NoneType"),
        ([1], "expected a duration such as 30s, 5m or 2h, got list"),
        (-1, "a duration must be a finite number of seconds, zero or more"),
        (math.nan, "a duration must be a finite number of seconds, zero or more"),
        (math.inf, "a duration must be a finite number of seconds, zero or more"),
    ],
)
def test_something_that_is_not_a_duration_is_refused_with_a_hint(
    written: object, message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration_s(written)

    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0ms"),
        (0.25, "250ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (90, "90s"),
        (119.5, "119.5s"),
        (120, "2m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (90061, "1d1h1m1s"),
        (2_592_000, "30d"),
        (4_194_303.5, "4194303.5s"),
    ],
)
def test_a_duration_is_shown_in_its_shortest_plain_form(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


@given(st.integers(min_value=1, max_value=400 * 86400))
def test_a_whole_number_of_seconds_reads_back_as_it_was_shown(seconds: int) -> None:
    shown = format_duration(seconds)

    assert "e" not in shown
    assert parse_duration_s(shown) == seconds


@given(st.integers(min_value=0, max_value=10**9).map(lambda ms: ms / 1000))
def test_any_duration_jobsys_shows_reads_back_to_the_millisecond(seconds: float) -> None:
    assert parse_duration_s(format_duration(seconds)) == pytest.approx(seconds, abs=0.0005)


@given(st.text(max_size=40))
def test_any_text_is_a_duration_or_a_value_error(text: str) -> None:
    try:
        seconds = parse_duration_s(text)
    except ValueError as exc:
        assert "is not a duration" in str(exc)
    else:
        assert math.isfinite(seconds) and seconds >= 0


def test_an_integer_beyond_float_range_is_a_value_error_not_an_overflow() -> None:
    with pytest.raises(ValueError, match="finite number of seconds"):
        parse_duration_s(10**400)
