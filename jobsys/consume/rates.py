"""Fleet-wide ``rate_limit`` per job type: token buckets in the broker, one elected refiller.

Each rate-limited job type has a bucket, ``<namespace>.tokens.<job type>``: a queue of at most
``burst`` tokens (``x-max-length``, drop-head). Before a job of the type starts, its worker takes
one with ``basic.get`` (acked on delivery: a token is spent, never returned). A job that finds
none polls for a short while, then goes back through the delay levels to try again (the ``wait``
outcome: not run, no attempt burnt, never lost).

One process refills every bucket at its rate. Every worker whose topology has rate limits
stands for election on ``<namespace>.refiller``, a single-active-consumer queue holding one
election token: the broker delivers it to one consumer only, and that one refills. When it dies
(``kill -9``, a lost connection) the broker hands the token to the next in 2-8 ms (a hung
process keeps it until its heartbeat expires), so a killed refiller is replaced by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any, cast

import aiormq
import aiormq.abc
from aiormq import spec

from jobsys.broker.connection import BrokerConnection, broker_errors, close_quietly
from jobsys.broker.passive import declaring
from jobsys.consume.basic_get import get_within
from jobsys.errors import JobsysError
from jobsys.topology.model import Topology
from jobsys.topology.own import REFILLER_KEY, OwnLayout

log = logging.getLogger(__name__)

__all__ = ["TOKEN_POLL_S", "TOKEN_WAIT_S", "Refiller", "Tokens"]

#: How long a job polls for a token before it goes back to wait in the delay levels.
TOKEN_POLL_S = 1.0
_POLL_INTERVAL_S = 0.01
#: How long a job without a token waits in the delay levels before it tries again.
TOKEN_WAIT_S = 1.0
#: The refiller publishes what is due this often.
_REFILL_TICK_S = 0.01
_RESTAND_S = 1.0


def _limited(topology: Topology) -> dict[str, float]:
    return {
        name: job_type.rate_limit
        for name, job_type in topology.job_types.items()
        if job_type.rate_limit is not None
    }


class Tokens:
    """Takes tokens from the buckets, on one channel of the worker's connection."""

    def __init__(self, connection: BrokerConnection, topology: Topology) -> None:
        own = OwnLayout(topology.namespace)
        self._connection = connection
        self.buckets = {name: own.tokens_queue(name) for name in _limited(topology)}
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._opening = asyncio.Lock()

    async def check(self, refiller_queue: str) -> None:
        """``TopologyError`` when a bucket or the election queue is missing (apply not run)."""
        for queue in (*self.buckets.values(), refiller_queue):
            channel = cast(aiormq.Channel, await self._connection.plain_channel(confirms=False))
            try:
                with (
                    broker_errors(self._connection.settings),
                    declaring(f"the rate-limit queue {queue}"),
                ):
                    await channel.queue_declare(queue, passive=True)
            finally:
                await close_quietly(channel)

    def limits(self, job_type: str | None) -> bool:
        """Whether jobs of ``job_type`` need a token."""
        return job_type is not None and job_type in self.buckets

    async def take(self, job_type: str) -> bool:
        """Spend a token of ``job_type``; False when none came within ``TOKEN_POLL_S``."""
        got = await get_within(
            self._current,
            self.buckets[job_type],
            no_ack=True,
            within_s=TOKEN_POLL_S,
            interval_s=_POLL_INTERVAL_S,
            what="a token",
        )
        return got is not None

    async def close(self) -> None:
        """Close the channel."""
        await close_quietly(self._channel)

    async def _current(self) -> aiormq.abc.AbstractChannel:
        async with self._opening:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._connection.plain_channel(confirms=False)
            return self._channel


class Refiller:
    """Stands for election as the refiller of the topology's buckets, and refills them while
    elected; runs as a task until ``close``."""

    def __init__(self, connection: BrokerConnection, topology: Topology) -> None:
        self._connection = connection
        self._own = OwnLayout(topology.namespace)
        self._rates = _limited(topology)
        self.leading = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None

    def start(self) -> None:
        """Stand for election in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop refilling; the election token goes to the next process."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await close_quietly(self._channel)

    async def _run(self) -> None:
        while True:
            try:
                await self._term()
            except (JobsysError, aiormq.exceptions.AMQPError, ConnectionError) as exc:
                log.warning("rate-limit refiller lost its channel: %s; standing again", exc)
            self.leading.clear()
            await close_quietly(self._channel)
            await asyncio.sleep(_RESTAND_S)

    async def _term(self) -> None:
        channel = self._channel = await self._connection.plain_channel(confirms=False)
        await channel.basic_qos(prefetch_count=1)
        declared = await channel.queue_declare(self._own.refiller_queue, passive=True)
        if not declared.message_count:
            # No token waits (the first process ever, or the refiller holds it): add one; the
            # queue keeps at most one waiting, and only its active consumer gets any.
            await channel.basic_publish(
                b"",
                exchange=self._own.tokens_exchange,
                routing_key=REFILLER_KEY,
                properties=spec.Basic.Properties(delivery_mode=2, message_type="jobsys.token"),
            )
        elected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_token(_: Any) -> None:
            if not elected.done():
                elected.set_result(None)

        await channel.basic_consume(self._own.refiller_queue, on_token)
        await asyncio.wait({elected, channel.closing}, return_when=asyncio.FIRST_COMPLETED)
        if channel.is_closed:
            raise aiormq.exceptions.ChannelClosed("the election channel closed")
        log.info("rate-limit refiller elected: refilling %s", ", ".join(self._rates))
        self.leading.set()
        await self._refill(channel)

    async def _refill(self, channel: aiormq.abc.AbstractChannel) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = dict.fromkeys(self._rates, 0)
        properties = spec.Basic.Properties(message_type="jobsys.rate-token")
        while not channel.is_closed:
            elapsed = loop.time() - started
            for job_type, rate in self._rates.items():
                due = math.floor(elapsed * rate) - sent[job_type]
                for _ in range(due):
                    await channel.basic_publish(
                        b"",
                        exchange=self._own.tokens_exchange,
                        routing_key=job_type,
                        properties=properties,
                    )
                sent[job_type] += due
            await asyncio.sleep(_REFILL_TICK_S)
        raise aiormq.exceptions.ChannelClosed("the election channel closed")
