"""``jobsys.broker.direct_publish`` against the installed aiormq and a real broker: publishes
made in one loop turn go out as one write and each gets its own confirm, in order; a return,
a nack and a channel the broker closes reach exactly the publishes they concern; aiormq's own
``basic_publish`` on the same channel keeps the numbering right; a body past frame_max arrives
whole; a channel without confirms is left to aiormq."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote

import aiormq
import aiormq.exceptions
import pytest
from aiormq.abc import ChannelFrame, ConfirmationFrameType
from pamqp import commands as spec
from pamqp.heartbeat import Heartbeat

from jobsys.broker.connection import BrokerConnection
from jobsys.broker.direct_publish import DirectPublisher
from jobsys.errors import ConnectionFailed, JobsysError, PublishOutcomeUnknown
from jobsys.publish.producer import JobRequest, Producer, Receipt
from jobsys.settings import Settings
from jobsys.topology.model import Topology
from tests.harness.fault_proxy import FaultProxy


async def _confirm_channel(conn: BrokerConnection) -> aiormq.Channel:
    channel = await conn.amqp.channel(publisher_confirms=True, on_return_raises=True)
    assert isinstance(channel, aiormq.Channel)
    return channel


async def _direct(conn: BrokerConnection) -> tuple[aiormq.Channel, DirectPublisher]:
    """A confirm channel and its direct publisher (the installed aiormq has the shape)."""
    channel = await _confirm_channel(conn)
    publisher = DirectPublisher.for_channel(channel)
    assert publisher is not None
    return channel, publisher


def _send(
    publisher: DirectPublisher, body: bytes, routing_key: str, exchange: str = ""
) -> asyncio.Future[ConfirmationFrameType]:
    confirmation = publisher.publish(
        body,
        exchange=exchange,
        routing_key=routing_key,
        properties=spec.Basic.Properties(delivery_mode=2),
        mandatory=True,
    )
    assert confirmation is not None
    return confirmation


async def _bodies(channel: aiormq.Channel, queue: str, count: int) -> list[bytes]:
    got: list[bytes] = []
    for _ in range(count):
        message = await channel.basic_get(queue, no_ack=True)
        assert isinstance(message.delivery, spec.Basic.GetOk), f"only {len(got)} in {queue}"
        got.append(message.body)
    return got


async def test_a_loop_turns_publishes_go_out_as_one_write_and_each_is_confirmed_in_order(
    vhost_settings: Settings,
) -> None:
    async with BrokerConnection(vhost_settings) as conn:
        channel, publisher = await _direct(conn)
        await channel.queue_declare("dp.q", durable=True)
        queued_before = channel.write_queue.qsize()
        bodies = [f"job-{i}".encode() for i in range(500)]
        confirmations = [_send(publisher, body, "dp.q") for body in bodies]
        # Nothing was awaited: the 500 publishes wait for the writer as one item.
        assert channel.write_queue.qsize() == queued_before + 1
        # Each confirmation waits in the channel's future store and the connection's, as
        # aiormq's own: their reject_all fails it when either closes.
        assert all(len(store.futures) >= 500 for store in publisher._stores)
        frames = await asyncio.gather(*confirmations)
        assert all(isinstance(frame, spec.Basic.Ack) for frame in frames)
        assert not channel.confirmations and not channel.message_id_delivery_tag
        assert not any(set(confirmations) & store.futures for store in publisher._stores)
        assert await _bodies(channel, "dp.q", 500) == bodies


async def test_a_return_and_a_nack_reach_only_the_publishes_they_concern(
    vhost_settings: Settings,
) -> None:
    async with BrokerConnection(vhost_settings) as conn:
        channel, publisher = await _direct(conn)
        await channel.queue_declare(
            "dp.full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
        )
        await channel.queue_declare("dp.ok")
        sent = [
            _send(publisher, b"1", "dp.ok"),
            _send(publisher, b"2", "dp.nowhere"),  # unroutable: returned
            _send(publisher, b"3", "dp.full"),  # fits
            _send(publisher, b"4", "dp.full"),  # refused: nacked
            _send(publisher, b"5", "dp.ok"),
        ]
        results: list[Any] = await asyncio.gather(*sent, return_exceptions=True)
        assert isinstance(results[0], spec.Basic.Ack)
        assert isinstance(results[1], aiormq.exceptions.PublishError)
        assert isinstance(results[2], spec.Basic.Ack)
        assert isinstance(results[3], aiormq.exceptions.DeliveryError)
        assert not isinstance(results[3], aiormq.exceptions.PublishError)
        assert isinstance(results[4], spec.Basic.Ack)
        assert await _bodies(channel, "dp.ok", 2) == [b"1", b"5"]


@pytest.mark.parametrize("aiormq_runs_first", [True, False])
async def test_aiormqs_own_publishes_between_direct_ones_keep_the_numbering_right(
    vhost_settings: Settings, aiormq_runs_first: bool
) -> None:
    async with BrokerConnection(vhost_settings) as conn:
        channel, publisher = await _direct(conn)
        await channel.queue_declare("dp.mixed")
        first = _send(publisher, b"d1", "dp.mixed")
        by_aiormq = asyncio.ensure_future(
            channel.basic_publish(b"a1", routing_key="dp.nowhere", mandatory=True, wait=False)
        )
        if aiormq_runs_first:
            # aiormq numbers and queues its publish now: the next direct one is numbered after
            # it and queued behind it.
            await asyncio.sleep(0)
        # Else the direct one is numbered and queued before aiormq's, which has not run yet.
        second = _send(publisher, b"d2", "dp.mixed")
        assert isinstance(await first, spec.Basic.Ack)
        with pytest.raises(aiormq.exceptions.PublishError):
            await by_aiormq  # its return is matched to it, not to a neighbour
        assert isinstance(await second, spec.Basic.Ack)
        assert await _bodies(channel, "dp.mixed", 2) == [b"d1", b"d2"]


async def test_while_aiormq_holds_the_channel_lock_the_publish_is_left_to_aiormq(
    vhost_settings: Settings,
) -> None:
    async with BrokerConnection(vhost_settings) as conn:
        channel, publisher = await _direct(conn)
        tag = channel.delivery_tag
        async with channel.lock:
            queued = publisher.publish(
                b"x",
                exchange="",
                routing_key="dp.any",
                properties=spec.Basic.Properties(),
                mandatory=False,
            )
        assert queued is None and channel.delivery_tag == tag, "nothing was numbered or queued"


async def test_with_the_write_queue_full_the_publish_is_left_to_aiormq_which_waits_for_room(
    vhost_settings: Settings,
) -> None:
    async with BrokerConnection(vhost_settings) as conn:
        channel, publisher = await _direct(conn)
        await channel.queue_declare("dp.room")
        # Heartbeats are frames the broker accepts anywhere: they fill the writer's queue.
        heartbeat = ChannelFrame.marshall(0, [Heartbeat()])
        while not channel.write_queue.full():
            channel.write_queue.put_nowait(heartbeat)
        tag = channel.delivery_tag
        properties = spec.Basic.Properties()
        left = publisher.publish(
            b"x", exchange="", routing_key="dp.room", properties=properties, mandatory=True
        )
        assert left is None and channel.delivery_tag == tag, "nothing was numbered or queued"
        confirm = await channel.basic_publish(b"x", routing_key="dp.room", mandatory=True)
        assert isinstance(confirm, spec.Basic.Ack)
        # The queue drained: the next publish is direct again.
        assert isinstance(await _send(publisher, b"y", "dp.room"), spec.Basic.Ack)
        assert await _bodies(channel, "dp.room", 2) == [b"x", b"y"]


async def test_a_channel_the_broker_closes_fails_every_publish_awaiting_its_confirm(
    vhost_settings: Settings,
) -> None:
    async with BrokerConnection(vhost_settings) as conn:
        channel, publisher = await _direct(conn)
        await channel.queue_declare("dp.q2")
        sent = [_send(publisher, b"1", "dp.q2"), _send(publisher, b"2", "x", "dp.no-exchange")]
        sent += [_send(publisher, b"3", "dp.q2")]
        results = await asyncio.gather(*sent, return_exceptions=True)
        # The broker closes the channel for the second (404). The first may have been
        # confirmed before; if not, it is failed with the close like the rest (its outcome is
        # unknown to the publisher): none is left waiting, none is acked after the close.
        closed = aiormq.exceptions.ChannelNotFoundEntity
        assert isinstance(results[0], spec.Basic.Ack | closed)
        assert all(isinstance(r, closed) for r in results[1:])
        with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
            _send(publisher, b"4", "dp.q2")


async def test_a_connection_closed_under_pending_confirms_fails_each_of_them(
    vhost_settings: Settings,
) -> None:
    async with BrokerConnection(vhost_settings) as conn:
        channel, publisher = await _direct(conn)
        await channel.queue_declare("dp.q3")
        sent = [_send(publisher, f"{i}".encode(), "dp.q3") for i in range(200)]
        await channel.connection.close()
        # None is left waiting (the connection's store failed what was not confirmed yet), and
        # none stays in a store once done.
        results = await asyncio.wait_for(asyncio.gather(*sent, return_exceptions=True), 10)
        failed = [r for r in results if not isinstance(r, spec.Basic.Ack)]
        assert failed and all(isinstance(r, BaseException) for r in failed)
        assert not any(set(sent) & store.futures for store in publisher._stores)


async def test_a_body_past_frame_max_arrives_whole(vhost_settings: Settings) -> None:
    async with BrokerConnection(vhost_settings) as conn:
        channel, publisher = await _direct(conn)
        await channel.queue_declare("dp.big")
        bodies = [b"", b"a" * (channel.max_content_size + 1), bytes(range(256)) * 1200]
        frames = await asyncio.gather(*(_send(publisher, body, "dp.big") for body in bodies))
        assert all(isinstance(frame, spec.Basic.Ack) for frame in frames)
        assert await _bodies(channel, "dp.big", 3) == bodies


async def test_a_channel_without_confirms_is_left_to_aiormq(vhost_settings: Settings) -> None:
    async with BrokerConnection(vhost_settings) as conn:
        plain = await conn.amqp.channel(publisher_confirms=False)
        assert isinstance(plain, aiormq.Channel)
        assert DirectPublisher.for_channel(plain) is None


async def test_a_dropped_connection_under_a_wide_window_reopens_one_channel_not_one_per_publish(
    vhost_settings: Settings, fault_proxy: FaultProxy
) -> None:
    # Every publish in flight fails in the same loop turn when the connection drops. Each
    # opening a channel of its own ran the new connection out of channels (2047 here), and the
    # broker closed it again: a storm of reconnects from one reset.
    topology = Topology.model_validate(
        {
            "version": 1,
            "exchanges": {"dp.x": {"type": "direct"}},
            "queues": {"dp.wide": {"type": "classic"}},
            "bindings": [{"exchange": "dp.x", "queue": "dp.wide", "routing_key": "k"}],
            "job_types": {"t": {"exchange": "dp.x", "routing_key": "k"}},
        }
    )
    async with BrokerConnection(vhost_settings) as conn:
        channel = await conn.amqp.channel()
        await channel.exchange_declare("dp.x", exchange_type="direct", durable=True)
        await channel.queue_declare("dp.wide", durable=True)
        await channel.queue_bind("dp.wide", "dp.x", routing_key="k")
    proxied = vhost_settings.with_overrides(
        url=fault_proxy.url(vhost=quote(vhost_settings.vhost, safe="")), publish_timeout_s=30.0
    )
    reset = False

    def on_result(index: int, result: object) -> None:
        nonlocal reset
        if index >= 1500 and not reset:
            reset = True
            fault_proxy.reset_connections()

    async with Producer(proxied, topology) as producer:
        results = await producer.publish_many(
            [JobRequest("t", {"i": i}, job_id=f"job-{i:05d}") for i in range(6000)],
            window=2048,
            on_result=on_result,
        )
        assert reset
        open_channels = [c for c in producer.connection.amqp.channels.values() if c is not None]
        # The robust channel's own, and at most a fresh one for the moved connection.
        assert len(open_channels) <= 3, len(open_channels)
    receipts = {r.job_id for r in results if isinstance(r, Receipt)}
    errors = [r for r in results if not isinstance(r, Receipt)]
    assert all(isinstance(e, PublishOutcomeUnknown | ConnectionFailed) for e in errors), {
        type(e).__name__ for e in errors
    }
    assert len(errors) <= 2048, "more failed than were in flight at the reset"
    queued = await _queued_job_ids(vhost_settings, "dp.wide")
    assert receipts <= queued, "a job reported confirmed is not in the queue"


async def _queued_job_ids(settings: Settings, queue: str) -> set[str]:
    found: set[str] = set()
    async with BrokerConnection(settings) as conn:
        channel = await conn.amqp.channel()
        while True:
            message = await channel.basic_get(queue, no_ack=True)
            if not isinstance(message.delivery, spec.Basic.GetOk):
                return found
            found.add(str((message.header.properties.headers or {})["jobsys-job-id"]))


async def _with_a_missing_exchange(settings: Settings, queue: str) -> Topology:
    """A topology with job type ``good`` routed to ``queue`` (declared on the broker) and job
    type ``bad`` routed through exchange ``dp.gone``, which the broker does not have (404)."""
    topology = Topology.model_validate(
        {
            "version": 1,
            "exchanges": {"dp.x": {"type": "direct"}, "dp.gone": {"type": "direct"}},
            "queues": {queue: {"type": "classic"}},
            "bindings": [{"exchange": "dp.x", "queue": queue, "routing_key": "k"}],
            "job_types": {
                "good": {"exchange": "dp.x", "routing_key": "k"},
                "bad": {"exchange": "dp.gone", "routing_key": "k"},
            },
        }
    )
    async with BrokerConnection(settings) as conn:
        channel = await conn.amqp.channel()
        await channel.exchange_declare("dp.x", exchange_type="direct", durable=True)
        await channel.queue_declare(queue, durable=True)
        await channel.queue_bind(queue, "dp.x", routing_key="k")
    return topology


async def test_after_a_publish_to_a_missing_exchange_no_queued_job_is_called_not_published(
    vhost_settings: Settings,
) -> None:
    # The broker closes the channel (404) for the publish to the missing exchange; aiormq fails
    # every confirm pending on it alike, though some of those jobs were queued before the close.
    topology = await _with_a_missing_exchange(vhost_settings, "dp.mixed404")
    requests = [JobRequest("good", {"i": i}, job_id=f"good-{i:03d}") for i in range(300)]
    requests.insert(150, JobRequest("bad", {}, job_id="bad-000"))
    async with Producer(vhost_settings, topology) as producer:
        results = await producer.publish_many(requests, window=400)
    said_not_published = {
        request.job_id
        for request, result in zip(requests, results, strict=True)
        if isinstance(result, JobsysError) and "was not published" in str(result)
    }
    queued = await _queued_job_ids(vhost_settings, "dp.mixed404")
    assert not said_not_published & queued, sorted(map(str, said_not_published & queued))[:5]
    receipts = {r.job_id for r in results if isinstance(r, Receipt)}
    assert receipts <= queued
    assert "bad-000" not in queued


async def test_a_publish_to_a_missing_exchange_never_closes_the_connection_of_other_publishes(
    vhost_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # The broker closes the channel (404) and aiormq queues its CloseOk; a publish written after
    # that made the broker close the whole connection (504 CHANNEL_ERROR - expected
    # 'channel.open'), failing every publish in flight on it: 10 of 30 such rounds did before.
    topology = await _with_a_missing_exchange(vhost_settings, "dp.two404")
    caplog.set_level(logging.WARNING)
    receipts: set[str] = set()
    async with Producer(vhost_settings, topology) as producer:
        for round_no in range(10):
            mixed = [JobRequest("good", {}, job_id=f"m{round_no}-{i}") for i in range(300)]
            mixed.insert(150, JobRequest("bad", {}, job_id=f"bad-{round_no}"))
            other = [JobRequest("good", {}, job_id=f"o{round_no}-{i}") for i in range(300)]
            results = await asyncio.gather(
                producer.publish_many(mixed, window=400), producer.publish_many(other, window=400)
            )
            for result in [*results[0], *results[1]]:
                if isinstance(result, Receipt):
                    receipts.add(result.job_id)
                else:
                    assert isinstance(result, PublishOutcomeUnknown | ConnectionFailed), result
                    assert not isinstance(result, ConnectionFailed) or (
                        "was not published" in str(result)
                    )
    lost = [r.getMessage() for r in caplog.records if "CHANNEL_ERROR" in r.getMessage()]
    assert lost == []
    assert not any(job_id.startswith("bad-") for job_id in receipts)
    assert receipts <= await _queued_job_ids(vhost_settings, "dp.two404")
