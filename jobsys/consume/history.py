"""The worker's half of job history: an event when a worker takes a job and one when it is
settled, recorded without waiting (``jobsys.observe.history``) and published in batches (one
confirmed message per batch) to the topology's history exchange.

Only the queues named by ``history:`` in the topology are recorded (all of them when it names
none). A job without a job id (undecodable) is not recorded. A history write that fails never
fails or delays a job.
"""

from __future__ import annotations

import os
import socket

from jobsys.broker.connection import BrokerConnection
from jobsys.consume.attempt import Delivery
from jobsys.consume.outcome import Outcome
from jobsys.observe.history import HistoryRecorder
from jobsys.publish.history import HistorySink
from jobsys.topology.model import History, Topology
from jobsys.wire.deadletter import error_text, error_type_name
from jobsys.wire.headers import now_ms
from jobsys.wire.history import EventKind, HistoryEvent

_KINDS: dict[str, EventKind] = {
    "ack": "succeeded",
    "retry": "retried",
    "dead_letter": "dead_lettered",
    "cancel": "cancelled",
    "wait": "waiting",
    "requeue": "requeued",
}


class HistoryWriter:
    """Records the jobs of one worker (see the module docstring)."""

    def __init__(self, connection: BrokerConnection, topology: Topology, history: History) -> None:
        self._connection = connection
        self._history = history
        self._sink = HistorySink(connection, topology)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.recorder = HistoryRecorder(self._sink)

    def records(self, queue: str) -> bool:
        """Whether the jobs of ``queue`` are recorded."""
        return self._history.records(queue)

    def started(self, delivery: Delivery, queue: str) -> None:
        """A worker took ``delivery`` (identified) from ``queue``."""
        self._record("started", delivery, queue, {})

    def settled(self, delivery: Delivery, queue: str, outcome: Outcome, ran_s: float) -> None:
        """``delivery`` was settled as ``outcome`` after ``ran_s`` seconds."""
        kind = _KINDS[outcome.kind]
        details: dict[str, object] = {}
        if kind == "succeeded":
            details["duration_ms"] = round(ran_s * 1000, 3)
            details["result_bytes"] = len(outcome.result) if outcome.result is not None else 0
        if outcome.delay_s is not None:
            details["delay_s"] = outcome.delay_s
        if outcome.error is not None:
            details["error_type"] = error_type_name(outcome.error)
            details["error_message"] = error_text(outcome.error)
        if outcome.reason is not None:
            details["reason"] = outcome.reason
        self._record(kind, delivery, queue, details)

    def _record(
        self, kind: EventKind, delivery: Delivery, queue: str, details: dict[str, object]
    ) -> None:
        if delivery.job_id is None:
            return
        self.recorder.record(
            HistoryEvent(
                kind=kind,
                job_id=delivery.job_id,
                job_type=delivery.job_type or "unknown",
                queue=queue,
                attempt=delivery.attempt,
                at_ms=now_ms(),
                host=self.host,
                pid=self.pid,
                details=details,
            )
        )

    def start(self) -> None:
        """Start writing in the background."""
        self.recorder.start()

    async def close(self) -> None:
        """Write what is buffered (briefly) and close the channel."""
        await self.recorder.close()
        await self._sink.close()
