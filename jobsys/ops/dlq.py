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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from jobsys.broker.connection import BrokerConnection, translate_error
from jobsys.errors import JobsysError, PublishError, TopologyError, UnroutableError
from jobsys.observe import tracing
from jobsys.topology.delays import DELIVERY_EXCHANGE, delay_route
from jobsys.topology.model import dead_letter_queue_name
from jobsys.wire.envelope import (
    DL_ATTEMPTS,
    DL_ERROR_MESSAGE,
    DL_ERROR_TYPE,
    DL_FAILED_AT_MS,
    DL_ORIGINAL_EXCHANGE,
    DL_ORIGINAL_QUEUE,
    DL_ORIGINAL_ROUTING_KEY,
    DL_REASON,
    DL_TRACEBACK,
    DL_WORKER_HOST,
    HEADER_ATTEMPT,
    HEADER_FIRST_FAILED_AT_MS,
    HEADER_JOB_ID,
    HEADER_REPLAYS,
    new_message_id,
)

log = logging.getLogger(__name__)

#: Headers a dead-lettered job carries that a replay drops: the record of the last failure.
#: The first-failure time goes too, because a replayed job starts its attempts afresh.
DEAD_LETTER_HEADERS = frozenset(
    {
        DL_ERROR_TYPE,
        DL_ERROR_MESSAGE,
        DL_TRACEBACK,
        DL_ATTEMPTS,
        DL_FAILED_AT_MS,
        DL_ORIGINAL_EXCHANGE,
        DL_ORIGINAL_ROUTING_KEY,
        DL_ORIGINAL_QUEUE,
        DL_WORKER_HOST,
        DL_REASON,
        HEADER_FIRST_FAILED_AT_MS,
    }
)
#: How many jobs one look (``list``, ``show``) reads at most, so a huge dead-letter queue
#: cannot fill the client's memory or hold the whole queue unacked.
DEFAULT_SCAN_LIMIT = 10_000
#: Replays whose confirms are awaited together; also the most a kill can duplicate.
_REPLAY_BATCH = 50
_GET_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class DeadJob:
    """What the dead-letter queue knows about one job: its headers and size, never its body."""

    job_id: str | None
    job_type: str | None
    attempts: int | None
    error_type: str | None
    error_message: str | None
    failed_at_ms: int | None
    original_queue: str | None
    replays: int
    body_size: int
    headers: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Filter:
    """Which dead-lettered jobs an operation touches; ``None`` matches everything."""

    job_type: str | None = None
    job_id: str | None = None

    def matches(self, message: AbstractIncomingMessage) -> bool:
        """True when ``message`` is one of the jobs asked for."""
        if self.job_type is not None and message.type != self.job_type:
            return False
        return self.job_id is None or _text(_headers(message).get(HEADER_JOB_ID)) == self.job_id


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


def dead_job(message: AbstractIncomingMessage) -> DeadJob:
    """Describe a dead-lettered delivery. Jobs the broker dead-lettered itself (max length,
    delivery limit, message TTL) carry no ``jobsys-`` error headers; their reason and queue
    come from the broker's ``x-first-death-*`` headers."""
    headers = _headers(message)
    error_type = _text(headers.get(DL_ERROR_TYPE))
    reason = _text(headers.get("x-first-death-reason"))
    if error_type is None and reason is not None:
        error_type = f"broker: {reason}"
    return DeadJob(
        job_id=_text(headers.get(HEADER_JOB_ID)),
        job_type=message.type,
        attempts=_int(headers.get(DL_ATTEMPTS)) or _int(headers.get(HEADER_ATTEMPT)),
        error_type=error_type,
        error_message=_text(headers.get(DL_ERROR_MESSAGE)),
        failed_at_ms=_int(headers.get(DL_FAILED_AT_MS)),
        original_queue=_text(headers.get(DL_ORIGINAL_QUEUE))
        or _text(headers.get("x-first-death-queue")),
        replays=_int(headers.get(HEADER_REPLAYS)) or 0,
        body_size=len(message.body),
        headers=headers,
    )


