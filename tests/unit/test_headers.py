"""The header vocabulary: typed readers that never trust a value's type, and the builders of the
headers a job carries when it is published, retried or dead-lettered (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from pamqp import encode

from jobsys.wire import headers as vocabulary
from jobsys.wire.headers import (
    HEADER_ATTEMPT,
    HEADER_DUE_AT_MS,
    HEADER_FIRST_FAILED_AT_MS,
    HEADER_JOB_ID,
    HEADER_ORIGINAL_EXCHANGE,
    HEADER_ORIGINAL_ROUTING_KEY,
    HEADER_PUBLISHED_AT_MS,
    PREFIX,
    Origin,
    dropped_digest,
    due_at_ms,
    escape_invalid,
    first_failed_at_ms,
    integer,
    is_utf8,
    origin_of,
    positive_int,
    retry_headers,
    sendable_headers,
    text,
)


def test_every_jobsys_header_name_starts_with_the_prefix_and_never_with_x() -> None:
    names = [v for k, v in vars(vocabulary).items() if k.startswith("HEADER_")]
    assert len(names) == 22 and len(set(names)) == 22
    assert all(name.startswith(PREFIX) for name in names)


@pytest.mark.parametrize(
    ("value", "as_text", "as_int", "as_positive"),
    [
        ("j-1", "j-1", None, None),
        (b"j-\xff", "j-\ufffd", None, None),
        (5, None, 5, 5),
        (0, None, 0, None),
        (-3, None, -3, None),
        (True, None, None, None),
        (1.5, None, None, None),
        (None, None, None, None),
        ([1], None, None, None),
    ],
)
def test_readers_accept_only_the_type_they_name(
    value: Any, as_text: str | None, as_int: int | None, as_positive: int | None
) -> None:
    assert (text(value), integer(value), positive_int(value)) == (as_text, as_int, as_positive)


def test_a_retry_renews_the_identity_carries_the_origin_and_strips_the_death_history() -> None:
    original = {
        HEADER_JOB_ID: "job-1",
        HEADER_ATTEMPT: 1,
        HEADER_PUBLISHED_AT_MS: 5,
        "tenant": "acme",
        "x-death": [{"count": 1}],
        "x-first-death-queue": "q",
        "x-last-death-reason": "expired",
    }
    headers = retry_headers(
        original,
        job_id="job-1",
        attempt=2,
        origin=Origin("jobs", "email.send"),
        first_failed_at_ms=7,
        published_at_ms=9,
    )
    assert headers == {
        HEADER_JOB_ID: "job-1",
        HEADER_ATTEMPT: 2,
        HEADER_PUBLISHED_AT_MS: 9,
        HEADER_FIRST_FAILED_AT_MS: 7,
        HEADER_ORIGINAL_EXCHANGE: "jobs",
        HEADER_ORIGINAL_ROUTING_KEY: "email.send",
        "tenant": "acme",
    }
    assert "x-death" in original  # the original is left as it was


def test_the_origin_is_the_carried_one_or_else_where_the_job_was_delivered_from() -> None:
    carried = {HEADER_ORIGINAL_EXCHANGE: "jobs", HEADER_ORIGINAL_ROUTING_KEY: b"email.send"}
    assert origin_of(carried, "jobsys.delivery", "0.1.q") == Origin("jobs", "email.send")
    assert origin_of({}, "jobs", "k") == Origin("jobs", "k")
    assert origin_of({HEADER_ORIGINAL_EXCHANGE: "jobs"}, "ex", "k") == Origin("ex", "k")


def test_the_first_failure_is_carried_or_now() -> None:
    assert first_failed_at_ms({HEADER_FIRST_FAILED_AT_MS: 3}, now=10) == 3
    assert first_failed_at_ms({HEADER_FIRST_FAILED_AT_MS: "yesterday"}, now=10) == 10
    assert first_failed_at_ms({}, now=10) == 10


def test_text_that_was_not_utf8_is_escaped_into_text_that_is() -> None:
    decoded = b"ab\xff\xfe".decode("utf-8", "surrogateescape")  # as the lenient decoder keeps it
    assert not is_utf8(decoded)
    assert escape_invalid(decoded) == "ab\\xff\\xfe"
    assert escape_invalid("naïve ✓") == "naïve ✓"


def test_sendable_headers_can_always_be_encoded_again() -> None:
    bad_name = b"n\xff".decode("utf-8", "surrogateescape")
    headers = {bad_name: b"\xff\x00bytes", "nested": {"k": [b"\xfe", "ok", 3]}, "n": 1}
    sendable = sendable_headers(headers)
    assert sendable == {
        "n\\xff": "\\xff\x00bytes",  # NUL is valid UTF-8: it stays
        "nested": {"k": ["\\xfe", "ok", 3]},
        "n": 1,
    }
    encode.field_table(sendable)  # pamqp encodes it: no bytes, no surrogates left


def test_the_digest_of_dropped_headers_is_short_and_names_them() -> None:
    headers = {f"pad{i:05d}": "v" * 200 for i in range(600)}
    digest = dropped_digest(headers)
    assert digest.startswith("600 headers, sha256 ")
    assert "pad00000" in digest and len(digest) < 1100
    assert digest == dropped_digest(dict(reversed(headers.items())))  # order does not matter


def test_a_retry_after_a_delay_carries_its_due_time_and_one_at_once_carries_none() -> None:
    base = {HEADER_JOB_ID: "j", HEADER_DUE_AT_MS: 5}
    origin = Origin("jobs", "k")
    later = retry_headers(
        base,
        job_id="j",
        attempt=2,
        origin=origin,
        first_failed_at_ms=1,
        due_at=due_at_ms(1.5, 1000),
    )
    assert later[HEADER_DUE_AT_MS] == 2500
    at_once = retry_headers(base, job_id="j", attempt=2, origin=origin, first_failed_at_ms=1)
    assert HEADER_DUE_AT_MS not in at_once
    assert due_at_ms(0.0001, 1000) == 1001  # rounded up: never early
