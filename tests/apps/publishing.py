"""A small publishing topology (two queues, a headers exchange, a fan-out) and helpers to
declare it and read what reached its queues (for the producer's tests)."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import yaml
from pydantic import BaseModel

from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text

TOPOLOGY: dict[str, Any] = {
    "version": 1,
    "exchanges": {"jobs": {"type": "topic"}, "fan": {"type": "fanout"}},
    "queues": {
        "emails": {"type": "classic", "max_priority": 10},
        "tiny": {"type": "classic", "max_length": 2, "overflow": "reject-publish-dlx"},
        "audit": {"type": "classic"},
        "archive": {"type": "classic"},
    },
    "bindings": [
        {"exchange": "jobs", "queue": "emails", "routing_key": "email.#"},
        {"exchange": "jobs", "queue": "tiny", "routing_key": "tiny"},
        {"exchange": "fan", "queue": "audit"},
        {"exchange": "fan", "queue": "archive"},
    ],
    "job_types": {
        "send_email": {"exchange": "jobs", "routing_key": "email.send", "priority": 3},
        "squeeze": {"exchange": "jobs", "routing_key": "tiny"},
        "audit_event": {"exchange": "fan"},
    },
}


class Email(BaseModel):
    to: str


async def declare(settings: Settings, topology: dict[str, Any] = TOPOLOGY) -> LoadedTopology:
    """Declare ``topology`` in the test's vhost and return it loaded."""
    loaded = load_topology_text(yaml.safe_dump(topology), "test-topology.yaml")
    async with BrokerConnection(settings) as conn:
        await apply_topology(conn, loaded, use_management=False)
    return loaded


async def drain(settings: Settings, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message now in ``queue`` (acked, so the queue ends empty)."""
    connection = await aio_pika.connect(settings.url)
    try:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=False)
        messages = []
        while (message := await q.get(fail=False, no_ack=True)) is not None:
            messages.append(message)
        return messages
    finally:
        await connection.close()


async def wait_for_messages(
    settings: Settings, queue: str, count: int, timeout_s: float = 15.0
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Consume until ``count`` messages arrived in ``queue`` (fails after ``timeout_s``)."""
    connection = await aio_pika.connect(settings.url)
    try:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=False)
        got: list[aio_pika.abc.AbstractIncomingMessage] = []
        async with asyncio.timeout(timeout_s), q.iterator() as messages:
            async for message in messages:
                await message.ack()
                got.append(message)
                if len(got) == count:
                    break
        return got
    finally:
        await connection.close()
