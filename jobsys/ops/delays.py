"""Retiring the delay levels of the layout before jobsys fixed its level count.

Those levels (``jobsys.delay.NN`` and ``jobsys.delivery``) had a level count that grew with
``delays.max_delay``; nothing publishes into them since, but jobs delayed before keep waiting
in them and arrive on time through them. Once they are empty, ``retire_legacy_levels`` deletes
them: the queues only if empty (the broker checks, so a job arriving meanwhile is never lost),
then their exchanges and the old delivery exchange.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiormq.exceptions

from jobsys.broker.connection import BrokerConnection, broker_errors, close_quietly
from jobsys.errors import JobsysError
from jobsys.ops.status import legacy_waiting
from jobsys.topology import delays


class LegacyLevelsBusy(JobsysError):
    """Raised when an old delay level still holds jobs: retiring it would lose them."""


@dataclass(frozen=True)
class Retired:
    """What ``retire_legacy_levels`` deleted."""

    queues: tuple[str, ...]
    exchanges: tuple[str, ...]


async def retire_legacy_levels(connection: BrokerConnection) -> Retired:
    """Delete the old delay levels when every one of them is empty; ``LegacyLevelsBusy`` (and
    nothing deleted) while any still holds a job."""
    waiting = await legacy_waiting(connection)
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
