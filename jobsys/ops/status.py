"""What the broker holds for a topology right now: per work queue ready, unacked, consumers and
dead-letter depth; jobs waiting in the delay levels; rates when the management API answers.

The management API (``GET /api/queues/{vhost}``) gives everything, with a lag of a few seconds
(its statistics interval), once it has shown that it answers for the same broker as the AMQP
URL. Without it, a passive declare per queue gives the exact ready count
and the consumer count over AMQP; unacked messages and rates are then unknown (shown as ``-``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import aiormq
import aiormq.abc
import aiormq.exceptions
from pamqp import commands as spec

from jobsys.broker.connection import BrokerConnection, broker_errors, close_quietly
from jobsys.broker.management import (
    ManagementClient,
    ManagementEndpoint,
    ManagementUnavailable,
    management_endpoint,
)
from jobsys.broker.passive import node_down, reason_of
from jobsys.errors import ConnectionFailed
from jobsys.settings import Settings
from jobsys.topology import delays
from jobsys.topology.entities import desired_entities
from jobsys.topology.model import Topology, dead_letter_queue_name
from jobsys.topology.own import OwnLayout


@dataclass(frozen=True)
class Rates:
    """Messages per second over the management API's last sample."""

    published: float
    delivered: float
    acked: float


@dataclass(frozen=True)
class QueueCounts:
    """One queue's depth. None means unknown (unacked without the management API)."""

    ready: int | None
    unacked: int | None
    consumers: int | None
    rates: Rates | None = None
    exists: bool = True
    #: The queue exists, but the node that holds it is down or still starting: its counts are
    #: unknown until it is back (and `apply` would not help).
    node_down: bool = False
    #: When the job at the head of the queue was published (its AMQP timestamp, seconds since
    #: the epoch), as the management API reports it for a classic queue holding ready jobs.
    head_published_s: int | None = None

    @property
    def total(self) -> int | None:
        """Ready plus unacked when both are known, else ready."""
        if self.ready is None:
            return None
        return self.ready + (self.unacked or 0)


@dataclass(frozen=True)
class QueueStatus:
    """A work queue and its dead-letter queue."""

    name: str
    counts: QueueCounts
    dead_letter_queue: str
    dead_letter: QueueCounts


@dataclass(frozen=True)
class DelayLevelStatus:
    """One delay level: its queue, its TTL and how many jobs wait in it."""

    name: str
    ttl_s: float
    waiting: int | None
    #: It exists on a node that is down or still starting (``waiting`` is then None).
    node_down: bool = False


@dataclass(frozen=True)
class StatusReport:
    """Everything ``jobsys status`` shows."""

    queues: list[QueueStatus]
    delay_levels: list[DelayLevelStatus]
    source: Literal["management", "amqp"]
    note: str = ""
    #: Levels of the layout before jobsys fixed its level count, where they still exist: they
    #: deliver what they hold on time, and ``jobsys delays retire`` removes them once empty.
    legacy_levels: list[DelayLevelStatus] = field(default_factory=list)
    #: The last state each circuit breaker published (``jobsys.consume.breakers``), by job
    #: type; None for a breaker that never changed state.
    breakers: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    #: The broker node the reader's AMQP connection is on (masked URL; empty when none).
    node: str = ""

    @property
    def delayed_total(self) -> int | None:
        """Jobs waiting in all delay levels (None when a level could not be read)."""
        counts = [level.waiting for level in self.delay_levels]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)


