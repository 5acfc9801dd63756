"""Hostile input on the publish path against the real broker: a job goes where its job type
says and nowhere else, and every refusal is a typed error that says whether the job is queued."""

from __future__ import annotations

import aio_pika
import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.errors import MessageRefusedError, PayloadValidationError
from jobsys.ops import dlq
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.model import DEAD_LETTER_EXCHANGE
from jobsys.wire.envelope import JobProperties
from jobsys.wire.headers import HEADER_JOB_ID
from tests.apps.publishing import declare, drain


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
