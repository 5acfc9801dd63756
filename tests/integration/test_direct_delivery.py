"""``jobsys.broker.direct_delivery`` against the installed aiormq and a real broker: a consumer
served directly gets every delivery whole, in order, in the reader's turn (no task of its
own), while other consumer tags on the channel go aiormq's way; a consumer that raises does
not stop the channel; a channel without aiormq's private reader is left alone."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiormq
import pytest
from aiormq.abc import DeliveredMessage

from jobsys.broker.connection import BrokerConnection
from jobsys.broker.direct_delivery import deliver_directly
from jobsys.settings import Settings
from tests.harness.worker_subprocess import wait_until


async def _publish(channel: aiormq.abc.AbstractChannel, queue: str, bodies: list[bytes]) -> None:
    for body in bodies:
        await channel.basic_publish(body, routing_key=queue)


async def test_a_direct_consumer_gets_each_delivery_whole_in_order_and_without_a_task(
    vhost_settings: Settings,
) -> None:
    async with BrokerConnection(vhost_settings) as conn:
        channel = await conn.amqp.channel()
        assert isinstance(channel, aiormq.Channel)
        await channel.queue_declare("direct.q")
        await channel.queue_declare("usual.q")
        got: list[tuple[bytes, bool]] = []
        usual: list[bytes] = []

        def direct(message: DeliveredMessage) -> None:
            # In the reader's turn: the current task is the channel's reader, not a task of
            # the delivery's own.
            task = asyncio.current_task()
            got.append((message.body, task is not None and "reader" in repr(task.get_coro())))

        async def by_task(message: DeliveredMessage) -> None:
            usual.append(message.body)

        async def never(message: DeliveredMessage) -> None:
            raise AssertionError("the aiormq callback of a direct consumer ran")

        assert deliver_directly(channel, "direct-tag", direct) is True
        await channel.basic_consume("direct.q", never, consumer_tag="direct-tag", no_ack=True)
        await channel.basic_consume("usual.q", by_task, consumer_tag="usual-tag", no_ack=True)
        bodies = [b"x" * size for size in (0, 1, 5000, 200_000)] + [b"last"]
        await _publish(channel, "direct.q", bodies)
        await _publish(channel, "usual.q", [b"u1", b"u2"])

        await wait_until(lambda: len(got) == len(bodies) and len(usual) == 2, what="deliveries")
        assert [body for body, _ in got] == bodies  # a 200 kB body spans several frames
        assert all(in_reader for _, in_reader in got)
        assert usual == [b"u1", b"u2"]


async def test_a_direct_consumer_that_raises_is_logged_and_the_channel_goes_on(
    vhost_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with BrokerConnection(vhost_settings) as conn:
        channel = await conn.amqp.channel()
        assert isinstance(channel, aiormq.Channel)
        await channel.queue_declare("direct.q")
        got: list[bytes] = []

        def fragile(message: DeliveredMessage) -> None:
            if message.body == b"bad":
                raise RuntimeError("consumer bug")
            got.append(message.body)

        async def never(message: DeliveredMessage) -> None:
            raise AssertionError("the aiormq callback of a direct consumer ran")

        deliver_directly(channel, "tag", fragile)
        await channel.basic_consume("direct.q", never, consumer_tag="tag", no_ack=True)
        with caplog.at_level(logging.ERROR, logger="jobsys.broker.direct_delivery"):
            await _publish(channel, "direct.q", [b"one", b"bad", b"two"])
            await wait_until(lambda: got == [b"one", b"two"], what="the two good ones")
        assert "the consumer of tag failed on a delivery" in caplog.text
        assert not channel.is_closed


def test_a_channel_without_aiormqs_private_reader_is_left_alone() -> None:
    class OtherChannel:
        async def _on_deliver_frame(self, frame: object) -> None:
            return None

    channel: Any = OtherChannel()
    original = channel._on_deliver_frame
    assert deliver_directly(channel, "tag", lambda message: None) is False
    assert channel._on_deliver_frame == original