class StatusReader:
    """Reads a ``StatusReport`` for one topology, again and again (``--watch``).

    Uses the management API while it answers, once it has shown that it answers for the broker
    the AMQP URL reaches (the same cluster name; checked on the first read over one AMQP
    connection); otherwise falls back to AMQP for the reader's life, saying why, and keeps one
    connection open for the refreshes.
    """

    def __init__(self, settings: Settings, topology: Topology, *, use_management: bool) -> None:
        self.settings = settings
        self.topology = topology
        self._endpoint: ManagementEndpoint | None = (
            management_endpoint(settings) if use_management else None
        )
        self._confirmed = False
        self._note = "" if use_management else "the management API was not used (--no-management)"
        self._conn: BrokerConnection | None = None

    async def read(self) -> StatusReport:
        """The broker's numbers now, and the circuit breakers' last states."""
        report = await self._read_counts()
        if not any(jt.breaker is not None for jt in self.topology.job_types.values()):
            return report
        breakers = await read_breakers(await self._connection(), self.topology)
        return dataclasses.replace(report, breakers=breakers)

    async def _read_counts(self) -> StatusReport:
        names = _queue_names(self.topology)
        if self._endpoint is not None:
            try:
                client = ManagementClient(self._endpoint)
                await self._confirm_same_broker(client)
                rows = await client.queue_counts(self.settings.vhost)
            except ManagementUnavailable as exc:
                self._endpoint = None
                self._note = f"{exc}; read over AMQP instead (no unacked counts, no rates)"
            else:
                counts = {str(row.get("name")): _counts_of(row) for row in rows}
                missing = QueueCounts(None, None, None, exists=False)
                found = {name: counts.get(name, missing) for name in names}
                note = f"from the management API at {management_endpoint(self.settings).masked}"
                return self._report(found, "management", note)
        return self._report(await self._amqp_counts(names), "amqp", self._note)

    async def management(self) -> ManagementClient | None:
        """A client for the management API once it is shown to answer for this broker; None
        when it is not used, or stopped answering (``note`` of the next report says why)."""
        if self._endpoint is None:
            return None
        client = ManagementClient(self._endpoint)
        try:
            await self._confirm_same_broker(client)
        except ManagementUnavailable as exc:
            self._endpoint = None
            self._note = f"{exc}; read over AMQP instead (no unacked counts, no rates)"
            return None
        return client

    @property
    def note(self) -> str:
        """Why the management API is not used (empty while it is)."""
        return self._note

    async def _confirm_same_broker(self, client: ManagementClient) -> None:
        if self._confirmed:
            return
        conn = await self._connection()
        with broker_errors(self.settings):
            properties = conn.amqp.server_properties
        await client.confirm_same_broker(properties)
        self._confirmed = True

    async def _connection(self) -> BrokerConnection:
        if self._conn is None:
            self._conn = await BrokerConnection(self.settings).open()
        return self._conn

    async def close(self) -> None:
        """Close the AMQP connection, if one was opened."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def _report(
        self, counts: dict[str, QueueCounts], source: Literal["management", "amqp"], note: str
    ) -> StatusReport:
        queues = [
            QueueStatus(
                name,
                counts[name],
                dead_letter_queue_name(name),
                counts[dead_letter_queue_name(name)],
            )
            for name in self.topology.queues
        ]
        layout = self.topology.delay_layout

        def level_status(name: str, level: int) -> DelayLevelStatus:
            ttl_s = delays.level_ttl_ms(level) / 1000
            return DelayLevelStatus(name, ttl_s, counts[name].total, counts[name].node_down)

        levels = [level_status(layout.level_name(level), level) for level in range(delays.LEVELS)]
        legacy = [
            level_status(name, level)
            for level in range(delays.LEVELS)
            if (name := delays.legacy_level_name(level)) in counts and counts[name].exists
        ]
        node = self._node()
        return StatusReport(queues, levels, source, note, legacy, node=node)

    def _node(self) -> str:
        if self._conn is None:
            return ""
        try:
            return self._conn.node
        except ConnectionFailed:
            return ""

    async def _amqp_counts(self, names: list[str]) -> dict[str, QueueCounts]:
        found = await passive_counts(await self._connection(), names)
        return {name: _passive_counts_of(ok) for name, ok in found.items()}


@dataclass(frozen=True)
class Unreachable:
    """A passive declare's answer for a queue that exists on a node that is down or still
    starting (RabbitMQ's ``NOT_FOUND - home node ... is down or inaccessible``)."""

    reason: str


def _passive_counts_of(ok: spec.Queue.DeclareOk | Unreachable | None) -> QueueCounts:
    if ok is None:
        return QueueCounts(None, None, None, exists=False)
    if isinstance(ok, Unreachable):
        return QueueCounts(None, None, None, node_down=True)
    return QueueCounts(ok.message_count, None, ok.consumer_count)


async def waiting_per_level(
    connection: BrokerConnection, layout: delays.DelayLayout
) -> list[int | Unreachable | None]:
    """Messages in each level's queue of ``layout``: ``None`` where the queue does not exist,
    ``Unreachable`` where its node is down or still starting."""
    names = [layout.level_name(level) for level in range(delays.LEVELS)]
    found = await passive_counts(connection, names)
    return [_waiting(found[name]) for name in names]


async def legacy_waiting(connection: BrokerConnection) -> dict[str, int | Unreachable]:
    """Messages in each level of the layout before the level count was fixed, for the levels
    that still exist (none on a broker that never had it); ``Unreachable`` for one whose node
    is down or still starting: it exists, and may hold jobs."""
    names = [delays.legacy_level_name(level) for level in range(delays.LEVELS)]
    found = await passive_counts(connection, names)
    return {name: waiting for name, ok in found.items() if (waiting := _waiting(ok)) is not None}


def _waiting(ok: spec.Queue.DeclareOk | Unreachable | None) -> int | Unreachable | None:
    if ok is None or isinstance(ok, Unreachable):
        return ok
    return ok.message_count or 0


async def passive_counts(
    connection: BrokerConnection, names: list[str]
) -> dict[str, spec.Queue.DeclareOk | Unreachable | None]:
    """A passive declare of each queue in ``names`` (None where it does not exist,
    ``Unreachable`` where its node is down or still starting: RabbitMQ says ``NOT_FOUND`` for
    both), on plain channels: a robust one would repeat the refused declare after the broker
    closed it."""
    result: dict[str, spec.Queue.DeclareOk | Unreachable | None] = {}
    channel: aiormq.abc.AbstractChannel | None = None
    try:
        with broker_errors(connection.settings):
            for name in names:
                if channel is None or channel.is_closed:
                    channel = await connection.plain_channel()
                try:
                    result[name] = await channel.queue_declare(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity as exc:
                    # The broker closed the channel; the next queue gets a fresh one.
                    reason = reason_of(exc)
                    result[name] = Unreachable(reason) if node_down(reason) else None
    finally:
        await close_quietly(channel)
    return result


async def read_breakers(
    connection: BrokerConnection, topology: Topology
) -> dict[str, dict[str, Any] | None]:
    """The last published state of every circuit breaker of ``topology``: peeked (taken and
    put back at once) from its one-message queue; None where none was published yet or the
    queue cannot be read."""
    own = OwnLayout(topology.namespace)
    states: dict[str, dict[str, Any] | None] = {}
    channel = await connection.plain_channel(confirms=False)
    try:
        for name, job_type in topology.job_types.items():
            if job_type.breaker is None:
                continue
            states[name] = None
            got = await channel.basic_get(own.breaker_queue(name), no_ack=False)
            if not isinstance(got.delivery, spec.Basic.GetOk):
                continue
            await channel.basic_nack(got.delivery.delivery_tag or 0, requeue=True)
            with contextlib.suppress(ValueError):
                record = json.loads(got.body)
                states[name] = record if isinstance(record, dict) else None
    except aiormq.exceptions.AMQPError:
        pass  # a breaker queue missing (apply not run): its state shows as unknown
    finally:
        await close_quietly(channel)
    return states


def _queue_names(topology: Topology) -> list[str]:
    legacy = [delays.legacy_level_name(level) for level in range(delays.LEVELS)]
    return [spec.name for spec in desired_entities(topology).queues] + legacy


def _counts_of(raw: dict[str, Any]) -> QueueCounts:
    if raw.get("state") == "down":
        # A classic queue whose node is down: listed with its name and state only (3.10.8).
        return QueueCounts(None, None, None, node_down=True)
    stats = raw.get("message_stats") or {}

    def rate(key: str) -> float:
        details = stats.get(f"{key}_details") or {}
        value = details.get("rate", 0.0)
        return float(value) if isinstance(value, int | float) else 0.0

    return QueueCounts(
        ready=_int_or_none(raw.get("messages_ready")),
        unacked=_int_or_none(raw.get("messages_unacknowledged")),
        consumers=_int_or_none(raw.get("consumers")),
        rates=Rates(rate("publish"), rate("deliver_get"), rate("ack")),
        head_published_s=_int_or_none(raw.get("head_message_timestamp")),
    )


def _int_or_none(value: object) -> int | None:
    # A queue created moments ago has no statistics yet: unknown, not zero.
    return value if isinstance(value, int) and not isinstance(value, bool) else None
