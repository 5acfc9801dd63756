"""Publishing against the real broker: receipts only for confirmed, routed jobs; one typed
error for each way a publish goes wrong."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.errors import (
    AccessRefused,
    BrokerBlockedError,
    PayloadTooLargeError,
    PayloadValidationError,
    PublishOutcomeUnknown,
    QueueFullError,
    UnknownJobTypeError,
    UnroutableError,
)
from jobsys.publish.producer import JobRequest, Producer, Receipt
from jobsys.settings import Settings
from jobsys.wire.envelope import JobProperties
from jobsys.wire.headers import HEADER_ATTEMPT, HEADER_JOB_ID, Origin, retry_headers
from tests.apps.publishing import Email, declare, drain, wait_for_messages
from tests.conftest import settings_for_vhost
from tests.harness.fault_proxy import FaultProxy
from tests.harness.fixtures import node_settings
from tests.harness.rabbit_node import RabbitNode


@pytest.fixture
async def producer(vhost_settings: Settings) -> AsyncIterator[Producer]:
    loaded = await declare(vhost_settings)
    async with Producer(vhost_settings, loaded.topology, models={"send_email": Email}) as p:
        yield p


async def test_a_receipt_means_the_job_is_in_its_queue_persistent_and_described(
    producer: Producer, vhost_settings: Settings
) -> None:
    receipt = await producer.publish("send_email", {"to": "a@example.com"}, job_id="job-1")
    assert receipt == Receipt("job-1", "send_email", "jobs", "email.send", receipt.message_id, None)
    [message] = await drain(vhost_settings, "emails")
    assert json.loads(message.body) == {"to": "a@example.com"}
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.type == "send_email"
    assert message.content_type == "application/json"
    assert message.content_encoding == "utf-8"
    assert message.message_id == receipt.message_id
    assert message.priority == 3
    assert message.timestamp is not None
    assert message.headers[HEADER_JOB_ID] == "job-1"
    assert message.headers[HEADER_ATTEMPT] == 1


async def test_each_publish_attempt_gets_its_own_message_id_under_one_job_id(
    producer: Producer, vhost_settings: Settings
) -> None:
    first = await producer.publish("send_email", {"to": "a@b.c"}, job_id="same")
    second = await producer.publish("send_email", {"to": "a@b.c"}, job_id="same")
    assert first.message_id != second.message_id
    messages = await drain(vhost_settings, "emails")
    assert [m.headers[HEADER_JOB_ID] for m in messages] == ["same", "same"]


async def test_unknown_job_type_invalid_payload_and_bad_header_are_refused_before_any_io(
    vhost_settings: Settings,
) -> None:
    loaded = await declare(vhost_settings)
    # Never opened: these errors cannot have come from the broker.
    producer = Producer(vhost_settings, loaded.topology, models={"send_email": Email})
    with pytest.raises(UnknownJobTypeError, match="audit_event, send_email, squeeze"):
        await producer.publish("send_fax", {})
    with pytest.raises(PayloadValidationError, match="to: Field required"):
        await producer.publish("send_email", {"too": "a@b.c"})
    with pytest.raises(PayloadValidationError, match="reserved"):
        await producer.publish("audit_event", {}, headers={"x-death": []})


async def test_a_too_large_payload_is_refused_and_the_producer_keeps_publishing(
    vhost_settings: Settings,
) -> None:
    loaded = await declare(vhost_settings)
    settings = vhost_settings.with_overrides(max_payload_bytes=1000)
    async with Producer(settings, loaded.topology) as producer:
        with pytest.raises(PayloadTooLargeError, match="limit is 1000 bytes"):
            await producer.publish("audit_event", {"blob": "x" * 5000})
        receipt = await producer.publish("audit_event", {"small": True})
    assert len(await drain(vhost_settings, "audit")) == 1
    assert receipt.job_type == "audit_event"


async def test_a_job_type_whose_binding_was_removed_is_unroutable_never_a_success(
    producer: Producer, vhost_settings: Settings
) -> None:
    connection = await aio_pika.connect(vhost_settings.url)
    channel = await connection.channel()
    queue = await channel.get_queue("emails", ensure=False)
    await queue.unbind("jobs", "email.#")
    await connection.close()
    with pytest.raises(UnroutableError) as info:
        await producer.publish("send_email", {"to": "a@b.c"}, job_id="lost-1")
    assert info.value.job_id == "lost-1"
    assert "no binding on exchange 'jobs' matched routing key 'email.send'" in str(info.value)
    # The channel survives a return: the next job of a routable type is confirmed.
    await producer.publish("audit_event", {})
    assert len(await drain(vhost_settings, "audit")) == 1


async def test_a_full_queue_refusing_publishes_says_which_queue_is_full(
    producer: Producer, vhost_settings: Settings
) -> None:
    await producer.publish("squeeze", {"n": 1})
    await producer.publish("squeeze", {"n": 2})
    with pytest.raises(QueueFullError, match="queue tiny is full") as info:
        await producer.publish("squeeze", {"n": 3}, job_id="third")
    assert info.value.job_id == "third"
    assert [json.loads(m.body)["n"] for m in await drain(vhost_settings, "tiny")] == [1, 2]
    # Under reject-publish-dlx the broker keeps the refused copy, and the error says where.
    assert "copy in tiny.dead" in str(info.value)
    assert [json.loads(m.body)["n"] for m in await drain(vhost_settings, "tiny.dead")] == [3]


async def test_publish_many_reports_each_job_and_every_receipt_is_in_the_queue(
    producer: Producer, vhost_settings: Settings
) -> None:
    requests = [JobRequest("audit_event", {"i": i}, job_id=f"a-{i}") for i in range(1500)]
    requests.insert(10, JobRequest("send_email", {"nope": 1}))
    requests.insert(20, JobRequest("no_such_type", {}))
    results = await producer.publish_many(requests, window=64)
    assert len(results) == len(requests)
    assert isinstance(results[10], PayloadValidationError)
    assert isinstance(results[20], UnknownJobTypeError)
    receipts = [r for r in results if isinstance(r, Receipt)]
    assert len(receipts) == 1500
    queued = {m.headers[HEADER_JOB_ID] for m in await drain(vhost_settings, "audit")}
    assert queued == {r.job_id for r in receipts}


async def test_publish_many_reports_a_full_queue_per_job(
    producer: Producer, vhost_settings: Settings
) -> None:
    results = await producer.publish_many(
        [JobRequest("squeeze", {"n": n}) for n in range(5)], window=1
    )
    assert [type(r).__name__ for r in results] == ["Receipt"] * 2 + ["QueueFullError"] * 3


async def test_thousands_of_refusals_from_a_full_queue_never_exhaust_the_connection(
    producer: Producer, vhost_settings: Settings
) -> None:
    # After a nack jobsys publishes on a new channel (a quorum queue whose leader died nacks a
    # channel for minutes); one new channel per refusal must not run the connection out of
    # channels (channel_max 2047) when a queue is simply full.
    results = await producer.publish_many(
        [JobRequest("squeeze", {"n": n}) for n in range(2600)], window=1
    )
    assert [type(r).__name__ for r in results[:3]] == ["Receipt", "Receipt", "QueueFullError"]
    assert {type(r).__name__ for r in results[2:]} == {"QueueFullError"}
    await producer.publish("audit_event", {})  # the connection is still there
    assert len(await drain(vhost_settings, "audit")) == 1


async def test_a_delayed_job_waits_in_the_broker_then_reaches_its_queue(
    producer: Producer, vhost_settings: Settings
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    receipt = await producer.publish("send_email", {"to": "later@b.c"}, delay_s=2)
    assert receipt.delay_s == 2.0
    assert receipt.exchange.startswith("jobsys.wait.")
    assert await drain(vhost_settings, "emails") == []
    [message] = await wait_for_messages(vhost_settings, "emails", 1)
    assert loop.time() - started >= 1.9
    assert message.headers[HEADER_JOB_ID] == receipt.job_id
    assert message.type == "send_email"


async def test_a_delayed_job_that_fans_out_reaches_every_queue_once(
    producer: Producer, vhost_settings: Settings
) -> None:
    receipt = await producer.publish("audit_event", {"e": 1}, delay_s=1)
    for queue in ("audit", "archive"):
        [message] = await wait_for_messages(vhost_settings, queue, 1)
        assert message.headers[HEADER_JOB_ID] == receipt.job_id


async def test_republish_sends_the_body_and_headers_as_given_and_keeps_the_properties(
    producer: Producer, vhost_settings: Settings
) -> None:
    headers = retry_headers(
        {"tenant": "acme", "x-death": [], "x-first-death-queue": "emails", HEADER_JOB_ID: "r-1"},
        job_id="r-1",
        attempt=2,
        origin=Origin("jobs", "email.send"),
        first_failed_at_ms=1_700_000_000_000,
    )
    kept = JobProperties(
        "send_email",
        priority=3,
        content_type="text/plain",
        correlation_id="corr-7",
        reply_to="amq.rabbitmq.reply-to.abc",
    )
    receipt = await producer.republish(
        b"raw bytes, sent as they are", headers, "jobs", "email.send", kept=kept, kind="retry"
    )
    assert receipt.job_id == "r-1"
    [message] = await drain(vhost_settings, "emails")
    assert message.body == b"raw bytes, sent as they are"
    assert message.headers[HEADER_ATTEMPT] == 2
    assert message.headers["tenant"] == "acme"
    assert not any(name.startswith("x-") for name in message.headers)
    assert (message.type, message.priority, message.content_type) == ("send_email", 3, "text/plain")
    assert (message.correlation_id, message.reply_to) == ("corr-7", "amq.rabbitmq.reply-to.abc")
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == receipt.message_id
    with pytest.raises(UnroutableError):
        await producer.republish(b"{}", headers, "jobs", "nowhere", kept=kept, kind="retry")


async def test_a_producer_on_a_shared_connection_leaves_it_open(vhost_settings: Settings) -> None:
    loaded = await declare(vhost_settings)
    async with BrokerConnection(vhost_settings) as conn:
        async with Producer(vhost_settings, loaded.topology, connection=conn) as producer:
            await producer.publish("audit_event", {})
        assert not conn.connection.is_closed
        async with Producer(vhost_settings, loaded.topology, connection=conn) as again:
            await again.publish("audit_event", {})
    assert len(await drain(vhost_settings, "audit")) == 2


async def test_a_cancelled_publish_raises_cancelled_not_outcome_unknown(
    producer: Producer,
) -> None:
    task = asyncio.create_task(producer.publish("audit_event", {}))
    await asyncio.sleep(0)  # the frame is queued; the confirm is a round trip away
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_wrong_credentials_and_a_missing_vhost_are_fatal_and_clear(
    vhost_settings: Settings,
) -> None:
    loaded = await declare(vhost_settings)
    wrong_password = vhost_settings.with_overrides(
        url=vhost_settings.url.replace("guest:guest", "guest:wrong"), connect_deadline_s=20.0
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(AccessRefused, match="wrong username or password") as info:
        await Producer(wrong_password, loaded.topology).open()
    assert "wrong" not in str(info.value).replace("wrong username", "")
    assert loop.time() - started < 10  # fatal: no reconnect loop until the deadline
    missing = Settings(url="amqp://guest:guest@127.0.0.1:5672/jobsys-no-such-vhost")
    with pytest.raises(AccessRefused, match="jobsys-no-such-vhost"):
        await Producer(missing, loaded.topology).open()


async def test_connection_lost_before_the_confirm_is_outcome_unknown_and_it_reconnects(
    vhost_settings: Settings, fault_proxy: FaultProxy
) -> None:
    loaded = await declare(vhost_settings)
    settings = vhost_settings.with_overrides(
        url=fault_proxy.url(vhost=vhost_settings.vhost), publish_timeout_s=20.0
    )
    async with Producer(settings, loaded.topology) as producer:
        # Hold every frame back so the confirms cannot arrive before the reset.
        fault_proxy.set_latency(200)
        pending = asyncio.create_task(
            producer.publish_many(
                [JobRequest("audit_event", {"i": i}, job_id=f"j{i}") for i in range(50)]
            )
        )
        await asyncio.sleep(0.05)
        fault_proxy.set_mode("reset")
        results = await pending
        fault_proxy.set_latency(0)
        fault_proxy.set_mode("pass")
        unknown = [r for r in results if isinstance(r, PublishOutcomeUnknown)]
        assert unknown, results
        assert all(isinstance(r, Receipt | PublishOutcomeUnknown) for r in results), results
        assert "publishing it again with the same job id may queue a second copy" in str(unknown[0])
        assert unknown[0].job_id is not None
        # The robust connection comes back and the producer publishes again.
        receipt = await producer.publish("audit_event", {"after": True})
    queued = {m.headers[HEADER_JOB_ID] for m in await drain(vhost_settings, "audit")}
    confirmed = {r.job_id for r in results if isinstance(r, Receipt)}
    assert confirmed <= queued
    assert receipt.job_id in queued


@pytest.fixture
def own_vhost_settings(running_own_broker: RabbitNode) -> Iterator[Settings]:
    """A fresh vhost on the test-owned node (never the shared broker), for faults."""
    name = f"jobsys-test-{uuid.uuid4().hex[:10]}"
    running_own_broker.ctl("add_vhost", name)
    running_own_broker.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield settings_for_vhost(node_settings(running_own_broker), name)
    finally:
        if running_own_broker.is_running():
            running_own_broker.ctl("delete_vhost", name)


async def test_a_broker_blocked_by_a_memory_alarm_times_out_with_that_reason_never_hangs(
    own_vhost_settings: Settings, running_own_broker: RabbitNode
) -> None:
    loaded = await declare(own_vhost_settings)
    settings = own_vhost_settings.with_overrides(publish_timeout_s=3.0)
    async with Producer(settings, loaded.topology) as producer:
        before = await producer.publish("audit_event", {"before": True})
        await asyncio.to_thread(running_own_broker.set_memory_alarm, True)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(BrokerBlockedError, match="memory or disk alarm") as info:
                await producer.publish("audit_event", {"during": True}, job_id="blocked-1")
            assert loop.time() - started < 3.0 + 2.0
            assert info.value.job_id == "blocked-1"
            # RabbitMQ blocks a connection when it next publishes; from then on the producer
            # knows and holds jobs back, so the error can say they were not sent.
            with pytest.raises(BrokerBlockedError, match="was not published"):
                await producer.publish("audit_event", {"during": True}, job_id="blocked-2")
        finally:
            await asyncio.to_thread(running_own_broker.set_memory_alarm, False)
        # Once the alarm clears the same producer publishes again.
        receipt = await producer.publish("audit_event", {"after": True}, job_id="after-1")
    queued = [m.headers[HEADER_JOB_ID] for m in await drain(own_vhost_settings, "audit")]
    assert "blocked-2" not in queued
    assert queued[0] == before.job_id
    assert queued[-1] == receipt.job_id


async def test_the_first_connect_retries_a_broker_that_is_not_up_yet_until_it_is(
    vhost_settings: Settings, fault_proxy: FaultProxy
) -> None:
    loaded = await declare(vhost_settings)
    settings = vhost_settings.with_overrides(
        url=fault_proxy.url(vhost=vhost_settings.vhost), connect_deadline_s=30.0
    )
    fault_proxy.set_mode("reset")  # the broker "refuses" connections for now
    opening = asyncio.create_task(Producer(settings, loaded.topology).open())
    await asyncio.to_thread(fault_proxy.wait_for_connections, 1)
    assert not opening.done()
    fault_proxy.set_mode("pass")
    producer = await asyncio.wait_for(opening, timeout=20)
    try:
        await producer.publish("audit_event", {})
    finally:
        await producer.close()