def replay_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Headers of a replayed job: no failure record, no broker (``x-``) headers, attempt 1,
    and the replay count one higher. User headers, the job id and trace context stay."""
    kept = {
        name: value
        for name, value in headers.items()
        if name not in DEAD_LETTER_HEADERS and not name.lower().startswith("x-")
    }
    kept[HEADER_ATTEMPT] = 1
    kept[HEADER_REPLAYS] = (_int(headers.get(HEADER_REPLAYS)) or 0) + 1
    return kept


async def count(connection: BrokerConnection, queue: str) -> int:
    """Jobs waiting in the dead-letter queue of work queue ``queue``."""
    channel = await connection.channel(confirms=False)
    try:
        return await _message_count(channel, dead_letter_queue_name(queue))
    finally:
        await _close_quietly(channel)


async def peek(
    connection: BrokerConnection,
    queue: str,
    *,
    where: Filter | None = None,
    limit: int = 50,
    scan_limit: int = DEFAULT_SCAN_LIMIT,
) -> PeekResult:
    """The first ``limit`` dead-lettered jobs of ``queue`` that match ``where``, in queue
    order, reading at most ``scan_limit`` jobs. Every job read goes back where it was."""
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
                jobs.append(dead_job(message))
        if last is not None:
            # One nack puts every job read back, in order, without a redelivery loop.
            await last.nack(multiple=True, requeue=True)
        return PeekResult(jobs=jobs, scanned=scanned, total=total)
    finally:
        await _close_quietly(channel)


async def replay(
    connection: BrokerConnection,
    queue: str,
    *,
    levels: int,
    where: Filter | None = None,
    limit: int | None = None,
    rate: float | None = None,
    progress: Callable[[ReplayProgress], None] | None = None,
) -> ReplayProgress:
    """Put dead-lettered jobs of ``queue`` back into it: confirm first, then ack.

    One pass over the jobs there when it starts (jobs dead-lettered meanwhile wait for the next
    replay); ``limit`` caps the jobs replayed, ``rate`` the replays per second. Jobs that do not
    match ``where`` stay, in order. ``levels`` is the topology's delay level count, which the
    delivery exchange's routing keys depend on.
    """
    where = where or Filter()
    routing_key = delay_route(queue, 0, levels).routing_key
    get_channel = await connection.channel(confirms=False)
    publish_channel = await connection.channel(confirms=True)
    try:
        dlq_name = dead_letter_queue_name(queue)
        state = ReplayProgress(total=await _message_count(get_channel, dlq_name))
        dlq = await get_channel.get_queue(dlq_name, ensure=False)
        delivery = await publish_channel.get_exchange(DELIVERY_EXCHANGE, ensure=False)
        pacer = _Pacer(rate)
        # Paced replays go out one small batch at a time so the rate holds second by second.
        batch_size = _REPLAY_BATCH if rate is None else max(1, min(_REPLAY_BATCH, int(rate)))
        held: AbstractIncomingMessage | None = None
        batch: list[AbstractIncomingMessage] = []
        while state.scanned < state.total and (limit is None or state.replayed < limit):
            wanted = batch_size if limit is None else min(batch_size, limit - state.replayed)
            if len(batch) >= wanted:
                await _replay_batch(batch, delivery, routing_key, connection, state, progress)
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
        await _replay_batch(batch, delivery, routing_key, connection, state, progress)
        if held is not None:
            await held.nack(multiple=True, requeue=True)
        return state
    finally:
        await _close_quietly(publish_channel)
        # Closing the channel hands back anything still unacked (an interrupted batch).
        await _close_quietly(get_channel)


async def purge(connection: BrokerConnection, queue: str) -> int:
    """Delete every job in the dead-letter queue of ``queue``; returns how many."""
    channel = await connection.channel(confirms=False)
    try:
        dlq_name = dead_letter_queue_name(queue)
        await _message_count(channel, dlq_name)  # a clear error when it does not exist
        dlq = await channel.get_queue(dlq_name, ensure=False)
        result = await dlq.purge()
        return int(result.message_count or 0)
    except aiormq.exceptions.AMQPError as exc:
        raise translate_error(exc, connection.settings) from None
    finally:
        await _close_quietly(channel)


async def _replay_batch(
    batch: list[AbstractIncomingMessage],
    delivery: aio_pika.abc.AbstractExchange,
    routing_key: str,
    connection: BrokerConnection,
    state: ReplayProgress,
    progress: Callable[[ReplayProgress], None] | None,
) -> None:
    if not batch:
        return
    timeout = connection.settings.publish_timeout_s
    results = await asyncio.gather(
        *(_replay_one(message, delivery, routing_key, timeout) for message in batch),
        return_exceptions=True,
    )
    failure: JobsysError | None = None
    for message, result in zip(batch, results, strict=True):
        if isinstance(result, BaseException):
            # Not confirmed: this job stays in the dead-letter queue (closing the channel puts
            # it back). The confirmed ones are still acked so they are not replayed twice.
            failure = failure or _publish_failure(result, message, routing_key, connection)
            continue
        await message.ack()
        state.replayed += 1
        if progress is not None:
            progress(state)
    if failure is not None:
        raise failure


async def _replay_one(
    message: AbstractIncomingMessage,
    delivery: aio_pika.abc.AbstractExchange,
    routing_key: str,
    timeout_s: float,
) -> None:
    headers = replay_headers(_headers(message))
    # A fresh id per publish attempt: aiormq matches a return to its publish by it.
    message_id = new_message_id()
    # The replay continues the job's trace, as a child of its dead-letter publish.
    with tracing.publish_span(
        headers,
        job_type=message.type or "unknown",
        job_id=_text(headers.get(HEADER_JOB_ID)) or "unknown",
        exchange=DELIVERY_EXCHANGE,
        routing_key=routing_key,
        message_id=message_id,
        attempt=1,
        kind="replay",
        parent=tracing.extract(message.headers),
    ):
        replayed = _replayed(message, headers, message_id)
        await delivery.publish(replayed, routing_key, mandatory=True, timeout=timeout_s)


def _replayed(
    message: AbstractIncomingMessage, headers: dict[str, Any], message_id: str
) -> aio_pika.Message:
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


def _publish_failure(
    exc: BaseException,
    message: AbstractIncomingMessage,
    routing_key: str,
    connection: BrokerConnection,
) -> JobsysError:
    job_id = _text(_headers(message).get(HEADER_JOB_ID))
    if isinstance(exc, aiormq.exceptions.PublishError):
        return UnroutableError(
            f"replay of job {job_id} was returned by the broker: nothing on {DELIVERY_EXCHANGE} "
            f"routes {routing_key!r}; run `jobsys topology apply`",
            job_id=job_id,
        )
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return PublishError(f"the broker refused the replay of job {job_id}: {exc}", job_id=job_id)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return PublishError(f"no confirm for the replay of job {job_id} in time", job_id=job_id)
    return translate_error(exc, connection.settings)


async def _message_count(channel: AbstractChannel, name: str) -> int:
    try:
        declared = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        raise TopologyError(
            f"queue {name!r} does not exist on the broker; run `jobsys topology apply`"
        ) from None
    return int(declared.declaration_result.message_count or 0)


async def _get(
    queue: AbstractQueue, connection: BrokerConnection
) -> AbstractIncomingMessage | None:
    try:
        return await queue.get(no_ack=False, fail=False, timeout=_GET_TIMEOUT_S)
    except (TimeoutError, aiormq.exceptions.AMQPError, ConnectionError) as exc:
        raise translate_error(exc, connection.settings) from None


async def _close_quietly(channel: AbstractChannel) -> None:
    try:
        if not channel.is_closed:
            await channel.close()
    except Exception:  # the connection may be gone already; the broker requeues either way
        log.debug("closing a channel failed", exc_info=True)


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


def _headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    return dict(message.headers or {})


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return None


def _int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None
