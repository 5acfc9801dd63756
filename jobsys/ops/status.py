"""What the broker holds for a topology right now: per work queue ready, unacked, consumers and
dead-letter depth; jobs waiting in the delay levels; rates when the management API answers.

The management API (``GET /api/queues/{vhost}``) gives everything, with a lag of a few seconds
(its statistics interval). Without it, a passive declare per queue gives the exact ready count
and the consumer count over AMQP; unacked messages and rates are then unknown (shown as ``-``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import aiormq
import aiormq.abc
import aiormq.exceptions

from jobsys.broker.connection import BrokerConnection, translate_error
from jobsys.broker.management import (
    ManagementEndpoint,
    ManagementUnavailable,
    management_endpoint,
)
from jobsys.settings import Settings
from jobsys.topology import delays
from jobsys.topology.entities import desired_entities
from jobsys.topology.model import Topology, dead_letter_queue_name

_MANAGEMENT_TIMEOUT_S = 5.0


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


@dataclass(frozen=True)
class StatusReport:
    """Everything ``jobsys status`` shows."""

    queues: list[QueueStatus]
    delay_levels: list[DelayLevelStatus]
    source: Literal["management", "amqp"]
    note: str = ""

    @property
    def delayed_total(self) -> int | None:
        """Jobs waiting in all delay levels (None when a level could not be read)."""
        counts = [level.waiting for level in self.delay_levels]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)


class StatusReader:
    """Reads a ``StatusReport`` for one topology, again and again (``--watch``).

    Uses the management API while it answers; once it does not, falls back to AMQP for the
    reader's life and keeps one connection open for the refreshes.
    """

    def __init__(self, settings: Settings, topology: Topology, *, use_management: bool) -> None:
        self.settings = settings
        self.topology = topology
        self._endpoint: ManagementEndpoint | None = (
            management_endpoint(settings) if use_management else None
        )
        self._note = "" if use_management else "the management API was not used (--no-management)"
        self._conn: BrokerConnection | None = None

    async def read(self) -> StatusReport:
        """The broker's numbers now."""
        names = _queue_names(self.topology)
        if self._endpoint is not None:
            try:
                counts = await asyncio.to_thread(_management_counts, self._endpoint, self.settings)
            except ManagementUnavailable as exc:
                self._endpoint = None
                self._note = f"{exc}; read over AMQP instead (no unacked counts, no rates)"
            else:
                missing = QueueCounts(None, None, None, exists=False)
                found = {name: counts.get(name, missing) for name in names}
                note = f"from the management API at {management_endpoint(self.settings).masked}"
                return self._report(found, "management", note)
        return self._report(await self._amqp_counts(names), "amqp", self._note)

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
        levels = [
            DelayLevelStatus(
                delays.level_name(level),
                delays.level_ttl_ms(level) / 1000,
                counts[delays.level_name(level)].total,
            )
            for level in range(delays.level_count(self.topology.delays.max_delay))
        ]
        return StatusReport(queues, levels, source, note)

    async def _amqp_counts(self, names: list[str]) -> dict[str, QueueCounts]:
        if self._conn is None:
            self._conn = await BrokerConnection(self.settings).open()
        conn = self._conn
        amqp: aiormq.abc.AbstractConnection = conn.connection.transport.connection  # type: ignore[union-attr]
        channel: aiormq.abc.AbstractChannel | None = None
        result: dict[str, QueueCounts] = {}
        try:
            for name in names:
                if channel is None or channel.is_closed:
                    channel = await amqp.channel()
                try:
                    ok = await channel.queue_declare(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    # The broker closed the channel; the next queue gets a fresh one.
                    result[name] = QueueCounts(None, None, None, exists=False)
                    continue
                result[name] = QueueCounts(ok.message_count, None, ok.consumer_count)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and _cancelled():
                raise
            raise translate_error(exc, self.settings) from None
        finally:
            if channel is not None and not channel.is_closed:
                with contextlib.suppress(aiormq.exceptions.AMQPError):
                    await channel.close()
        return result


async def waiting_per_level(connection: BrokerConnection, levels: int) -> list[int | None]:
    """Messages in each level's queue, ``None`` where the queue does not exist."""
    counts: list[int | None] = []
    channel = await connection.channel(confirms=False)
    try:
        for level in range(levels):
            try:
                declared = await channel.declare_queue(delays.level_name(level), passive=True)
                counts.append(int(declared.declaration_result.message_count or 0))
            except aiormq.exceptions.ChannelNotFoundEntity:
                counts.append(None)
                # A failed passive declare closes the channel; go on with a fresh one.
                await channel.close()
                channel = await connection.channel(confirms=False)
            except aiormq.exceptions.AMQPError as exc:
                raise translate_error(exc, connection.settings) from None
    finally:
        if not channel.is_closed:
            await channel.close()
    return counts


def _queue_names(topology: Topology) -> list[str]:
    return [spec.name for spec in desired_entities(topology).queues]


def _management_counts(endpoint: ManagementEndpoint, settings: Settings) -> dict[str, QueueCounts]:
    """Every queue of the vhost, from one management API request (run in a thread)."""
    columns = "name,messages,messages_ready,messages_unacknowledged,consumers,message_stats"
    path = f"/api/queues/{quote(settings.vhost, safe='')}?columns={columns}"
    token = base64.b64encode(f"{endpoint.username}:{endpoint.password}".encode()).decode()
    request = urllib.request.Request(
        endpoint.base_url + path, headers={"authorization": f"Basic {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=_MANAGEMENT_TIMEOUT_S) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        reason = "refused the login" if exc.code in (401, 403) else f"answered {exc.code}"
        raise ManagementUnavailable(f"the management API at {endpoint.masked} {reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        cause = getattr(exc, "reason", exc)
        raise ManagementUnavailable(
            f"the management API at {endpoint.masked} is unreachable ({cause})"
        ) from None
    if not isinstance(data, list):
        raise ManagementUnavailable(
            f"unexpected answer from the management API at {endpoint.masked}"
        )
    return {str(raw["name"]): _counts_of(raw) for raw in data if isinstance(raw, dict)}


def _counts_of(raw: dict[str, Any]) -> QueueCounts:
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
    )


def _int_or_none(value: object) -> int | None:
    # A queue created moments ago has no statistics yet: unknown, not zero.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


# -- rendering ---------------------------------------------------------------------------------


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def render_status(report: StatusReport) -> str:
    """The report as the plain-text table ``jobsys status`` prints."""
    with_rates = report.source == "management"
    header = ["queue", "ready", "unacked", "consumers", "dead-letter"]
    if with_rates:
        header += ["in/s", "out/s", "ack/s"]
    rows = [header]
    for queue in report.queues:
        counts = queue.counts
        row = [
            queue.name if counts.exists else f"{queue.name} (missing)",
            _n(counts.ready),
            _n(counts.unacked),
            _n(counts.consumers),
            _n(queue.dead_letter.total),
        ]
        if with_rates:
            rates = counts.rates
            row += (
                [f"{rates.published:.1f}", f"{rates.delivered:.1f}", f"{rates.acked:.1f}"]
                if rates is not None
                else ["-", "-", "-"]
            )
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    busy = [f"{level.name}: {level.waiting}" for level in report.delay_levels if level.waiting]
    total = _n(report.delayed_total)
    lines.append("")
    lines.append(
        f"jobs waiting in delay levels: {total}" + (f" ({', '.join(busy)})" if busy else "")
    )
    if any(not queue.counts.exists for queue in report.queues):
        lines.append("some queues are missing: `jobsys topology apply FILE` declares them")
    if report.note:
        lines.append(report.note)
    return "\n".join(lines)
