"""Reading the job history: one job's timeline from the history stream (``history:``).

A stream has no index and no end a reader can see, so ``job_timeline`` appends a marker of its
own to the stream and reads from ``since`` (or the start of what the broker keeps) until it
reads the marker back: every event written before it was read. It keeps the events of one job
id, decoding only the batches whose bytes mention it. The reader needs
write permission on the history exchange for its marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import (
    ChannelPreconditionFailed,
    ConnectionInternalError,
    ConnectionResourceError,
)

from jobsys.broker.connection import BrokerConnection, broker_errors, close_quietly
from jobsys.broker.passive import declaring
from jobsys.errors import BrokerError, ConfigError
from jobsys.topology.model import Topology
from jobsys.topology.own import OwnLayout
from jobsys.wire.headers import HEADER_JOB_ID, text
from jobsys.wire.history import MARKER_TYPE, HistoryEvent, decode_batch, distinct, mentions

#: How long a read may take before it gives up.
DEFAULT_READ_TIMEOUT_S = 120.0
_PREFETCH = 2000
_ACK_EVERY = 500


async def job_timeline(
    connection: BrokerConnection,
    topology: Topology,
    job_id: str,
    *,
    since_s: float | None = None,
    timeout_s: float = DEFAULT_READ_TIMEOUT_S,
) -> list[HistoryEvent]:
    """The recorded events of ``job_id``, oldest first, read from ``since_s`` seconds ago (or
    all the broker keeps). ``ConfigError`` when the topology has no ``history``;
    ``TopologyError`` when its stream is missing; ``TimeoutError`` past ``timeout_s``."""
    if topology.history is None:
        raise ConfigError(
            "the topology has no `history:` section, so no job history is recorded; add one "
            "and run `jobsys topology apply FILE` (docs/results.md#job-history)"
        )
    own = OwnLayout(topology.namespace)
    marker = f"history-marker-{uuid.uuid4().hex}"
    reader = _Reader(job_id, marker)
    channel = await connection.channel(confirms=True, prefetch=_PREFETCH)
    try:
        with broker_errors(connection.settings):
            with declaring(f"the history stream {own.history!r}"):
                stream = await channel.get_queue(own.history, ensure=True)
            offset: str | datetime = "first"
            if since_s is not None:
                offset = datetime.now(UTC) - timedelta(seconds=since_s)
            await _consume(stream, reader.on_message, offset)
            exchange = await channel.get_exchange(own.history_exchange, ensure=False)
            await exchange.publish(
                aio_pika.Message(b"", type=MARKER_TYPE, headers={HEADER_JOB_ID: marker}),
                routing_key="",
            )
        try:
            async with asyncio.timeout(timeout_s):
                await reader.done.wait()
        except TimeoutError:
            raise BrokerError(
                f"the history stream was not read to its end within {timeout_s:g}s "
                f"({reader.read} batches read); try --since to read less of it"
            ) from None
    finally:
        with contextlib.suppress(Exception):
            await close_quietly(channel)
    # By the recording hosts' clocks; a publish before what happened to the job in the same ms.
    events = distinct(reader.events)
    return sorted(events, key=lambda e: (e.at_ms, e.kind not in ("published", "replayed")))


async def follow(
    connection: BrokerConnection,
    topology: Topology,
    on_event: Callable[[HistoryEvent], object],
    *,
    since_s: float | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Call ``on_event`` for every event written to the history from now on (or from
    ``since_s`` seconds ago), in stream order, until ``stop`` is set (or forever)."""
    if topology.history is None:
        raise ConfigError(
            "the topology has no `history:` section, so no job history is recorded; add one "
            "and run `jobsys topology apply FILE` (docs/results.md#job-history)"
        )
    own = OwnLayout(topology.namespace)
    channel = await connection.channel(confirms=False, prefetch=_PREFETCH)

    async def on_message(message: AbstractIncomingMessage) -> None:
        if message.type != MARKER_TYPE:
            for event in decode_batch(message.body):
                on_event(event)
        await message.ack()

    try:
        with broker_errors(connection.settings):
            with declaring(f"the history stream {own.history!r}"):
                stream = await channel.get_queue(own.history, ensure=True)
            offset: str | datetime = "next"
            if since_s is not None:
                offset = datetime.now(UTC) - timedelta(seconds=since_s)
            await _consume(stream, on_message, offset)
        await (stop or asyncio.Event()).wait()
    finally:
        with contextlib.suppress(Exception):
            await close_quietly(channel)


async def _consume(
    stream: AbstractQueue,
    on_message: Callable[[AbstractIncomingMessage], Awaitable[None]],
    offset: str | datetime,
) -> None:
    """Read ``stream`` from ``offset``. Just after a node of a cluster went down, RabbitMQ
    refuses a stream reader, seen on 3.10 in three ways: its whole connection closed with
    ``RESOURCE_ERROR`` (no running local replica) or ``INTERNAL_ERROR`` (the stream's leader
    gone, ``nodedown`` in the node's log), or its channel with ``PRECONDITION_FAILED`` (no
    replica on the local node), until the stream has a leader again (here under a second).
    That is no broker out of reach, and no missing stream: say what it is."""
    try:
        await stream.consume(on_message, arguments={"x-stream-offset": offset})
    except (ConnectionResourceError, ConnectionInternalError, ChannelPreconditionFailed) as exc:
        if isinstance(exc, ChannelPreconditionFailed) and "replica" not in str(exc):
            raise
        raise BrokerError(
            f"the history stream {stream.name!r} cannot be read through this node right now "
            f"({type(exc).__name__}: {exc}): its leader or its copy on this node is down — a "
            "node of the cluster restarting or gone; try again in a few seconds, or through "
            "another node"
        ) from None


class _Reader:
    def __init__(self, job_id: str, marker: str) -> None:
        self.job_id = job_id
        self.marker = marker
        self.events: list[HistoryEvent] = []
        self.done = asyncio.Event()
        self._unacked = 0
        self.read = 0

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.read += 1
        if message.type == MARKER_TYPE:
            if text((message.headers or {}).get(HEADER_JOB_ID)) == self.marker:
                self.done.set()
        elif mentions(message.body, self.job_id):
            self.events += [e for e in decode_batch(message.body) if e.job_id == self.job_id]
        self._unacked += 1
        if self._unacked >= _ACK_EVERY:
            self._unacked = 0
            await message.ack(multiple=True)  # a stream consumer must ack to get more
