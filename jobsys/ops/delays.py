"""Looking at the jobs waiting in the delay levels, and retiring the delay levels of the
layout before jobsys fixed its level count.

``peek_levels`` reads what waits without taking it: each level's first messages are fetched
with ``basic.get`` (not acked) on a channel of their own, their headers read, and the channel
closed, which gives them back to the broker. Measured on 3.10.8 (classic and quorum levels):
they go back in their place, keep their TTL expiry, and reach their queue with ``redelivered``
unset, as if never read. The cost: while held (a few ms per level) they cannot expire, so a job
due in that instant arrives that much later. On RabbitMQ 4.x a quorum level counts each peek as
a delivery of the job: peeked 20 times it is dead-lettered early to the next level, where it
still arrives on time (the worker holds an early job until its due time).

Those levels (``jobsys.delay.NN`` and ``jobsys.delivery``) had a level count that grew with
``delays.max_delay``; nothing publishes into them since, but jobs delayed before keep waiting
in them and arrive on time through them. Once they are empty, ``retire_legacy_levels`` deletes
them: the queues only if empty (the broker checks, so a job arriving meanwhile is never lost),
then their exchanges and the old delivery exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import aiormq.exceptions
from pamqp import commands as spec

from jobsys.broker.connection import BrokerConnection, broker_errors, close_quietly
from jobsys.broker.passive import node_down, reason_of
from jobsys.errors import JobsysError
from jobsys.ops.status import Unreachable, legacy_waiting
from jobsys.topology import delays
from jobsys.wire.headers import HEADER_ATTEMPT, HEADER_DUE_AT_MS, HEADER_JOB_ID, positive_int, text

#: The most jobs ``peek_levels`` reads per level (each is held while the level is read).
MAX_PEEK_PER_LEVEL = 10_000


@dataclass(frozen=True)
class WaitingJob:
    """One job waiting in a delay level, as its headers describe it."""

    level: int
    job_id: str | None
    job_type: str | None
    queue: str  # where it goes when due
    due_at_ms: int | None
    attempt: int | None


class Peeked(NamedTuple):
    """What ``peek_levels`` read."""

    jobs: list[WaitingJob]
    #: Per level, how many more jobs wait than were read.
    not_read: dict[int, int]
    #: Levels that exist on a node that is down or still starting: their jobs were not read.
    unreachable: list[int]


async def peek_levels(
    connection: BrokerConnection, layout: delays.DelayLayout, limit_per_level: int
) -> Peeked:
    """The first ``limit_per_level`` jobs of each delay level, left where they are; per level
    how many more wait than were read; and the levels that could not be read (node down)."""
    if not 1 <= limit_per_level <= MAX_PEEK_PER_LEVEL:
        raise ValueError(f"the limit per level is 1 to {MAX_PEEK_PER_LEVEL}")
    found: list[WaitingJob] = []
    more: dict[int, int] = {}
    unreachable: list[int] = []
    for level in range(delays.LEVELS):
        name = layout.level_name(level)
        channel = await connection.plain_channel()
        try:
            with broker_errors(connection.settings):
                try:
                    declared = await channel.queue_declare(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity as exc:
                    if node_down(reason_of(exc)):
                        unreachable.append(level)
                    continue  # or not declared: `delays status` says so
                waiting = declared.message_count or 0
                for _ in range(min(waiting, limit_per_level)):
                    message = await channel.basic_get(name, no_ack=False)
                    if not isinstance(message.delivery, spec.Basic.GetOk):
                        break
                    found.append(_waiting_job(level, message))
            if waiting > limit_per_level:
                more[level] = waiting - limit_per_level
        finally:
            await close_quietly(channel)  # the jobs read go back, in their place
    return Peeked(found, more, unreachable)


def _waiting_job(level: int, message: aiormq.abc.DeliveredMessage) -> WaitingJob:
    props = message.header.properties
    headers = props.headers or {}
    key = getattr(message.delivery, "routing_key", "") or ""
    # The routing key is one word per level (the delay in bits), then the destination queue.
    parts = key.split(".", delays.LEVELS)
    return WaitingJob(
        level=level,
        job_id=text(headers.get(HEADER_JOB_ID)),
        job_type=props.message_type,
        queue=parts[-1] if len(parts) > delays.LEVELS else "?",
        due_at_ms=positive_int(headers.get(HEADER_DUE_AT_MS)),
        attempt=positive_int(headers.get(HEADER_ATTEMPT)),
    )


class LegacyLevelsBusy(JobsysError):
    """Raised when an old delay level still holds jobs: retiring it would lose them."""


@dataclass(frozen=True)
class Retired:
    """What ``retire_legacy_levels`` deleted."""

    queues: tuple[str, ...]
    exchanges: tuple[str, ...]


async def retire_legacy_levels(connection: BrokerConnection) -> Retired:
    """Delete the old delay levels when every one of them is empty; ``LegacyLevelsBusy`` (and
    nothing deleted) while any still holds a job, or cannot be read because its node is down
    or still starting (it may hold jobs)."""
    waiting = await legacy_waiting(connection)
    down = sorted(name for name, count in waiting.items() if isinstance(count, Unreachable))
    if down:
        # It may hold jobs; they would dead-letter into a level deleted meanwhile and be lost.
        raise LegacyLevelsBusy(
            f"old delay levels cannot be read: the node that holds {', '.join(down)} is down or "
            "still starting, and they may hold jobs; nothing was deleted: run this again once "
            "the node is back"
        )
    busy = {name: count for name, count in waiting.items() if count}
    if busy:
        shown = ", ".join(f"{name}: {count}" for name, count in sorted(busy.items()))
        raise LegacyLevelsBusy(
            f"old delay levels still hold jobs ({shown}); they deliver them on time, so run "
            "this again once `jobsys delays status` shows them empty"
        )
    queues: list[str] = []
    channel = await connection.plain_channel()
    try:
        with broker_errors(connection.settings):
            for name in sorted(waiting):
                try:
                    await channel.queue_delete(name, if_empty=True)
                except aiormq.exceptions.ChannelPreconditionFailed:
                    raise LegacyLevelsBusy(
                        f"{name} received a job just now; nothing more was deleted: run this "
                        "again once it is delivered"
                    ) from None
                queues.append(name)
            exchanges = [*sorted(waiting), delays.LEGACY_DELIVERY_EXCHANGE] if waiting else []
            for name in exchanges:
                await channel.exchange_delete(name)
    finally:
        await close_quietly(channel)
    return Retired(tuple(queues), tuple(exchanges))
