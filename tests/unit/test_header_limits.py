"""How large a job's headers and id may be, and why: a job the producer accepts must still fit
one AMQP frame when a worker dead-letters it with the largest failure record (pure).

The broker's side, measured on RabbitMQ 3.10.8 with the default frame_max of 131072: a content
header frame (every property, headers included) of up to 131072 bytes of payload was accepted;
one byte more and the broker closed the whole connection with ``FRAME_ERROR frame_too_large``
(docs/operations.md). Before these limits, a job whose headers fit but left no room for the
record could never be dead-lettered (finding F1).
"""

from __future__ import annotations

from typing import Any

import pytest
from pamqp import frame
from pamqp.header import ContentHeader

from jobsys.errors import ConfigError, PayloadTooLargeError
from jobsys.publish.producer import JobRequest, Producer
from jobsys.publish.properties import copied_properties
from jobsys.settings import DEFAULT_MAX_HEADER_BYTES, MAX_HEADER_BYTES_LIMIT, Settings
from jobsys.topology.model import Topology
from jobsys.wire.deadletter import TEXT_LIMIT, TRACEBACK_LIMIT, DeadLetterRecord
from jobsys.wire.deadletter import dead_letter_headers as build_dead_letter_headers
from jobsys.wire.envelope import MAX_JOB_ID_BYTES, JobProperties, new_message_id
from jobsys.wire.headers import HEADER_PREVIOUS_ATTEMPT, Origin, retry_headers
from jobsys.wire.table import table_size

#: The broker's default frame_max; every property of a message must fit one frame.
FRAME_MAX = 131072
LONG_NAME = "n" * 200  # the longest queue, exchange or job type name a topology allows
FOUR_BYTES = "\U0001f600"  # one character, four bytes in UTF-8: the worst case for a limit


def _topology() -> Topology:
    return Topology.model_validate(
        {
            "version": 1,
            "exchanges": {LONG_NAME: {"type": "direct"}},
            "queues": {LONG_NAME: {"type": "classic", "max_priority": 10}},
            "bindings": [{"exchange": LONG_NAME, "queue": LONG_NAME, "routing_key": "k" * 200}],
            "job_types": {LONG_NAME: {"exchange": LONG_NAME, "routing_key": "k" * 200}},
        }
    )


def _headers_of_size(size: int) -> dict[str, Any]:
    # A table of one str header: 4 (table) + 1 + len(name) + 1 ("S") + 4 + len(value).
    return {"pad": "v" * (size - 4 - 1 - 3 - 1 - 4)}


def test_the_header_limit_defaults_to_16_kib_and_is_read_from_the_environment() -> None:
    assert Settings().max_header_bytes == DEFAULT_MAX_HEADER_BYTES == 16 * 1024
    assert Settings.from_env({"JOBSYS_MAX_HEADER_BYTES": "4096"}).max_header_bytes == 4096
    with pytest.raises(ConfigError, match="JOBSYS_MAX_HEADER_BYTES must be a number"):
        Settings.from_env({"JOBSYS_MAX_HEADER_BYTES": "16KiB"})


@pytest.mark.parametrize("value", [0, -1, MAX_HEADER_BYTES_LIMIT + 1, 10**9])
def test_a_header_limit_that_would_not_leave_room_in_one_frame_is_refused(value: int) -> None:
    with pytest.raises(ConfigError, match=f"max_header_bytes must be from 1 to {64 * 1024}"):
        Settings(max_header_bytes=value)


def test_headers_over_the_limit_are_refused_naming_it_and_headers_at_it_pass() -> None:
    producer = Producer(Settings(max_header_bytes=1000), _topology())
    at_limit = _headers_of_size(1000)
    assert table_size(at_limit, 1000) == 1000
    producer.prepare(JobRequest(LONG_NAME, {}, headers=at_limit))
    with pytest.raises(PayloadTooLargeError) as caught:
        producer.prepare(JobRequest(LONG_NAME, {}, headers=_headers_of_size(1001)))
    assert str(caught.value) == (
        "headers are 1001 bytes encoded; the limit is 1000 bytes "
        "(Settings.max_header_bytes, JOBSYS_MAX_HEADER_BYTES)"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"big": "v" * 200_000},
        {f"h{i}": i for i in range(20_000)},
        {"list": list(range(1_000_000))},
    ],
    ids=["one 200 KB value", "20,000 headers", "a list of a million ints"],
)
def test_headers_far_over_the_limit_are_refused_before_any_io(headers: dict[str, Any]) -> None:
    # Each of these made the broker close the producer's connection (FRAME_ERROR), reported
    # as "outcome unknown; resubmitting is safe", which then failed the same way every time.
    producer = Producer(Settings(), _topology())
    with pytest.raises(PayloadTooLargeError, match=f"the limit is {DEFAULT_MAX_HEADER_BYTES}"):
        producer.prepare(JobRequest(LONG_NAME, {}, headers=headers))


def test_a_job_at_every_limit_still_fits_one_frame_when_dead_lettered_with_the_largest_record() -> (
    None
):
    settings = Settings(max_header_bytes=MAX_HEADER_BYTES_LIMIT)
    producer = Producer(settings, _topology())
    job = producer.prepare(
        JobRequest(
            LONG_NAME,
            {},
            priority=9,
            delay_s=30 * 86400,  # a delayed job carries its origin headers too
            job_id="é" * (MAX_JOB_ID_BYTES // 2) + "a",
            headers=_headers_of_size(MAX_HEADER_BYTES_LIMIT),
        )
    )
    published = dict(job.headers)
    # Trace context as a producer span writes it, with the longest tracestate OpenTelemetry
    # reads (8192 characters) doubled for margin.
    published["traceparent"] = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    published["tracestate"] = "k=" + "v" * 16_382
    retried = retry_headers(
        published,
        job_id=job.job_id,
        attempt=2,
        origin=Origin(LONG_NAME, "k" * 255),
        first_failed_at_ms=2**62,
    )
    retried[HEADER_PREVIOUS_ATTEMPT] = published["traceparent"]
    record = DeadLetterRecord(
        error_type="m" * 255,
        error_message=FOUR_BYTES * TEXT_LIMIT,
        traceback=FOUR_BYTES * TRACEBACK_LIMIT,
        attempts=2**31,
        failed_at_ms=2**62,
        exchange=LONG_NAME,
        routing_key="k" * 255,
        queue=LONG_NAME,
        worker_host="h" * 255,
        first_failed_at_ms=2**62,
        reason=FOUR_BYTES * TEXT_LIMIT,
    )
    dead = build_dead_letter_headers(retried, record, job_id=job.job_id)
    kept = JobProperties(
        LONG_NAME,
        priority=9,
        correlation_id="c" * 255,
        reply_to="r" * 255,
        app_id="a" * 255,
    )
    props = copied_properties(kept, dead, new_message_id(), max_bytes=FRAME_MAX)
    content_header = frame.marshal(ContentHeader(0, 2, props), 1)
    assert len(content_header) <= FRAME_MAX
    # What that leaves: room to spare, not a fit by a few bytes.
    assert FRAME_MAX - len(content_header) > 8 * 1024
