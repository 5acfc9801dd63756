"""A small topology with one work queue, and jobs planted straight into its dead-letter queue,
as a worker leaves them when it gives up (for the dead-letter tooling's tests)."""

from __future__ import annotations

import asyncio
import functools
import os
import tempfile
from typing import Any

import aio_pika

from jobsys.broker.connection import BrokerConnection
from jobsys.ops import dlq
from jobsys.ops.declare import apply_topology
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text
from jobsys.topology.model import DEAD_LETTER_EXCHANGE, dead_letter_queue_name
from jobsys.wire.envelope import new_job_id, new_message_id
from jobsys.wire.headers import (
    HEADER_ATTEMPT,
    HEADER_ATTEMPTS,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_FAILED_AT_MS,
    HEADER_FIRST_FAILED_AT_MS,
    HEADER_JOB_ID,
    HEADER_ORIGINAL_EXCHANGE,
    HEADER_ORIGINAL_QUEUE,
    HEADER_ORIGINAL_ROUTING_KEY,
    HEADER_PUBLISHED_AT_MS,
    HEADER_TRACEBACK,
    HEADER_WORKER_HOST,
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


@functools.cache
def topology_path() -> str:
    """``TOPOLOGY`` in a file, for the commands that take ``--topology``."""
    directory = tempfile.mkdtemp(prefix="jobsys-dlq-test-")
    path = os.path.join(directory, "topology.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(TOPOLOGY)
    return path


def loaded_topology() -> LoadedTopology:
    """The small topology every dead-letter test uses."""
    return load_topology_text(TOPOLOGY, "dlq-test.yaml")


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
        HEADER_ERROR_TYPE: "demo_app.CardDeclined",
        HEADER_ERROR_MESSAGE: "card declined",
        HEADER_TRACEBACK: 'Traceback (most recent call last):\n  File "h.py", line 1\nCardDeclined',
        HEADER_ATTEMPTS: attempts,
        HEADER_FAILED_AT_MS: 1_700_000_009_000,
        HEADER_ORIGINAL_EXCHANGE: "jobs",
        HEADER_ORIGINAL_ROUTING_KEY: "work",
        HEADER_ORIGINAL_QUEUE: QUEUE,
        HEADER_WORKER_HOST: "worker-1",
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
    async with Producer(settings, loaded_topology()) as producer:
        return await dlq.replay(producer, QUEUE, **kwargs)
