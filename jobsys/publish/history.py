"""Writing job history events: one confirmed message per batch to the topology's history
exchange (``history:``), and the producer's own events (``published``, ``replayed``).

``HistorySink`` is what both a producer's and a worker's ``HistoryRecorder``
(``jobsys.observe.history``) hand their batches to; it opens its confirm channel on first use
and never runs on a job's path.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence

from aio_pika import RobustChannel

from jobsys.broker.confirm import ConfirmChannel, Outgoing
from jobsys.broker.connection import BrokerConnection
from jobsys.observe.history import HistoryRecorder
from jobsys.publish.properties import message_properties
from jobsys.topology.model import Topology
from jobsys.topology.own import OwnLayout
from jobsys.wire.envelope import new_message_id
from jobsys.wire.headers import now_ms
from jobsys.wire.history import EVENT_TYPE, HEADER_EVENTS, EventKind, HistoryEvent, encode_batch


class HistorySink:
    """Publishes batches of events with confirms on a channel of its own."""

    def __init__(self, connection: BrokerConnection, topology: Topology) -> None:
        self._connection = connection
        self._exchange = OwnLayout(topology.namespace).history_exchange
        self._confirms: ConfirmChannel | None = None
        self._lock = asyncio.Lock()

    async def __call__(self, batch: Sequence[HistoryEvent]) -> None:
        # One message per batch: two publishes per job would halve what a worker can drain.
        confirms = await self._channel()
        out = Outgoing("history", EVENT_TYPE, self._exchange, "", encode_batch(batch))
        props = message_properties(EVENT_TYPE, None, {HEADER_EVENTS: len(batch)}, new_message_id())
        await confirms.publish(out, props)

    async def _channel(self) -> ConfirmChannel:
        async with self._lock:
            if self._confirms is None:
                robust = await self._connection.channel(confirms=True)
                assert isinstance(robust, RobustChannel)
                self._confirms = ConfirmChannel(robust, self._connection.settings)
            return self._confirms

    async def close(self) -> None:
        """Close the channel (safe to call twice)."""
        confirms, self._confirms = self._confirms, None
        if confirms is not None and not confirms.robust.is_closed:
            await confirms.robust.close()


class ProducerHistory:
    """A producer's events: a job published (``published``) or replayed from its dead-letter
    queue (``replayed``), recorded without waiting."""

    def __init__(self, connection: BrokerConnection, topology: Topology) -> None:
        self.sink = HistorySink(connection, topology)
        self.recorder = HistoryRecorder(self.sink)
        self._queues = topology.history
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.recorder.start()

    def record(
        self,
        kind: EventKind,
        job_id: str,
        job_type: str,
        queues: Sequence[str],
        delay_s: float | None = None,
        at_ms: int | None = None,
    ) -> None:
        """Note a publish of ``job_id`` meant for ``queues`` (the first recorded one names it),
        begun at ``at_ms`` (default now): before the broker confirmed it, a worker may
        already have taken it, and its timeline is ordered by time."""
        history = self._queues
        recorded = [q for q in queues if history is None or history.records(q)]
        if queues and not recorded:
            return
        details = {"delay_s": delay_s} if delay_s else {}
        self.recorder.record(
            HistoryEvent(
                kind,
                job_id,
                job_type,
                recorded[0] if recorded else "",
                1,
                at_ms if at_ms is not None else now_ms(),
                self.host,
                self.pid,
                details,
            )
        )

    async def close(self) -> None:
        """Write what is buffered (briefly), then close the channel."""
        await self.recorder.close()
        await self.sink.close()
