"""Dead-letter tooling on a real broker: peek, replay and purge lose, double and reorder nothing."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aio_pika
import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.errors import TopologyError
from jobsys.ops import dlq
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.model import DEAD_LETTER_EXCHANGE
from jobsys.wire.deadletter import DEAD_LETTER_HEADERS
from jobsys.wire.headers import HEADER_ATTEMPT, HEADER_JOB_ID, HEADER_REPLAYS
from tests.apps.dead_letters import (
    DLQ,
    QUEUE,
    SECRET,
    apply,
    dead_letter_headers,
    drain,
    fill_dead_letter_queue,
    job_ids,
    loaded_topology,
    replay,
)


async def test_replaying_a_thousand_dead_lettered_jobs_puts_each_back_exactly_once(
    vhost_settings: Settings,
) -> None:
    await apply(vhost_settings)
    ids = await fill_dead_letter_queue(vhost_settings, 1000)

    state = await replay(vhost_settings)

    assert (state.total, state.replayed, state.skipped) == (1000, 1000, 0)
    replayed = await drain(vhost_settings, QUEUE)
    assert Counter(job_ids(replayed)) == Counter(ids)
    assert job_ids(replayed) == ids  # and in their dead-letter order
    for message in replayed:
        headers = dict(message.headers or {})
        assert headers[HEADER_ATTEMPT] == 1
        assert headers[HEADER_REPLAYS] == 1
        assert headers["tenant"] == "acme"
        assert not [name for name in headers if name.startswith("x-")]
        assert not set(headers) & DEAD_LETTER_HEADERS
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.type == "send_email"
        assert SECRET.encode() in message.body
    assert len({m.message_id for m in replayed}) == 1000
    assert await drain(vhost_settings, DLQ) == []


async def test_a_second_replay_of_the_same_job_counts_two_replays(
    vhost_settings: Settings,
) -> None:
    await apply(vhost_settings)
    [job_id] = await fill_dead_letter_queue(vhost_settings, 1)
    await replay(vhost_settings)
    [first] = await drain(vhost_settings, QUEUE)
    # The job fails again; a worker dead-letters it with the headers it arrived with.
    async with BrokerConnection(vhost_settings) as connection:
        channel = await connection.channel(confirms=True)
        exchange = await channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
        headers = {**dict(first.headers or {}), **dead_letter_headers(job_id)}
        await exchange.publish(
            aio_pika.Message(first.body, headers=headers, type=first.type, message_id="m2"), DLQ
        )
    await replay(vhost_settings)
    [second] = await drain(vhost_settings, QUEUE)
    assert (second.headers or {})[HEADER_REPLAYS] == 2
    assert (second.headers or {})[HEADER_JOB_ID] == job_id


async def test_replay_with_a_job_type_only_touches_jobs_of_that_type(
    vhost_settings: Settings,
) -> None:
    await apply(vhost_settings)
    ids = await fill_dead_letter_queue(
        vhost_settings, 60, lambda i: "charge_card" if i % 3 == 0 else "send_email"
    )
    charges = [job_id for i, job_id in enumerate(ids) if i % 3 == 0]
    emails = [job_id for i, job_id in enumerate(ids) if i % 3 != 0]

    state = await replay(vhost_settings, where=dlq.Filter(job_type="charge_card"))

    assert (state.replayed, state.skipped) == (20, 40)
    assert job_ids(await drain(vhost_settings, QUEUE)) == charges
    # The others stay, in their order, untouched.
    assert job_ids(await drain(vhost_settings, DLQ)) == emails


async def test_replay_with_a_limit_then_the_rest_loses_and_doubles_nothing(
    vhost_settings: Settings,
) -> None:
    await apply(vhost_settings)
    ids = await fill_dead_letter_queue(vhost_settings, 250)

    first = await replay(vhost_settings, limit=70)
    assert first.replayed == 70
    assert (await peek(vhost_settings)).total == 180
    second = await replay(vhost_settings)
    assert second.replayed == 180

    assert job_ids(await drain(vhost_settings, QUEUE)) == ids
    assert await drain(vhost_settings, DLQ) == []


async def test_replay_of_one_job_id_leaves_every_other_job_in_place(
    vhost_settings: Settings,
) -> None:
    await apply(vhost_settings)
    ids = await fill_dead_letter_queue(vhost_settings, 10)

    state = await replay(vhost_settings, where=dlq.Filter(job_id=ids[4]))

    assert state.replayed == 1
    assert job_ids(await drain(vhost_settings, QUEUE)) == [ids[4]]
    assert job_ids(await drain(vhost_settings, DLQ)) == ids[:4] + ids[5:]


async def test_replay_at_a_rate_spaces_the_replays(vhost_settings: Settings) -> None:
    await apply(vhost_settings)
    await fill_dead_letter_queue(vhost_settings, 6)
    loop = asyncio.get_running_loop()
    started = loop.time()
    state = await replay(vhost_settings, rate=10.0)
    elapsed = loop.time() - started
    assert state.replayed == 6
    # 6 replays at 10 per second: the first goes at once, the last 0.5 s later at the earliest.
    assert elapsed >= 0.45


async def test_progress_is_reported_for_every_job_read(vhost_settings: Settings) -> None:
    await apply(vhost_settings)
    await fill_dead_letter_queue(vhost_settings, 30, lambda i: "charge_card" if i < 5 else "x")
    seen: list[tuple[int, int]] = []
    await replay(
        vhost_settings,
        where=dlq.Filter(job_type="charge_card"),
        progress=lambda s: seen.append((s.replayed, s.skipped)),
    )
    assert seen[-1] == (5, 25)
    assert len(seen) == 30


async def peek(settings: Settings, **kwargs: Any) -> dlq.PeekResult:
    """Look at the test queue's dead-lettered jobs."""
    async with BrokerConnection(settings) as connection:
        return await dlq.peek(connection, QUEUE, **kwargs)


