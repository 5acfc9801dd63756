"""Dead-letter tooling: look at, replay and purge the jobs in a work queue's dead-letter queue.

Reading never loses or reorders anything: jobs are taken with ``basic.get`` and manual acks,
and the ones that are only looked at (or do not match a filter) stay unacked until the pass
ends, then go back with one ``nack(requeue=True)`` (the broker marks them redelivered). Holding
them unacked also keeps one pass from seeing the same job twice.

A replay publishes each job to its work queue through the delivery exchange, waits for the
broker's confirm, and only then acks the dead-lettered copy. The guarantee is at-least-once:
when a replay is interrupted (Ctrl-C, kill, lost connection), every job is either still in the
dead-letter queue or back in its work queue; a job whose confirm arrived but whose ack did not
reach the broker is in both, and a later replay puts it back a second time. Handlers are
idempotent by the job id, which a replay keeps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from jobsys.broker.connection import BrokerConnection, broker_errors, close_quietly
from jobsys.broker.passive import node_down, reason_of, unreachable
from jobsys.errors import TopologyError
from jobsys.observe.propagation import extract
from jobsys.publish.producer import Producer
from jobsys.topology.delays import DelayRoute
from jobsys.topology.model import dead_letter_queue_name
from jobsys.wire.deadletter import DeadJob, dead_job, replay_headers
from jobsys.wire.envelope import JobProperties
from jobsys.wire.headers import HEADER_JOB_ID, escape_invalid, sendable_headers, text

log = logging.getLogger(__name__)

#: How many jobs one look (``list``, ``show``) reads at most, so a huge dead-letter queue
#: cannot fill the client's memory or hold the whole queue unacked.
DEFAULT_SCAN_LIMIT = 10_000
#: Replays whose confirms are awaited together; also the most a kill can duplicate.
_REPLAY_BATCH = 50
_GET_TIMEOUT_S = 10.0

__all__ = [
    "DEFAULT_SCAN_LIMIT",
    "DeadJob",
    "Filter",
    "PeekResult",
    "ReplayProgress",
    "count",
    "peek",
    "purge",
    "replay",
]


@dataclass(frozen=True)
class Filter:
    """Which dead-lettered jobs an operation touches; ``None`` matches everything.
    ``job_id_prefix`` matches the ids that start with it (the 8 characters a table shows)."""

    job_type: str | None = None
    job_id: str | None = None
    job_id_prefix: str | None = None

    def matches(self, message: AbstractIncomingMessage) -> bool:
        """True when ``message`` is one of the jobs asked for."""
        if self.job_type is not None and message.type != self.job_type:
            return False
        if self.job_id is None and self.job_id_prefix is None:
            return True
        job_id = text(_headers(message).get(HEADER_JOB_ID))
        if job_id is None:
            return False
        if self.job_id is not None and job_id != self.job_id:
            return False
        return self.job_id_prefix is None or job_id.startswith(self.job_id_prefix)

    @property
    def everything(self) -> bool:
        """True when the filter matches every job."""
        return self == Filter()


@dataclass(frozen=True)
class PeekResult:
    """Jobs found by a look, and how much of the queue the look covered."""

    jobs: list[DeadJob]
    scanned: int
    total: int


@dataclass
class ReplayProgress:
    """Where a replay stands; passed to the progress callback after every job scanned."""

    total: int
    scanned: int = 0
    replayed: int = 0
    skipped: int = 0


async def count(connection: BrokerConnection, queue: str) -> int:
    """Jobs waiting in the dead-letter queue of work queue ``queue``."""
    channel = await connection.channel(confirms=False)
    try:
        return await _message_count(channel, dead_letter_queue_name(queue))
    finally:
        await close_quietly(channel)


async def peek(
    connection: BrokerConnection,
    queue: str,
    *,
    where: Filter | None = None,
    limit: int = 50,
    scan_limit: int = DEFAULT_SCAN_LIMIT,
    body_bytes: int = 0,
) -> PeekResult:
    """The first ``limit`` dead-lettered jobs of ``queue`` that match ``where``, in queue
    order, reading at most ``scan_limit`` jobs. Every job read goes back where it was.

    ``body_bytes`` above 0 keeps that many leading bytes of each job's body (``body_head``),
    for a viewer that was asked to show payloads; by default no body is kept."""
    where = where or Filter()
    channel = await connection.channel(confirms=False)
    try:
        dlq_name = dead_letter_queue_name(queue)
        total = await _message_count(channel, dlq_name)
        dlq = await channel.get_queue(dlq_name, ensure=False)
        jobs: list[DeadJob] = []
        scanned = 0
        last: AbstractIncomingMessage | None = None
        while scanned < min(total, scan_limit) and len(jobs) < limit:
            message = await _get(dlq, connection)
            if message is None:
                break
            scanned += 1
            last = message
            if where.matches(message):
                # Escaped: a message another client published may carry bytes that are not
                # UTF-8 where AMQP wants text (decoded leniently, see jobsys.broker.decoding).
                job_type = escape_invalid(message.type) if message.type else None
                headers = sendable_headers(_headers(message))
                head = bytes(message.body[:body_bytes]) if body_bytes > 0 else None
                jobs.append(dead_job(headers, job_type, len(message.body), head))
        if last is not None:
            # One nack puts every job read back, in order, without a redelivery loop.
            await last.nack(multiple=True, requeue=True)
            # The nack has no answer; a passive declare of the same queue after it does, and
            # the queue answers it only once the requeue is done. Without it, the next look
            # could start while jobs were still on their way back, count fewer and stop short.
            await _message_count(channel, dlq_name)
        return PeekResult(jobs=jobs, scanned=scanned, total=total)
    finally:
        await close_quietly(channel)


async def replay(
    producer: Producer,
    queue: str,
    *,
    where: Filter | None = None,
    limit: int | None = None,
    rate: float | None = None,
    progress: Callable[[ReplayProgress], None] | None = None,
) -> ReplayProgress:
    """Put dead-lettered jobs of ``queue`` back into it through ``producer`` (open, and made
    for the topology ``queue`` belongs to): confirm first, then ack.

    One pass over the jobs there when it starts (jobs dead-lettered meanwhile wait for the next
    replay); ``limit`` caps the jobs replayed, ``rate`` the replays per second. Jobs that do not
    match ``where`` stay, in order.
    """
    where = where or Filter()
    connection = producer.connection
    route = producer.delay_layout.route(queue, 0)
    get_channel = await connection.channel(confirms=False)
    try:
        dlq_name = dead_letter_queue_name(queue)
        state = ReplayProgress(total=await _message_count(get_channel, dlq_name))
        dlq = await get_channel.get_queue(dlq_name, ensure=False)
        pacer = _Pacer(rate)
        # Paced replays go out one small batch at a time so the rate holds second by second.
        batch_size = _REPLAY_BATCH if rate is None else max(1, min(_REPLAY_BATCH, int(rate)))
        held: AbstractIncomingMessage | None = None
        batch: list[AbstractIncomingMessage] = []
        while state.scanned < state.total and (limit is None or state.replayed < limit):
            wanted = batch_size if limit is None else min(batch_size, limit - state.replayed)
            if len(batch) >= wanted:
                await _replay_batch(batch, producer, queue, route, state, progress)
                batch = []
                continue
            message = await _get(dlq, connection)
            if message is None:
                break
            state.scanned += 1
            if where.matches(message):
                await pacer.wait()
                batch.append(message)
            else:
                held = message
                state.skipped += 1
                if progress is not None:
                    progress(state)
        await _replay_batch(batch, producer, queue, route, state, progress)
        if held is not None:
            await held.nack(multiple=True, requeue=True)
        return state
    finally:
        # Closing the channel hands back anything still unacked (an interrupted batch).
        await close_quietly(get_channel)


async def purge(connection: BrokerConnection, queue: str, *, where: Filter | None = None) -> int:
    """Delete the jobs of the dead-letter queue of ``queue`` that match ``where`` (all of them
    by default); returns how many. With a filter, one pass over the jobs there when it starts:
    each match is acked (deleted), the rest go back in order."""
    where = where or Filter()
    channel = await connection.channel(confirms=False)
    try:
        dlq_name = dead_letter_queue_name(queue)
        total = await _message_count(channel, dlq_name)  # a clear error when it is missing
        dlq = await channel.get_queue(dlq_name, ensure=False)
        if where.everything:
            with broker_errors(connection.settings):
                result = await dlq.purge()
            return int(result.message_count or 0)
        return await _purge_matching(dlq, connection, where, total)
    finally:
        await close_quietly(channel)


async def _purge_matching(
    dlq: AbstractQueue, connection: BrokerConnection, where: Filter, total: int
) -> int:
    purged = 0
    held: AbstractIncomingMessage | None = None
    for _ in range(total):
        message = await _get(dlq, connection)
        if message is None:
            break
        if where.matches(message):
            with broker_errors(connection.settings):
                await message.ack()
            purged += 1
        else:
            held = message
    if held is not None:
        # Jobs that stay are unacked until here: one nack puts them all back, in order.
        await held.nack(multiple=True, requeue=True)
    return purged


async def _replay_batch(
    batch: list[AbstractIncomingMessage],
    producer: Producer,
    queue: str,
    route: DelayRoute,
    state: ReplayProgress,
    progress: Callable[[ReplayProgress], None] | None,
) -> None:
    if not batch:
        return
    results = await asyncio.gather(
        *(_replay_one(message, producer, queue, route) for message in batch),
        return_exceptions=True,
    )
    failure: BaseException | None = None
    for message, result in zip(batch, results, strict=True):
        if isinstance(result, BaseException):
            # Not confirmed: this job stays in the dead-letter queue (closing the channel puts
            # it back). The confirmed ones are still acked so they are not replayed twice.
            failure = failure or result
            continue
        await message.ack()
        state.replayed += 1
        if progress is not None:
            progress(state)
    if failure is not None:
        raise failure


async def _replay_one(
    message: AbstractIncomingMessage, producer: Producer, queue: str, route: DelayRoute
) -> None:
    kept = JobProperties(
        job_type=message.type,
        priority=message.priority,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        app_id=message.app_id,
        # A timestamp past the year 9999 arrives as an integer (jobsys.broker.decoding), which
        # no copy can carry in this property: the replay gets the time of its publish.
        timestamp=message.timestamp if isinstance(message.timestamp, datetime) else None,
    ).sendable()
    # The replay continues the job's trace, as a child of its dead-letter publish.
    await producer.republish(
        message.body,
        replay_headers(sendable_headers(_headers(message))),
        route.exchange,
        route.routing_key,
        kept=kept,
        kind="replay",
        queues=(queue,),
        parent=extract(message.headers),
    )


async def _message_count(channel: AbstractChannel, name: str) -> int:
    try:
        declared = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        if node_down(reason_of(exc)):
            raise unreachable(f"queue {name!r}", reason_of(exc)) from None
        raise TopologyError(
            f"queue {name!r} does not exist on the broker; run `jobsys topology apply`"
        ) from None
    return int(declared.declaration_result.message_count or 0)


async def _get(
    queue: AbstractQueue, connection: BrokerConnection
) -> AbstractIncomingMessage | None:
    with broker_errors(connection.settings):
        return await queue.get(no_ack=False, fail=False, timeout=_GET_TIMEOUT_S)


class _Pacer:
    """Spaces calls ``1 / rate`` seconds apart (no pacing when ``rate`` is None)."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = time.monotonic()

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(self._next, now) + self._interval


def _headers(message: AbstractIncomingMessage) -> dict[str, object]:
    return dict(message.headers or {})
