"""The reply to a waiting caller: which addresses a worker answers, and reading replies."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobsys.errors import JobFailed
from jobsys.wire.reply import (
    failed_headers,
    is_correlation_id,
    is_reply_address,
    ok_headers,
    read_reply,
)

ADDRESS = "amq.rabbitmq.reply-to.g1h2AA1yZXBseUA5MjQ4ODg0AABwDwAAAAJrDLmU.Wjn2+x7ECi0NXkYKiEg/SQ=="


def test_an_address_the_broker_made_is_answered() -> None:
    assert is_reply_address(ADDRESS)


@pytest.mark.parametrize(
    "value",
    [
        "rs.work",
        "",
        "amq.rabbitmq.reply-to",
        "amq.rabbitmq.reply-to.",
        "amq.rabbitmq.reply-tox.abc",
        "amq.rabbitmq.reply-to.a b",
        "amq.rabbitmq.reply-to.\x1b[2J",
        "amq.rabbitmq.reply-to.é",
        "amq.rabbitmq.reply-to." + "a" * 300,
        "amq.rabbitmq.reply-to.\udcff",
        None,
        b"amq.rabbitmq.reply-to.abc",
        42,
    ],
)
def test_anything_else_is_never_answered(value: Any) -> None:
    assert not is_reply_address(value)


@given(st.text())
def test_only_the_prefix_opens_the_door(value: str) -> None:
    if is_reply_address(value):
        assert value.startswith("amq.rabbitmq.reply-to.") and value.isascii()


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("c-1", True),
        ("é" * 127 + "c", True),
        ("é" * 128, False),
        ("", False),
        ("\udcff\udcfe", False),
        (None, False),
        (7, False),
    ],
)
def test_correlation_ids_sent_back_are_utf8_short_strings(value: Any, ok: bool) -> None:
    assert is_correlation_id(value) is ok


def test_success_reply_reads_back() -> None:
    reply = read_reply(ok_headers("j-1", 2), b"5")
    assert reply is not None
    assert (reply.outcome, reply.job_id, reply.attempts, reply.body) == ("ok", "j-1", 2, b"5")


def test_failure_reply_reads_back_with_texts_truncated() -> None:
    headers = failed_headers(
        "j-1",
        outcome="dead_lettered",
        error_type="ValueError",
        error_message="x" * 5000,
        attempts=3,
        reason="gave up after 3 attempts: ValueError",
        safe_to_resubmit=True,
    )
    reply = read_reply(headers, b"")
    assert reply is not None and reply.outcome == "dead_lettered"
    assert reply.error_message is not None and len(reply.error_message) <= 1024
    assert reply.safe_to_resubmit is True
    assert reply.reason == "gave up after 3 attempts: ValueError"


@pytest.mark.parametrize("headers", [None, {}, {"jobsys-outcome": "maybe"}, {"jobsys-outcome": 1}])
def test_a_message_that_is_not_a_reply_is_not_read_as_one(headers: Any) -> None:
    assert read_reply(headers, b"") is None


def test_safe_to_resubmit_must_be_a_real_true() -> None:
    headers = {**ok_headers("j", 1), "jobsys-outcome": "dead_lettered"}
    headers["jobsys-safe-to-resubmit"] = "yes"
    reply = read_reply(headers, b"")
    assert reply is not None and reply.safe_to_resubmit is False


def test_job_failed_says_what_failed_and_what_to_do() -> None:
    error = JobFailed(
        job_id="j-1",
        job_type="send",
        error_type="ValueError",
        error_message="bad",
        attempts=1,
        reason=None,
        safe_to_resubmit=False,
    )
    assert str(error) == (
        "job j-1 (send) failed after 1 attempt and was dead-lettered: ValueError: bad; "
        "resubmitting it unchanged will fail the same way"
    )