async def test_looking_at_dead_lettered_jobs_neither_removes_nor_reorders_them(
    vhost_settings: Settings,
) -> None:
    await apply(vhost_settings)
    ids = await fill_dead_letter_queue(vhost_settings, 120)

    result = await peek(vhost_settings, limit=50)
    again = await peek(vhost_settings, limit=200)

    assert [job.job_id for job in result.jobs] == ids[:50]
    assert (result.scanned, result.total) == (50, 120)
    assert [job.job_id for job in again.jobs] == ids
    job = result.jobs[0]
    assert job.job_type == "send_email"
    assert job.attempts == 3
    assert job.error_type == "demo_app.CardDeclined"
    assert job.error_message == "card declined"
    assert job.failed_at_ms == 1_700_000_009_000
    assert job.original_queue == QUEUE
    assert job.body_size > len(SECRET)
    assert job_ids(await drain(vhost_settings, DLQ)) == ids


async def test_looking_for_a_job_type_reads_past_other_jobs(vhost_settings: Settings) -> None:
    await apply(vhost_settings)
    ids = await fill_dead_letter_queue(
        vhost_settings, 40, lambda i: "charge_card" if i >= 30 else "send_email"
    )
    result = await peek(vhost_settings, where=dlq.Filter(job_type="charge_card"), limit=5)
    assert [job.job_id for job in result.jobs] == ids[30:35]
    assert job_ids(await drain(vhost_settings, DLQ)) == ids


async def test_a_job_the_broker_dead_lettered_itself_shows_the_brokers_reason(
    vhost_settings: Settings,
) -> None:
    await apply(vhost_settings)
    async with BrokerConnection(vhost_settings) as connection:
        channel = await connection.channel(confirms=True)
        exchange = await channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
        headers: dict[str, Any] = {HEADER_JOB_ID: "j-1", "x-first-death-reason": "maxlen"}
        headers["x-first-death-queue"] = QUEUE
        await exchange.publish(aio_pika.Message(b"{}", headers=headers, type="send_email"), DLQ)
    [job] = (await peek(vhost_settings)).jobs
    assert job.error_type == "broker: maxlen"
    assert job.original_queue == QUEUE


async def test_purge_empties_the_dead_letter_queue_and_says_how_many(
    vhost_settings: Settings,
) -> None:
    await apply(vhost_settings)
    await fill_dead_letter_queue(vhost_settings, 25)
    async with BrokerConnection(vhost_settings) as connection:
        assert await dlq.purge(connection, QUEUE) == 25
        assert await dlq.count(connection, QUEUE) == 0


async def test_a_queue_that_is_not_on_the_broker_gives_a_clear_error(
    vhost_settings: Settings,
) -> None:
    async with BrokerConnection(vhost_settings) as connection:
        with pytest.raises(TopologyError, match=r"'nope.dead' does not exist.*topology apply"):
            await dlq.peek(connection, "nope")
        async with Producer(vhost_settings, loaded_topology(), connection=connection) as producer:
            with pytest.raises(TopologyError, match="does not exist"):
                await dlq.replay(producer, "nope")
