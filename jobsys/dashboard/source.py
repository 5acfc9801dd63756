"""What the dashboard shows, read through ``jobsys.ops`` (it has no broker code of its own).

Reads are shared and paced: the queue counts are read at most once per refresh interval and
the connections likewise, however many browsers poll, and concurrent page loads wait for the
one read in flight. A look at a dead-letter queue holds the jobs it reads unacked until it
ends, so looks at one queue take turns (two at once would each see part of the queue).

Every failure becomes a one-line message for the page (``Unavailable``): the broker gone, the
login refused, a queue missing. A read that fails drops its connection, and the next read opens
a fresh one; a read bounded by ``READ_TIMEOUT_S`` cannot hang a page on a broker that stopped
answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from jobsys.broker.connection import BrokerConnection
from jobsys.errors import JobsysError
from jobsys.ops import dlq
from jobsys.ops.history import job_timeline
from jobsys.ops.status import StatusReader, StatusReport
from jobsys.ops.workers import ConnectionInfo, read_connections
from jobsys.publish.producer import Producer
from jobsys.schedule.status import ScheduleRow, read_status, rows
from jobsys.settings import Settings
from jobsys.topology.model import Topology
from jobsys.wire.history import HistoryEvent

log = logging.getLogger(__name__)

#: Longest a read of the broker may take before the page says it does not answer.
READ_TIMEOUT_S = 10.0
#: How long a dashboard that fell back to AMQP waits before trying the management API again.
MANAGEMENT_RETRY_S = 60.0
#: Longest a connection attempt may take: a page should say "unreachable" in seconds.
CONNECT_DEADLINE_S = 3.0


class Unavailable(Exception):
    """The broker (or the management API) could not answer; the message says why, for the page."""


@dataclass(frozen=True)
class StatusSnapshot:
    """One read of the queue counts."""

    report: StatusReport
    read_at_s: float


@dataclass(frozen=True)
class Connections:
    """One read of the connections; ``connections`` is None when the API cannot be used."""

    connections: list[ConnectionInfo] | None
    note: str
    read_at_s: float


@dataclass(frozen=True)
class Schedules:
    """One read of the scheduler's state: each schedule's next and last fire, and who leads
    (``leader`` None when no scheduler has run yet)."""

    rows: list[ScheduleRow]
    leader: str | None
    leader_since_ms: int | None
    read_at_s: float


def _message(exc: BaseException) -> str:
    if isinstance(exc, JobsysError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"the broker did not answer within {READ_TIMEOUT_S:g}s"
    log.warning("dashboard read failed", exc_info=exc)
    return f"unexpected error ({type(exc).__name__}); the dashboard's log has the details"


class BrokerView:
    """The dashboard's reads and writes, paced and made safe for pages."""

    def __init__(
        self, settings: Settings, topology: Topology, *, refresh_s: float, use_management: bool
    ) -> None:
        self.settings = settings.with_overrides(
            connect_deadline_s=min(settings.connect_deadline_s, CONNECT_DEADLINE_S),
            connect_timeout_s=min(settings.connect_timeout_s, CONNECT_DEADLINE_S),
            # Named, so the broker's connection list (and the workers page) tells it apart.
            client_name="jobsys dashboard" if settings.client_name == "jobsys" else None,
        )
        self.topology = topology
        self.refresh_s = refresh_s
        self.use_management = use_management
        self._reader: StatusReader | None = None
        self._reader_since = 0.0
        self._status: StatusSnapshot | None = None
        self._connections: Connections | None = None
        self._schedules: Schedules | None = None
        self._lock = asyncio.Lock()
        # A lookup reads the history stream from its start: one at a time, however many ask.
        self._history_lock = asyncio.Lock()
        self._queue_locks: dict[str, asyncio.Lock] = {}
        #: Reads of the broker so far, by what they read (the bench reports broker load).
        self.reads = {"status": 0, "connections": 0, "schedules": 0, "history": 0}

    # -- counts -----------------------------------------------------------------------------

    async def status(self) -> StatusSnapshot:
        """The queue counts, at most ``refresh_s`` old."""
        async with self._lock:
            if self._status is not None and time.time() - self._status.read_at_s < self.refresh_s:
                return self._status
            async with self._reading() as reader:
                report = await asyncio.wait_for(reader.read(), READ_TIMEOUT_S)
            self.reads["status"] += 1
            self._status = StatusSnapshot(report, time.time())
            return self._status

    async def connections(self) -> Connections:
        """The vhost's connections and pools, at most ``refresh_s`` old."""
        async with self._lock:
            cached = self._connections
            if cached is not None and time.time() - cached.read_at_s < self.refresh_s:
                return cached
            async with self._reading() as reader:
                client = await asyncio.wait_for(reader.management(), READ_TIMEOUT_S)
                if client is None:
                    note = reader.note or "the management API is not used"
                    self._connections = Connections(None, note, time.time())
                    return self._connections
                rows = await asyncio.wait_for(
                    read_connections(client, self.settings.vhost), READ_TIMEOUT_S
                )
            self.reads["connections"] += 1
            self._connections = Connections(rows, "", time.time())
            return self._connections

    async def schedules(self) -> Schedules:
        """The schedules with the state the leader last wrote, at most ``refresh_s`` old."""
        async with self._lock:
            cached = self._schedules
            if cached is not None and time.time() - cached.read_at_s < self.refresh_s:
                return cached
            if not self.topology.schedules:
                state = None
            else:
                async with self._connected() as connection:
                    state = await asyncio.wait_for(
                        read_status(connection, self.topology), READ_TIMEOUT_S
                    )
                self.reads["schedules"] += 1
            leader = state.leader if state is not None else None
            self._schedules = Schedules(
                rows(self.topology, state),
                leader.name if leader is not None else None,
                leader.since_ms if leader is not None else None,
                time.time(),
            )
            return self._schedules

    async def job_history(self, job_id: str, since_s: float | None) -> list[HistoryEvent]:
        """The recorded events of ``job_id``, oldest first (``Unavailable`` when the history
        cannot be read: off in the topology, its stream missing, the broker gone)."""
        async with self._history_lock, self._connected() as connection:
            self.reads["history"] += 1
            return await job_timeline(
                connection, self.topology, job_id, since_s=since_s, timeout_s=READ_TIMEOUT_S * 3
            )

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[StatusReader]:
        now = time.monotonic()
        reader = self._reader
        if reader is not None and (
            self.use_management and reader.note and now - self._reader_since > MANAGEMENT_RETRY_S
        ):
            # It fell back to AMQP a while ago: the management API may answer again.
            await self._drop_reader()
            reader = None
        if reader is None:
            reader = self._reader = StatusReader(
                self.settings, self.topology, use_management=self.use_management
            )
            self._reader_since = now
        try:
            yield reader
        except Exception as exc:
            await self._drop_reader()
            raise Unavailable(_message(exc)) from None

    async def _drop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader.close(), 5.0)

    # -- dead letters -----------------------------------------------------------------------

    async def peek(
        self, queue: str, where: dlq.Filter, *, limit: int, scan_limit: int, body_bytes: int
    ) -> dlq.PeekResult:
        """A look at ``queue``'s dead-letter queue (one look per queue at a time)."""
        async with self._queue_lock(queue), self._connected() as connection:
            return await asyncio.wait_for(
                dlq.peek(
                    connection,
                    queue,
                    where=where,
                    limit=limit,
                    scan_limit=scan_limit,
                    body_bytes=body_bytes,
                ),
                READ_TIMEOUT_S * 3,
            )

    async def replay(self, queue: str, where: dlq.Filter, limit: int) -> dlq.ReplayProgress:
        """Replay up to ``limit`` matching jobs of ``queue`` (confirm, then ack)."""
        async with self._queue_lock(queue):
            try:
                async with Producer(self.settings, self.topology) as producer:
                    return await dlq.replay(producer, queue, where=where, limit=limit)
            except Exception as exc:
                raise Unavailable(_message(exc)) from None

    async def purge(self, queue: str) -> int:
        """Delete every job in ``queue``'s dead-letter queue; how many."""
        async with self._queue_lock(queue), self._connected() as connection:
            return await asyncio.wait_for(dlq.purge(connection, queue), READ_TIMEOUT_S)

    def _queue_lock(self, queue: str) -> asyncio.Lock:
        return self._queue_locks.setdefault(queue, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def _connected(self) -> AsyncIterator[BrokerConnection]:
        # A fresh connection per look: looks are rare, and a dead one never lingers.
        try:
            async with BrokerConnection(self.settings) as connection:
                yield connection
        except Unavailable:
            raise
        except Exception as exc:
            raise Unavailable(_message(exc)) from None

    async def close(self) -> None:
        """Close what is open."""
        await self._drop_reader()
