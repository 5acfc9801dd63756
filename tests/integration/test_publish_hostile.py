"""Hostile input on the publish path against the real broker: a job goes where its job type
says and nowhere else, and every refusal is a typed error that says whether the job is queued."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest
from pydantic import BaseModel, field_validator

from jobsys.broker.connection import BrokerConnection
from jobsys.errors import (
    ConfigError,
    MessageError,
    MessageRefusedError,
    PayloadTooLargeError,
    PayloadValidationError,
)
from jobsys.ops import dlq
from jobsys.publish.producer import JobRequest, Producer, Receipt
from jobsys.settings import MAX_HEADER_BYTES_LIMIT, Settings
from jobsys.topology.model import DEAD_LETTER_EXCHANGE
from jobsys.wire.deadletter import TEXT_LIMIT, TRACEBACK_LIMIT, DeadLetterRecord
from jobsys.wire.deadletter import dead_letter_headers as build_dead_letter_headers
from jobsys.wire.envelope import JobProperties
from jobsys.wire.headers import HEADER_ERROR_MESSAGE, HEADER_JOB_ID, HEADER_TRACEBACK
from tests.apps.publishing import declare, drain

HOSTILE_JOBS: list[dict[str, Any]] = [
    {"job_id": 12345},
    {"job_id": ""},
    {"job_id": "line\nbreak"},
    {"job_id": "x" * 200_000},
    {"headers": {"raw": b"bytes"}},
    {"headers": {"set": {1, 2}}},
    {"headers": {"big": 2**63}},
    {"headers": {"nan": float("nan")}},
    {"headers": {"n" * 200: "name the broker would cut"}},
    {"headers": {"big": "v" * 200_000}},
    {"headers": {f"h{i}": i for i in range(20_000)}},
    {"delay_s": 10**400},
    {"delay_s": "5s"},
    {"priority": "5"},
]


@pytest.mark.parametrize("name", ["CC", "BCC", "cc"])
async def test_a_cc_or_bcc_header_is_refused_before_any_io_and_no_copy_lands_elsewhere(
    vhost_settings: Settings, name: str
) -> None:
    loaded = await declare(vhost_settings)
    async with Producer(vhost_settings, loaded.topology) as producer:
        with pytest.raises(PayloadValidationError, match="copy of the job"):
            await producer.publish("squeeze", {}, headers={name: ["email.x"]})
        await producer.publish("squeeze", {}, job_id="after")
    assert await drain(vhost_settings, "emails") == []
    assert [m.headers[HEADER_JOB_ID] for m in await drain(vhost_settings, "tiny")] == ["after"]


async def test_replaying_a_dead_lettered_job_that_carries_cc_puts_it_in_its_own_queue_only(
    vhost_settings: Settings,
) -> None:
    loaded = await declare(vhost_settings)
    # Planted past jobsys, as a raw publisher could leave it: CC names the key that the
    # delivery exchange routes to queue "audit".
    async with BrokerConnection(vhost_settings) as connection:
        channel = await connection.channel(confirms=True)
        exchange = await channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
        message = aio_pika.Message(
            b"{}",
            type="send_email",
            headers={HEADER_JOB_ID: "cc-dlq", "CC": ["audit"], "BCC": ["archive"]},
        )
        await exchange.publish(message, "emails.dead", mandatory=True)
    async with Producer(vhost_settings, loaded.topology) as producer:
        state = await dlq.replay(producer, "emails")
    assert state.replayed == 1
    [replayed] = await drain(vhost_settings, "emails")
    assert replayed.headers[HEADER_JOB_ID] == "cc-dlq"
    assert "CC" not in replayed.headers and "BCC" not in replayed.headers
    assert await drain(vhost_settings, "audit") == []
    assert await drain(vhost_settings, "archive") == []


async def test_a_message_the_broker_refuses_is_reported_as_not_published_and_the_producer_goes_on(
    vhost_settings: Settings,
) -> None:
    loaded = await declare(vhost_settings)
    async with Producer(vhost_settings, loaded.topology) as producer:
        # republish sends headers as given; a CC that is not an array of strings makes the
        # broker close the channel with PRECONDITION_FAILED unacceptable_type_in_header.
        with pytest.raises(MessageRefusedError) as caught:
            await producer.republish(
                b"{}",
                {HEADER_JOB_ID: "refused-1", "CC": "email.x"},
                "jobs",
                "email.send",
                kept=JobProperties("send_email"),
                kind="replay",
            )
        message = str(caught.value)
        assert "refused-1" in message and "was not published" in message
        assert "unacceptable_type_in_header" in message
        assert caught.value.job_id == "refused-1"
        # The robust channel comes back, and the next job is confirmed.
        await producer.publish("send_email", {"to": "a@b.c"}, job_id="next")
    queued = [m.headers[HEADER_JOB_ID] for m in await drain(vhost_settings, "emails")]
    assert queued == ["next"]


async def test_hostile_input_is_refused_before_any_io_and_the_producer_keeps_publishing(
    vhost_settings: Settings,
) -> None:
    loaded = await declare(vhost_settings)
    never_opened = Producer(vhost_settings, loaded.topology)
    for kwargs in HOSTILE_JOBS:
        # Never opened: a broker error here would be a ConnectionFailed, not these.
        with pytest.raises((MessageError, ConfigError)):
            await never_opened.publish("send_email", {"to": "a@b.c"}, **kwargs)
    async with Producer(vhost_settings, loaded.topology) as producer:
        for kwargs in HOSTILE_JOBS:
            with pytest.raises((MessageError, ConfigError)):
                await producer.publish("send_email", {"to": "a@b.c"}, **kwargs)
        await producer.publish("send_email", {"to": "a@b.c"}, job_id="still-fine")
    queued = [m.headers[HEADER_JOB_ID] for m in await drain(vhost_settings, "emails")]
    assert queued == ["still-fine"]


async def test_a_job_at_the_header_limit_can_be_dead_lettered_with_the_largest_record(
    vhost_settings: Settings,
) -> None:
    loaded = await declare(vhost_settings)
    settings = vhost_settings.with_overrides(max_header_bytes=MAX_HEADER_BYTES_LIMIT)
    padding = {"pad": "v" * (MAX_HEADER_BYTES_LIMIT - 13)}  # a 64 KiB table, exactly
    async with Producer(settings, loaded.topology) as producer:
        with pytest.raises(PayloadTooLargeError, match="the limit is 65536 bytes"):
            await producer.publish("send_email", {}, headers={"pad": padding["pad"] + "v"})
        await producer.publish("send_email", {}, job_id="é" * 127 + "a", headers=padding)
        [message] = await drain(vhost_settings, "emails")
        # What a worker does when it gives up: the original headers plus the record.
        wide = "\U0001f600"  # four bytes in UTF-8
        record = DeadLetterRecord(
            error_type="myapp.errors." + "E" * 240,
            error_message=wide * TEXT_LIMIT,
            traceback=wide * TRACEBACK_LIMIT,
            attempts=3,
            failed_at_ms=1,
            exchange="jobs",
            routing_key="email.send",
            queue="emails",
            worker_host="h" * 255,
            first_failed_at_ms=1,
            reason=wide * TEXT_LIMIT,
        )
        headers = build_dead_letter_headers(
            dict(message.headers), record, job_id=str(message.headers[HEADER_JOB_ID])
        )
        await producer.republish(
            message.body,
            headers,
            DEAD_LETTER_EXCHANGE,
            "emails.dead",
            kept=JobProperties("send_email", priority=3),
            kind="dead_letter",
        )
    [dead] = await drain(vhost_settings, "emails.dead")
    assert dead.headers["pad"] == padding["pad"]
    assert dead.headers[HEADER_ERROR_MESSAGE] == record.error_message
    assert dead.headers[HEADER_TRACEBACK] == record.traceback


async def test_publish_many_answers_every_request_in_order_when_job_50_has_a_bytes_header(
    vhost_settings: Settings,
) -> None:
    loaded = await declare(vhost_settings)
    requests = [JobRequest("audit_event", {"i": i}, job_id=f"j{i}") for i in range(100)]
    requests[50] = JobRequest("audit_event", {"i": 50}, job_id="j50", headers={"b": b"raw"})
    async with Producer(vhost_settings, loaded.topology) as producer:
        results = await producer.publish_many(requests, window=8)
    assert len(results) == 100
    assert isinstance(results[50], PayloadValidationError) and "'b'" in str(results[50])
    receipts = [r for r in results if isinstance(r, Receipt)]
    assert [r.job_id for r in receipts] == [f"j{i}" for i in range(100) if i != 50]
    queued = {m.headers[HEADER_JOB_ID] for m in await drain(vhost_settings, "audit")}
    assert queued == {r.job_id for r in receipts}


class Fussy(BaseModel):
    """A model whose own code fails on some input with an error pydantic does not wrap."""

    to: str

    @field_validator("to")
    @classmethod
    def _lookup(cls, value: str) -> str:
        return {"a@b.c": value}[value]  # KeyError for any other address


async def test_publish_many_reports_a_model_that_raises_as_that_jobs_error_only(
    vhost_settings: Settings,
) -> None:
    loaded = await declare(vhost_settings)
    requests = [JobRequest("send_email", {"to": "a@b.c"}, job_id=f"m{i}") for i in range(5)]
    requests[2] = JobRequest("send_email", {"to": "nobody@b.c"}, job_id="m2")
    async with Producer(vhost_settings, loaded.topology, models={"send_email": Fussy}) as p:
        results = await p.publish_many(requests)
        with pytest.raises(PayloadValidationError, match="KeyError"):
            await p.publish("send_email", {"to": "nobody@b.c"})
        with pytest.raises(ConfigError, match="window"):
            await p.publish_many(requests, window=0)
    assert [type(r).__name__ for r in results] == ["Receipt"] * 2 + ["PayloadValidationError"] + [
        "Receipt"
    ] * 2
    assert "KeyError" in str(results[2]) and "was not published" in str(results[2])
    assert len(await drain(vhost_settings, "emails")) == 4
