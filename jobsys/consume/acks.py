"""Coalesced acks for one consumer channel.

Jobs that finish in the same event-loop turn are acked with one ``basic.ack(multiple=True)``
covering a contiguous run of delivery tags. A tag is only covered when every lower tag still
unsettled on the channel is ready too, so no job is ever acked before it finished, and none
that is being requeued.

An ack has no reply in AMQP: written into a socket that is already dead, it is lost without an
error, and the broker redelivers the job. So a batch of acks counts as sent only once a cheap
synchronous method sent after it on the same channel (``prove``, the worker's ``basic.qos``
with the prefetch it already has) is answered: the broker handles a channel's frames in order,
so its reply shows every ack before it arrived. One round trip is in flight at a time; acks
written meanwhile wait for the next one, so a busy channel costs one ``basic.qos`` per round
trip, not one per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import aiormq.exceptions
from aio_pika.exceptions import ChannelClosed, ChannelInvalidStateError

from jobsys.broker.connection import cancel_requested

#: Errors that mean the delivery's channel is gone: the broker has already requeued the job.
CHANNEL_GONE = (ChannelInvalidStateError, ChannelClosed, aiormq.exceptions.AMQPConnectionError)


class Tagged(Protocol):
    """Anything acked by its delivery tag."""

    @property
    def tag(self) -> int: ...


class AckChannel(Protocol):
    """What ``Acks`` needs of a channel (an aiormq channel has it; a test fake can too)."""

    @property
    def is_closed(self) -> bool: ...

    def basic_ack(
        self, delivery_tag: int, multiple: bool = ..., wait: bool = ...
    ) -> Awaitable[None]: ...

    def basic_nack(
        self, delivery_tag: int, multiple: bool = ..., requeue: bool = ..., wait: bool = ...
    ) -> Awaitable[None]: ...


T = TypeVar("T", bound=Tagged)


class Acks(Generic[T]):
    """Acks for one channel, coalesced (see the module docstring)."""

    def __init__(
        self,
        channel: AckChannel,
        on_sent: Callable[[list[T], list[T]], None],
        prove: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.channel = channel
        self._on_sent = on_sent  # (acked jobs, jobs whose ack found the channel gone)
        self._prove = prove  # a round trip after a batch (module docstring)
        self._pending: dict[int, T | None] = {}  # delivery tag -> job once ready; tag order
        self._scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()
        self._unproven: list[T] = []  # acks written, waiting for the next round trip
        self._proving = False  # one round trip at a time; it proves every ack written before

    def track(self, tag: int) -> None:
        """Note a delivery as unsettled."""
        self._pending[tag] = None

    @property
    def unsettled(self) -> int:
        """Deliveries on this channel whose ack or requeue has not been written yet: what the
        broker counts against the prefetch."""
        return len(self._pending)

    def ack(self, job: T) -> None:
        """Ack ``job`` soon, with the others finishing in this loop turn; ``on_sent`` reports
        the outcome. Returns at once, so the job's task is free for the next job."""
        self._pending[job.tag] = job
        if not self._scheduled:
            self._scheduled = True
            task = asyncio.get_running_loop().create_task(self._send_ready())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def flushed(self) -> None:
        """Wait until every ack asked for so far has been handed to the connection."""
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    async def _send_ready(self) -> None:
        self._scheduled = False  # acks from now on go out with the next flush
        run: list[T] = []  # ready jobs below the first unsettled tag: one multiple ack
        singles: list[T] = []  # ready jobs above it: acked one by one
        in_run = True
        for tag, job in list(self._pending.items()):
            if job is None:
                in_run = False
                continue
            del self._pending[tag]
            (run if in_run else singles).append(job)
        sent: list[T] = []
        lost: list[T] = []
        # An ack has no reply in AMQP, so not waiting for the socket to drain loses nothing: if
        # the channel closes before the frame is out, the broker requeues the job anyway.
        batches = [(run[-1].tag, True, run)] if run else []
        batches += [(job.tag, False, [job]) for job in singles]
        for tag, multiple, jobs in batches:
            try:
                await self.channel.basic_ack(tag, multiple=multiple, wait=False)
            except CHANNEL_GONE:
                lost += jobs
            else:
                sent += jobs
        if self._prove is None:
            self._on_sent(sent, lost)
            return
        if lost:
            self._on_sent([], lost)
        self._unproven += sent
        if self._proving:
            return  # the round trip under way, or the next one, covers these too
        self._proving = True
        try:
            while self._unproven:
                batch, self._unproven = self._unproven, []
                if await self._proven(self._prove):
                    self._on_sent(batch, [])
                else:
                    self._on_sent([], batch)
        finally:
            self._proving = False

    @staticmethod
    async def _proven(prove: Callable[[], Awaitable[Any]]) -> bool:
        """True once the broker answered the round trip after the acks just written."""
        try:
            await prove()
        except CHANNEL_GONE:
            return False
        except asyncio.CancelledError:
            # aiormq cancels the waits of a connection it declared dead; a real cancellation
            # of this flush (the worker stopping at once) goes on up.
            if cancel_requested():
                raise
            return False
        return True

    async def nack(self, tag: int) -> bool:
        """Requeue ``tag``; False when the channel is gone (it was requeued anyway)."""
        try:
            await self.channel.basic_nack(tag, requeue=True)
        except CHANNEL_GONE:
            return False
        finally:
            # Only now: until the nack is out, no multiple ack may cover this tag.
            self._pending.pop(tag, None)
        return True
