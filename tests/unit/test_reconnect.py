"""The connect and reconnect policy (pure: nothing connects): the capped backoff, which
failures are retried, the one log line per failed attempt, and the typed error for a host
name that does not resolve."""

from __future__ import annotations

import logging
import socket

import aiormq.exceptions
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobsys.broker.connection import translate_error
from jobsys.broker.reconnect import can_heal, connect_retrying, reconnect_delay, short_reason
from jobsys.errors import (
    AccessRefused,
    ConfigError,
    ConnectionFailed,
    HostNotFound,
    TLSHandshakeFailed,
)
from jobsys.settings import Settings

SECRET_URL = "amqp://app:p%23ss%2Fw0rd@broker.invalid:5672/v"


def test_the_backoff_doubles_from_half_a_second_and_stops_at_five() -> None:
    settings = Settings()
    delays = [reconnect_delay(settings, n) for n in range(1, 9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]


@given(st.integers(min_value=-10, max_value=10**9))
def test_the_backoff_is_never_below_the_minimum_nor_above_the_cap(failures: int) -> None:
    settings = Settings(reconnect_min_s=0.25, reconnect_max_s=7.0)
    assert 0.25 <= reconnect_delay(settings, failures) <= 7.0


@pytest.mark.parametrize(
    "changes",
    [
        {"reconnect_min_s": 0.0},
        {"reconnect_min_s": -1.0},
        {"reconnect_max_s": float("inf")},
        {"reconnect_min_s": float("nan")},
        {"reconnect_min_s": 3.0, "reconnect_max_s": 1.0},
    ],
)
def test_a_backoff_that_cannot_work_is_refused(changes: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="reconnect"):
        Settings(**changes)  # type: ignore[arg-type]


def _gaierror(code: int, text: str) -> aiormq.exceptions.AMQPConnectionError:
    cause = socket.gaierror(code, text)
    try:
        raise aiormq.exceptions.AMQPConnectionError(code, text) from cause
    except aiormq.exceptions.AMQPConnectionError as exc:
        return exc


def test_a_host_name_that_does_not_resolve_is_host_not_found_and_not_retried() -> None:
    settings = Settings(url=SECRET_URL)
    error = translate_error(_gaierror(socket.EAI_NONAME, "Name or service not known"), settings)
    assert isinstance(error, HostNotFound)
    assert "'broker.invalid' does not resolve" in str(error)
    assert not can_heal(error)


def test_a_name_server_that_did_not_answer_is_retried() -> None:
    error = translate_error(
        _gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), Settings()
    )
    assert type(error) is ConnectionFailed
    assert can_heal(error)


@pytest.mark.parametrize(
    ("error", "heals"),
    [
        (ConnectionFailed("refused"), True),
        (HostNotFound("no such host"), False),
        (TLSHandshakeFailed("untrusted"), False),
        (AccessRefused("wrong password"), False),
        (ValueError("not ours"), False),
    ],
)
def test_only_failures_that_may_heal_are_retried(error: Exception, heals: bool) -> None:
    assert can_heal(error) is heals


def test_short_reason_is_the_library_text_under_the_jobsys_error() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
        except ConnectionRefusedError:
            raise ConnectionFailed("cannot reach the broker (long hint)") from None
    except ConnectionFailed as exc:
        assert short_reason(exc) == "Connect call failed ('127.0.0.1', 1)"
    assert short_reason(ConnectionFailed("plain")) == "plain"
    assert short_reason(None) == "unknown"


async def test_each_failed_connect_attempt_is_one_line_with_the_password_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="jobsys")
    settings = Settings(url=SECRET_URL, connect_deadline_s=1.2, reconnect_min_s=0.1)
    attempts = 0
    with pytest.raises(ConnectionFailed):
        async for attempt in connect_retrying(settings):
            with attempt:
                attempts += 1
                raise ConnectionFailed("connection refused")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == attempts - 1  # the last failure is the error raised, not a line
    assert lines[0] == (
        "connect attempt 1 to amqp://app:***@broker.invalid:5672/v failed: connection "
        "refused; next try in 0.1s (giving up after 1.2s)"
    )
    assert "0.2s" in lines[1] and "0.4s" in lines[2]
    assert all("p%23ss" not in line and "p#ss" not in line for line in lines)


async def test_a_failure_that_cannot_heal_is_raised_after_one_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts = 0
    with pytest.raises(HostNotFound):
        async for attempt in connect_retrying(Settings(connect_deadline_s=30)):
            with attempt:
                attempts += 1
                raise HostNotFound("no such host")
    assert attempts == 1
    assert not caplog.records
