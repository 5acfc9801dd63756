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
from jobsys.ops.declare import apply_topology
from jobsys.settings import Settings
from jobsys.topology.delays import level_count
from jobsys.topology.loader import LoadedTopology, load_topology_text
from jobsys.topology.model import DEAD_LETTER_EXCHANGE, dead_letter_queue_name
from jobsys.wire.envelope import (
    DL_ATTEMPTS,
    DL_ERROR_MESSAGE,
    DL_ERROR_TYPE,
    DL_FAILED_AT_MS,
    DL_ORIGINAL_EXCHANGE,
    DL_ORIGINAL_QUEUE,
    DL_ORIGINAL_ROUTING_KEY,
    DL_TRACEBACK,
    DL_WORKER_HOST,
    HEADER_ATTEMPT,
    HEADER_FIRST_FAILED_AT_MS,
    HEADER_JOB_ID,
    HEADER_PUBLISHED_AT_MS,
    HEADER_REPLAYS,
    new_job_id,
    new_message_id,
)

QUEUE = "work"
DLQ = dead_letter_queue_name(QUEUE)
SECRET = "BODY-MARKER-4f1c"

TOPOLOGY = """
version: 1
exchanges:
  jobs: {type: direct}
queues:
  work: {type: classic}
bindings:
  - {exchange: jobs, queue: work, routing_key: work}
job_types:
  send_email: {exchange: jobs, routing_key: work}
  charge_card: {exchange: jobs, routing_key: work}
"""


def loaded_topology() -> LoadedTopology:
    """The small topology every dead-letter test uses."""
    return load_topology_text(TOPOLOGY, "dlq-test.yaml")


def levels() -> int:
    """Delay levels of that topology."""
    return level_count(loaded_topology().topology.delays.max_delay)


async def apply(settings: Settings) -> None:
    """Declare the topology (work queue, its dead-letter queue, delay levels) on the broker."""
    async with BrokerConnection(settings) as connection:
        await apply_topology(connection, loaded_topology(), use_management=False)


def dead_letter_headers(job_id: str, attempts: int = 3) -> dict[str, Any]:
    """Headers as a worker writes them when it gives up on a job."""
    return {
        HEADER_JOB_ID: job_id,
        HEADER_ATTEMPT: attempts,
        HEADER_PUBLISHED_AT_MS: 1_700_000_000_000,
        HEADER_FIRST_FAILED_AT_MS: 1_700_000_001_000,
        DL_ERROR_TYPE: "demo_app.CardDeclined",
        DL_ERROR_MESSAGE: "card declined",
        DL_TRACEBACK: 'Traceback (most recent call last):\n  File "h.py", line 1\nCardDeclined',
        DL_ATTEMPTS: attempts,
        DL_FAILED_AT_MS: 1_700_000_009_000,
        DL_ORIGINAL_EXCHANGE: "jobs",
        DL_ORIGINAL_ROUTING_KEY: "work",
        DL_ORIGINAL_QUEUE: QUEUE,
        DL_WORKER_HOST: "worker-1",
        "tenant": "acme",
        "x-first-death-reason": "rejected",
    }


async def fill_dead_letter_queue(
    settings: Settings, count: int, job_type: str | Any = "send_email"
) -> list[str]:
    """Publish ``count`` dead-lettered jobs straight into the DLQ; returns their ids in order.
    ``job_type`` may be a function of the index."""
    ids = [new_job_id() for _ in range(count)]
    async with BrokerConnection(settings) as connection:
        channel = await connection.channel(confirms=True)
        exchange = await channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
        window = 200
        for start in range(0, count, window):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            body=f'{{"secret": "{SECRET}", "n": {i}}}'.encode(),
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=new_message_id(),
                            type=job_type(i) if callable(job_type) else job_type,
                            headers=dead_letter_headers(ids[i]),
                        ),
                        DLQ,
                        mandatory=True,
                    )
                    for i in range(start, min(start + window, count))
                )
            )
        await channel.close()
    return ids


async def drain(settings: Settings, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take every message out of ``queue`` (acked), in order."""
    messages = []
    async with BrokerConnection(settings) as connection:
        channel = await connection.channel(confirms=False)
        q = await channel.get_queue(queue, ensure=False)
        while (message := await q.get(no_ack=False, fail=False)) is not None:
            await message.ack()
            messages.append(message)
        await channel.close()
    return messages


def job_ids(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> list[str]:
    """The job ids of ``messages``, in order."""
    return [str((m.headers or {})[HEADER_JOB_ID]) for m in messages]


async def replay(settings: Settings, **kwargs: Any) -> dlq.ReplayProgress:
    """Replay dead-lettered jobs of the test queue."""
    async with BrokerConnection(settings) as connection:
        return await dlq.replay(connection, QUEUE, levels=levels(), **kwargs)


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
        assert not set(headers) & dlq.DEAD_LETTER_HEADERS
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
        with pytest.raises(TopologyError, match="does not exist"):
            await dlq.replay(connection, "nope", levels=levels())


def test_replay_headers_reset_attempts_and_drop_the_failure_record() -> None:
    headers = dead_letter_headers("j-9", attempts=5)
    headers[HEADER_REPLAYS] = 2
    headers["x-death"] = [{"count": 1}]
    headers["traceparent"] = "00-abc-def-01"
    replayed = dlq.replay_headers(headers)
    assert replayed == {
        HEADER_JOB_ID: "j-9",
        HEADER_ATTEMPT: 1,
        HEADER_PUBLISHED_AT_MS: 1_700_000_000_000,
        HEADER_REPLAYS: 3,
        "tenant": "acme",
        "traceparent": "00-abc-def-01",
    }
