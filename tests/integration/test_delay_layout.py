"""The delay layout on a real broker: changing ``delays.max_delay``, or two topology files with
different ones in one vhost, never duplicates or hurries a delayed job; the layout from before
the level count was fixed keeps delivering what it holds, and is retired once empty; apps in one
vhost with their own namespaces cannot reach each other's queues through the delay levels."""

from __future__ import annotations

import asyncio
import time

import aio_pika
import aiormq
import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology
from jobsys.ops.delays import LegacyLevelsBusy, retire_legacy_levels
from jobsys.ops.status import legacy_waiting
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.delays import LEGACY_DELIVERY_EXCHANGE, legacy_level_name, level_ttl_ms
from jobsys.topology.loader import LoadedTopology, load_topology_text
from jobsys.wire.headers import HEADER_JOB_ID

pytestmark = pytest.mark.timeout(120)

QUEUE = "dl.work"


def topology(
    max_delay: str = "30d", namespace: str | None = None, queue: str = QUEUE
) -> LoadedTopology:
    ns = f"namespace: {namespace}\n" if namespace else ""
    return load_topology_text(
        f"""\
version: 1
{ns}exchanges:
  {queue}.jobs: {{type: direct}}
queues:
  {queue}: {{type: classic}}
bindings:
  - {{exchange: {queue}.jobs, queue: {queue}, routing_key: job}}
job_types:
  tick: {{exchange: {queue}.jobs, routing_key: job}}
delays: {{max_delay: {max_delay}}}
""",
        f"{max_delay}.yaml",
    )


