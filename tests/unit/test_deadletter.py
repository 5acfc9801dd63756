"""Dead-letter headers: what they carry, what they never carry (no broker)."""

from __future__ import annotations

from jobsys.errors import DecodeError
from jobsys.wire.deadletter import (
    TEXT_LIMIT,
    TRACEBACK_LIMIT,
    dead_job,
    dead_letter_headers,
    error_type_name,
    format_traceback,
    record_for,
    replay_headers,
    truncate,
)
from jobsys.wire.headers import (
    HEADER_ATTEMPT,
    HEADER_ATTEMPTS,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_JOB_ID,
    HEADER_ORIGINAL_QUEUE,
    HEADER_PUBLISHED_AT_MS,
    HEADER_REPLAYS,
    HEADER_TRACEBACK,
    HEADER_UNREADABLE_HEADERS,
)
from tests.apps.dead_letters import dead_letter_headers as planted_headers


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def _record(exc: BaseException, with_traceback: bool = True):  # type: ignore[no-untyped-def]
    return record_for(
        exc,
        attempts=2,
        failed_at_ms=123,
        exchange="ex",
        routing_key="rk",
        queue="q",
        worker_host="host",
        with_traceback=with_traceback,
    )


def test_headers_keep_the_originals_drop_the_death_history_and_add_the_reason() -> None:
    original = {
        HEADER_JOB_ID: "j1",
        "tenant": "t",
        "x-death": [{"count": 1}],
        "x-first-death-queue": "q",
        "x-last-death-reason": "expired",
    }
    headers = dead_letter_headers(original, _record(_raised(RuntimeError("bad"))), job_id="job-1")
    assert headers[HEADER_JOB_ID] == "j1" and headers["tenant"] == "t"
    assert not any(k.startswith("x-") for k in headers)
    assert headers[HEADER_ERROR_TYPE] == "RuntimeError"
    assert headers[HEADER_ERROR_MESSAGE] == "bad"
    assert headers[HEADER_ATTEMPTS] == 2 and headers[HEADER_ORIGINAL_QUEUE] == "q"
    assert "RuntimeError: bad" in headers[HEADER_TRACEBACK]


def test_message_errors_carry_no_traceback_and_a_qualified_type() -> None:
    headers = dead_letter_headers(
        None, _record(DecodeError("body is not JSON"), False), job_id="m-1"
    )
    assert headers[HEADER_ERROR_TYPE] == "jobsys.errors.DecodeError"
    assert HEADER_TRACEBACK not in headers


def test_long_error_messages_are_truncated_to_the_limit() -> None:
    record = _record(ValueError("x" * 10_000))
    assert len(record.error_message) == TEXT_LIMIT
    assert record.error_message.endswith("...")
    assert truncate("short", 10) == "short"


def test_long_tracebacks_keep_their_tail_within_the_limit() -> None:
    try:
        try:
            raise ValueError("v" * (2 * TRACEBACK_LIMIT))
        except ValueError as cause:
            raise KeyError("the-bottom") from cause
    except KeyError as exc:
        text = format_traceback(exc)
    assert len(text) <= TRACEBACK_LIMIT
    assert text.startswith("...(truncated)")
    assert "the-bottom" in text


def test_tracebacks_never_show_local_variables() -> None:
    def handler() -> None:
        password = "hunter2"  # noqa: F841
        raise RuntimeError("failed")

    try:
        handler()
    except RuntimeError as exc:
        assert "hunter2" not in format_traceback(exc)


def test_an_exception_without_a_message_is_named_by_its_type() -> None:
    assert _record(TimeoutError()).error_message == "TimeoutError"
    assert error_type_name(DecodeError("x")) == "jobsys.errors.DecodeError"


def test_replay_headers_reset_attempts_and_drop_the_failure_record() -> None:
    headers = planted_headers("j-9", attempts=5)
    headers[HEADER_REPLAYS] = 2
    headers["x-death"] = [{"count": 1}]
    headers["traceparent"] = "00-abc-def-01"
    replayed = replay_headers(headers)
    assert replayed == {
        HEADER_JOB_ID: "j-9",
        HEADER_ATTEMPT: 1,
        HEADER_PUBLISHED_AT_MS: 1_700_000_000_000,
        HEADER_REPLAYS: 3,
        "tenant": "acme",
        "traceparent": "00-abc-def-01",
    }


def test_a_job_the_broker_dead_lettered_at_its_4_x_delivery_limit_reads_as_such() -> None:
    # The headers RabbitMQ 4.0+ puts on a message a quorum queue dead-letters after its delivery
    # limit (written from the docs: reason delivery_limit; x-delivery-count counts the returns).
    headers = {
        "jobsys-job-id": "j-20",
        "x-delivery-count": 20,
        "x-first-death-reason": "delivery_limit",
        "x-first-death-queue": "billing",
        "x-first-death-exchange": "jobs",
        "x-death": [{"reason": "delivery_limit", "queue": "billing", "count": 1}],
    }
    job = dead_job(headers, "charge", 2)
    assert job.job_id == "j-20"
    assert job.error_type == "broker: delivery_limit"
    assert job.original_queue == "billing"
    replayed = replay_headers(headers)
    assert not any(name.startswith("x-") for name in replayed)
    assert replayed["jobsys-job-id"] == "j-20"


def test_a_job_whose_header_table_was_unreadable_reads_as_a_decode_error_with_the_reason() -> None:
    # The frame reader leaves only its mark in place of a table it could not decode, so a job
    # the broker dead-lettered (or that was published straight into the dead-letter queue)
    # carries neither jobsys's error headers nor the broker's x-first-death-* ones.
    reason = "its header table could not be decoded: tables nested too deeply"
    job = dead_job({HEADER_UNREADABLE_HEADERS: reason}, None, 10)
    assert (job.error_type, job.error_message) == ("DecodeError", reason)
    assert job.job_id is None and job.original_queue is None
    # Another client may put the name there with any value: the reason is still said.
    for value in (7, None, b"", ""):
        job = dead_job({HEADER_UNREADABLE_HEADERS: value}, None, 10)
        assert job.error_type == "DecodeError"
        assert job.error_message == "its header table could not be decoded"
    # What a worker wrote when it dead-lettered the job comes first.
    job = dead_job(
        {
            HEADER_UNREADABLE_HEADERS: reason,
            HEADER_ERROR_TYPE: "jobsys.errors.DecodeError",
            HEADER_ERROR_MESSAGE: "written by the worker",
        },
        None,
        10,
    )
    assert (job.error_type, job.error_message) == (
        "jobsys.errors.DecodeError",
        "written by the worker",
    )
