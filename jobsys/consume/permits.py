"""Fleet-wide ``max_running`` per job type: permits held in the broker.

A job type with ``max_running: N`` has a permits queue holding N messages (filled by ``apply``
when it creates the queue). Before its handler runs, a job takes one with ``basic.get`` and
holds it *unacked*; when the attempt ends, however it ends (success, a raise, a deadline), the
permit goes back with ``nack(requeue=True)``. A worker that dies (``kill -9``, a lost
connection) never leaks one: the broker returns every unacked message of a closed channel to its
queue, in milliseconds. A permit is never acked, so none is ever consumed for good.

A job that finds no permit polls for a short while, then goes back through the delay levels to
try again later (the ``wait`` outcome): it is not run, burns no attempt and is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import cast

import aiormq
import aiormq.abc

from jobsys.broker.connection import BrokerConnection, broker_errors, close_quietly
from jobsys.broker.passive import declaring
from jobsys.consume.acks import CHANNEL_GONE
from jobsys.consume.basic_get import get_within
from jobsys.topology.model import Topology
from jobsys.topology.own import OwnLayout

log = logging.getLogger(__name__)

__all__ = ["PERMIT_POLL_S", "PERMIT_WAIT_S", "Permit", "Permits"]

#: How long a job polls for a permit before it goes back to wait in the delay levels.
PERMIT_POLL_S = 1.0
#: Between polls: a ``basic.get`` costs a round trip (about 1 ms here), an empty one too.
_POLL_INTERVAL_S = 0.02
#: How long a job without a permit waits in the delay levels before it tries again.
PERMIT_WAIT_S = 1.0


@dataclass(frozen=True)
class Permit:
    """One permit held: the channel it was taken on and its delivery tag there."""

    job_type: str
    channel: aiormq.abc.AbstractChannel
    tag: int


class Permits:
    """The permits of every limited job type, taken and returned on one channel."""

    def __init__(self, connection: BrokerConnection, topology: Topology) -> None:
        self._connection = connection
        own = OwnLayout(topology.namespace)
        self.queues = {
            name: own.permits_queue(name, job_type.max_running)
            for name, job_type in topology.job_types.items()
            if job_type.max_running is not None
        }
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._opening = asyncio.Lock()

    def limits(self, job_type: str | None) -> bool:
        """Whether jobs of ``job_type`` need a permit."""
        return job_type is not None and job_type in self.queues

    async def check(self) -> None:
        """``TopologyError`` when a permits queue is missing (apply has not run)."""
        for job_type, queue in self.queues.items():
            channel = cast(aiormq.Channel, await self._connection.plain_channel(confirms=False))
            try:
                with (
                    broker_errors(self._connection.settings),
                    declaring(f"the permits queue {queue} of job type {job_type!r} (max_running)"),
                ):
                    await channel.queue_declare(queue, passive=True)
            finally:
                await close_quietly(channel)

    async def take(self, job_type: str) -> Permit | None:
        """A permit of ``job_type``, or None when none came free within ``PERMIT_POLL_S``."""
        queue = self.queues[job_type]
        got = await get_within(
            self._current,
            queue,
            no_ack=False,
            within_s=PERMIT_POLL_S,
            interval_s=_POLL_INTERVAL_S,
            what="a permit",
        )
        if got is None:
            return None
        channel, tag = got
        return Permit(job_type, channel, tag)

    async def release(self, permit: Permit) -> None:
        """Give ``permit`` back. On a channel that has closed since, the broker already did."""
        if permit.channel.is_closed:
            return
        with contextlib.suppress(*CHANNEL_GONE):
            await permit.channel.basic_nack(permit.tag, requeue=True)

    async def close(self) -> None:
        """Close the channel: the broker returns every permit still held on it."""
        if self._channel is not None:
            await close_quietly(self._channel)

    async def _current(self) -> aiormq.abc.AbstractChannel:
        # A plain channel of the connection's current transport, opened again after a loss;
        # permits held on the old one went back to their queues when it closed.
        async with self._opening:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._connection.plain_channel(confirms=False)
            return self._channel