class Arrivals:
    """Every job reaching a queue, with when (wall clock) and how often."""

    def __init__(self) -> None:
        self.seen: dict[str, list[float]] = {}
        self.changed = asyncio.Event()

    async def consume(self, connection: BrokerConnection, queue: str = QUEUE) -> None:
        channel = await connection.channel(confirms=False, prefetch=100)
        declared = await channel.get_queue(queue, ensure=False)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            job_id = str((message.headers or {})[HEADER_JOB_ID])
            self.seen.setdefault(job_id, []).append(time.time())
            self.changed.set()
            await message.ack()

        await declared.consume(on_message)

    async def wait_for(self, job_ids: set[str], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not job_ids <= set(self.seen):
                self.changed.clear()
                await self.changed.wait()


def _on_time(arrived: float, sent: float, delay_s: float) -> bool:
    # The levels are timed by the broker's clock, which may run up to 1 % fast (the worker
    # holds an early job until it is due; here nothing does); late by at most 1 s + 10 %.
    return delay_s * 0.99 <= arrived - sent <= delay_s + 1.0 + 0.1 * delay_s


async def test_jobs_delayed_before_during_and_after_a_max_delay_change_arrive_once_on_time(
    vhost_settings: Settings,
) -> None:
    short, long = topology("30d"), topology("60d")
    sent: dict[str, tuple[float, float]] = {}
    arrivals = Arrivals()
    async with BrokerConnection(vhost_settings) as connection:
        await apply_topology(connection, short, use_management=False)
        await arrivals.consume(connection)
        async with Producer(vhost_settings, short, connection=connection) as producer:
            sent["before"] = (time.time(), 4.0)
            await producer.publish("tick", {}, delay_s=4, job_id="before")
        # The other file, with another max_delay, in the same vhost: nothing to change.
        changed = await apply_topology(connection, long, use_management=False)
        assert changed.created == ()
        async with Producer(vhost_settings, long, connection=connection) as producer:
            sent["during"] = (time.time(), 3.0)
            await producer.publish("tick", {}, delay_s=3, job_id="during")
            sent["long"] = (time.time(), 5.0)
            await producer.publish("tick", {}, delay_s=5, job_id="long")
        async with Producer(vhost_settings, short, connection=connection) as producer:
            sent["after"] = (time.time(), 2.0)
            await producer.publish("tick", {}, delay_s=2, job_id="after")
        await arrivals.wait_for(set(sent), timeout_s=15)
        await asyncio.sleep(2)  # room for a duplicate, were there one
    assert {job_id: len(times) for job_id, times in arrivals.seen.items()} == dict.fromkeys(sent, 1)
    for job_id, (at, delay_s) in sent.items():
        assert _on_time(arrivals.seen[job_id][0], at, delay_s), (
            job_id,
            arrivals.seen[job_id][0] - at,
        )


# -- the layout before the level count was fixed -------------------------------------------------

LEGACY_LEVELS = 22  # what max_delay: 30d made


async def declare_legacy_layout(settings: Settings, queue: str = QUEUE) -> None:
    """The delay levels as jobsys declared them before: jobsys.delay.NN, 22 of them for 30 days,
    binding keys sized by that count, delivering through jobsys.delivery."""
    connection = await aiormq.connect(settings.url)
    try:
        channel = await connection.channel()
        await channel.exchange_declare(
            LEGACY_DELIVERY_EXCHANGE, exchange_type="topic", durable=True
        )
        for level in range(LEGACY_LEVELS):
            name = legacy_level_name(level)
            after = LEGACY_DELIVERY_EXCHANGE if level == 0 else legacy_level_name(level - 1)
            await channel.exchange_declare(name, exchange_type="topic", durable=True)
            await channel.queue_declare(
                name,
                durable=True,
                arguments={
                    "x-queue-type": "classic",
                    "x-message-ttl": level_ttl_ms(level),
                    "x-dead-letter-exchange": after,
                },
            )
            prefix = "*." * (LEGACY_LEVELS - 1 - level)
            await channel.queue_bind(name, name, routing_key=prefix + "1.#")
            await channel.exchange_bind(after, name, routing_key=prefix + "0.#")
        await channel.queue_bind(
            queue, LEGACY_DELIVERY_EXCHANGE, routing_key="*." * LEGACY_LEVELS + queue
        )
    finally:
        await connection.close()


async def publish_legacy(settings: Settings, job_id: str, delay_s: int, queue: str = QUEUE) -> None:
    """A job delayed the old way: its delay in 22 bits, into the level of its highest bit."""
    bits = format(delay_s, f"0{LEGACY_LEVELS}b")
    async with BrokerConnection(settings) as connection:
        channel = await connection.channel(confirms=True)
        exchange = await channel.get_exchange(
            legacy_level_name(delay_s.bit_length() - 1), ensure=False
        )
        message = aio_pika.Message(
            b"{}", headers={HEADER_JOB_ID: job_id}, type="tick", delivery_mode=2
        )
        await exchange.publish(message, ".".join(bits) + "." + queue, mandatory=True)


async def test_jobs_in_the_old_layout_arrive_once_on_time_and_it_is_retired_once_empty(
    vhost_settings: Settings,
) -> None:
    loaded = topology()
    arrivals = Arrivals()
    sent: dict[str, tuple[float, float]] = {}
    async with BrokerConnection(vhost_settings) as connection:
        # A vhost as an older jobsys left it: its queue, the old levels, a job waiting in them.
        await connection.plain_channel()
        channel = await connection.plain_channel()
        await channel.queue_declare(
            QUEUE,
            durable=True,
            arguments={
                "x-queue-type": "classic",
                "x-dead-letter-exchange": "jobsys.dead-letter",
                "x-dead-letter-routing-key": f"{QUEUE}.dead",
            },
        )
        await declare_legacy_layout(vhost_settings)
        sent["old"] = (time.time(), 5.0)
        await publish_legacy(vhost_settings, "old", 5)
        # The upgrade: apply declares the new layout next to the old one, which it leaves be.
        await apply_topology(connection, loaded, use_management=False)
        await arrivals.consume(connection)
        assert await legacy_waiting(connection) == {
            **{legacy_level_name(level): 0 for level in range(LEGACY_LEVELS)},
            legacy_level_name(2): 1,
        }
        with pytest.raises(LegacyLevelsBusy, match=r"jobsys.delay.02: 1"):
            await retire_legacy_levels(connection)
        async with Producer(vhost_settings, loaded, connection=connection) as producer:
            sent["new"] = (time.time(), 3.0)
            await producer.publish("tick", {}, delay_s=3, job_id="new")
        await arrivals.wait_for(set(sent), timeout_s=15)
        await asyncio.sleep(1)
        retired = await retire_legacy_levels(connection)
        assert len(retired.queues) == LEGACY_LEVELS
        assert retired.exchanges[-1] == LEGACY_DELIVERY_EXCHANGE
        assert await legacy_waiting(connection) == {}
        # The new layout still delivers after the old one is gone.
        async with Producer(vhost_settings, loaded, connection=connection) as producer:
            sent["later"] = (time.time(), 1.0)
            await producer.publish("tick", {}, delay_s=1, job_id="later")
        await arrivals.wait_for({"later"}, timeout_s=10)
    assert {job_id: len(times) for job_id, times in arrivals.seen.items()} == dict.fromkeys(sent, 1)
    for job_id, (at, delay_s) in sent.items():
        assert _on_time(arrivals.seen[job_id][0], at, delay_s), job_id


# -- apps in one vhost, each in its own namespace ------------------------------------------------


async def test_a_producer_cannot_reach_another_namespaces_queue_through_its_delay_levels(
    vhost_settings: Settings,
) -> None:
    billing = topology(namespace="billing", queue="billing.work")
    other = topology(namespace="other", queue="other.secret")
    async with BrokerConnection(vhost_settings) as connection:
        await apply_topology(connection, billing, use_management=False)
        await apply_topology(connection, other, use_management=False)
        arrivals = Arrivals()
        await arrivals.consume(connection, "other.secret")
        channel = await connection.channel(confirms=True)
        # A raw publish into billing's delay levels addressed to the other app's queue: the
        # broker confirms it into billing.wait.00, and drops it where billing's chain ends.
        route = billing.topology.delay_layout.route("other.secret", 1)
        exchange = await channel.get_exchange(route.exchange, ensure=False)
        message = aio_pika.Message(b"{}", headers={HEADER_JOB_ID: "intruder"}, type="tick")
        await exchange.publish(message, route.routing_key, mandatory=True)
        own = other.topology.delay_layout.route("other.secret", 1)
        exchange = await channel.get_exchange(own.exchange, ensure=False)
        message = aio_pika.Message(b"{}", headers={HEADER_JOB_ID: "own"}, type="tick")
        await exchange.publish(message, own.routing_key, mandatory=True)
        await arrivals.wait_for({"own"}, timeout_s=10)
        await asyncio.sleep(2.5)
    assert set(arrivals.seen) == {"own"}


async def _dead_letter_depth(connection: BrokerConnection, queue: str) -> int:
    channel = await connection.channel(confirms=False)
    declared = await channel.get_queue(queue, ensure=True)
    return declared.declaration_result.message_count or 0


async def test_another_namespaces_due_and_dead_letter_exchanges_reach_only_their_own_queues(
    vhost_settings: Settings,
) -> None:
    # The delivery side of item 8: billing's due exchange (undelayed retries, replays) and its
    # dead-letter exchange route by queue name too, so a user who may write them could name the
    # other app's queue. The broker returns those unroutable; the other app's own deliver.
    billing = topology(namespace="billing", queue="billing.work")
    other = topology(namespace="other", queue="other.secret")
    async with BrokerConnection(vhost_settings) as connection:
        await apply_topology(connection, billing, use_management=False)
        await apply_topology(connection, other, use_management=False)
        arrivals = Arrivals()
        await arrivals.consume(connection, "other.secret")
        channel = await connection.channel(confirms=True)
        due_key = billing.topology.delay_layout.route("other.secret", 0).routing_key
        sends = [
            (billing.topology.delay_layout.due_exchange, due_key, "intruder-due"),
            (billing.topology.dead_letter_exchange, "other.secret.dead", "intruder-dead"),
            (other.topology.delay_layout.due_exchange, due_key, "own-due"),
            (other.topology.dead_letter_exchange, "other.secret.dead", "own-dead"),
        ]
        for exchange_name, key, job_id in sends:
            exchange = await channel.get_exchange(exchange_name, ensure=False)
            message = aio_pika.Message(b"{}", headers={HEADER_JOB_ID: job_id}, type="tick")
            if job_id.startswith("intruder"):
                with pytest.raises(aiormq.exceptions.PublishError, match="NO_ROUTE"):
                    await exchange.publish(message, key, mandatory=True)
            else:
                await exchange.publish(message, key, mandatory=True)
        await arrivals.wait_for({"own-due"}, timeout_s=10)
        await asyncio.sleep(1)
        assert set(arrivals.seen) == {"own-due"}
        assert await _dead_letter_depth(connection, "other.secret.dead") == 1
        assert await _dead_letter_depth(connection, "billing.work.dead") == 0
