"""Sending one message and knowing what happened: the confirm path beneath aio-pika.

``ConfirmChannel`` publishes on the aiormq channel under an aio-pika robust confirm channel and
awaits the broker's confirm; every way that can fail becomes one of jobsys's typed errors, by
what the caller can do about it:

* no binding matched (a ``basic.return``): ``UnroutableError`` -- fix the topology;
* the broker nacked (a full queue under ``x-overflow: reject-publish``): ``QueueFullError`` --
  retry later;
* the broker refused the publish itself (no write permission): ``AccessRefused``;
* the broker refused the message itself (a header it does not accept) and closed the channel:
  ``MessageRefusedError`` -- not published, and resubmitting it unchanged cannot help;
* the broker blocked the connection (memory or disk alarm) until the timeout:
  ``BrokerBlockedError``;
* the connection was lost, or no confirm came in time: ``PublishOutcomeUnknown`` -- the
  message may or may not be in its queue: publish it again with the same job id, which may
  queue a second copy that handlers deduplicating by job id run once.

While the robust connection reconnects, a publish waits for the channel to come back until its
deadline; if it does not, the message was not sent and the error says so. Going beneath
aio-pika's ``Exchange.publish`` is a measured speed choice (its message object and extra loop
turns cost more than the broker round trip they wrap); the guarantees are the same.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol, cast

import aiormq
import aiormq.abc
import aiormq.exceptions
from aio_pika import RobustChannel
from pamqp import commands as spec

from jobsys.broker.connection import cancel_requested, close_quietly
from jobsys.broker.deadlines import Deadlines
from jobsys.broker.direct_publish import DirectPublisher, broker_closed
from jobsys.broker.publish_errors import publish_error, reply_text, unknown
from jobsys.errors import (
    BrokerBlockedError,
    ConnectionFailed,
    JobsysError,
)
from jobsys.settings import Settings

log = logging.getLogger(__name__)

#: The least time between two retirements of the publishing channel after a nack.
RETIRE_EVERY_S = 1.0

#: Errors that mean the connection or channel went away before the confirm.
CONNECTION_LOST = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPChannelError,
    ConnectionError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to send, and what error messages say about it."""

    job_id: str
    job_type: str
    exchange: str
    routing_key: str
    body: bytes
    queues: tuple[str, ...] = ()  # the queues it is meant for, named in error messages


class Publishes(Protocol):
    """What sends a message and awaits its confirm: a ``ConfirmChannel``, or the in-memory
    edge of ``jobsys.testing``."""

    async def publish(self, out: Outgoing, props: spec.Basic.Properties) -> None:
        """Send ``out`` and return once it is confirmed as routed; raise its typed error."""


@dataclass(frozen=True, slots=True)
class _LiveChannel:
    """The aiormq channel a robust channel currently runs on, and its connection's
    "not blocked" event; replaced when the robust connection reopens the channel."""

    channel: aiormq.Channel
    unblocked: asyncio.Event
    #: Publishes without aiormq's per-publish machinery, when the channel has its shape.
    direct: DirectPublisher | None


class ConfirmChannel:
    """Publishes with confirms on ``robust`` (a confirm channel that raises on returns).

    ``refusals_dead_lettered`` names the queues whose refused publishes the broker copies to
    their dead-letter queue (``reject-publish-dlx``), so a ``QueueFullError`` can say so.
    """

    def __init__(
        self,
        robust: RobustChannel,
        settings: Settings,
        refusals_dead_lettered: frozenset[str] = frozenset(),
    ) -> None:
        self.robust = robust
        self.settings = settings
        self._refusals_dead_lettered = refusals_dead_lettered
        self._live: _LiveChannel | None = None
        #: Publishes awaiting their confirm, and how many there were on the channel the broker
        #: last closed for refusing a message (see ``_refused_alone``).
        self._in_flight = 0
        self._refused: tuple[aiormq.Channel, int] | None = None
        #: After a nack the next publish goes to a new channel (see ``_retire``); channels
        #: opened here (not the robust channel's own), and the connection last published on.
        self._fresh_next = False
        self._opened: set[aiormq.Channel] = set()
        self._retired_at: float | None = None  # loop time of the last retirement
        self._connection: object | None = None
        self._deadlines = Deadlines()
        #: One reopen at a time: every publish in flight fails in the same loop turn when the
        #: connection drops, and each opening a channel of its own ran the new connection out
        #: of channels (channel_max), which made the broker close it again.
        self._reopening = asyncio.Lock()

    async def publish(self, out: Outgoing, props: spec.Basic.Properties) -> None:
        """Publish ``out`` (persistent and mandatory as ``props`` says) and await the confirm;
        every failure becomes one typed error."""
        timeout_s = self.settings.publish_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        live = self._live
        if live is None or live.channel.is_closed or broker_closed(live.channel) is not None:
            live = await self._reopened(out, deadline)
        if not live.unblocked.is_set():
            await self._wait_unblocked(live.unblocked, out, deadline)
        if (closed := broker_closed(live.channel)) is not None:
            # Closed by the broker while this publish waited: writing it now would close the
            # whole connection (``broker_closed``). It was not sent.
            raise ConnectionFailed(
                f"job {out.job_id} ({out.job_type}) was not published: the broker closed its "
                f"channel ({reply_text(closed)}) before it was sent; publishing it again is safe"
            )
        self._in_flight += 1
        # The publish deadline is one of the channel's (``Deadlines``), not aiormq's timeout
        # argument, which arms and cancels a timer per publish.
        timer = self._deadlines.enter(timeout_s, at=deadline)
        try:
            direct = live.direct
            confirmation = None
            if direct is not None:
                confirmation = direct.publish(
                    out.body,
                    exchange=out.exchange,
                    routing_key=out.routing_key,
                    properties=props,
                    mandatory=True,
                )
            if confirmation is not None:
                await confirmation
            else:
                await live.channel.basic_publish(
                    out.body,
                    exchange=out.exchange,
                    routing_key=out.routing_key,
                    properties=props,
                    mandatory=True,
                    # Waiting for the socket to drain costs a loop turn per publish and proves
                    # nothing: the confirm is what counts, and it is always awaited.
                    wait=False,
                )
        except asyncio.CancelledError:
            if self._deadlines.leave(timer):
                # As aiormq's own timeout did: cancelled at the deadline, rolled back if the
                # frame was not written yet.
                raise self._failed(TimeoutError(), out, live, timeout_s) from None
            if cancel_requested():
                raise
            # aiormq cancels pending confirms when it declares the connection dead (e.g. a
            # heartbeat timeout) though nobody cancelled the caller.
            raise unknown(out.job_id, out.job_type, "the connection was lost") from None
        except (TimeoutError, aiormq.exceptions.AMQPError, *CONNECTION_LOST) as exc:
            self._deadlines.leave(timer)
            raise self._failed(exc, out, live, timeout_s) from None
        except Exception as exc:
            if type(exc) is not Exception:
                raise
            # What aiormq fails pending confirms with when its writer ended without an error
            # (the connection closing under it): the job may have been sent.
            raise unknown(out.job_id, out.job_type, "the connection was closed") from None
        finally:
            self._deadlines.leave(timer)
            self._in_flight -= 1

    def _failed(
        self, exc: BaseException, out: Outgoing, live: _LiveChannel, timeout_s: float
    ) -> JobsysError:
        """The typed error for a publish that failed with ``exc``; a nack retires the
        channel (``_retire``)."""
        nacked = isinstance(exc, aiormq.exceptions.DeliveryError) and not isinstance(
            exc, aiormq.exceptions.PublishError
        )
        if nacked and self._live is live and self._may_retire():
            self._retire(live.channel)
        return publish_error(
            exc,
            out,
            blocked=not live.unblocked.is_set(),
            timeout_s=timeout_s,
            refusals_dead_lettered=self._refusals_dead_lettered,
            alone=self._refused_alone(live.channel, exc),
        )

    def _refused_alone(self, channel: aiormq.Channel, exc: BaseException) -> bool:
        """Whether ``exc`` is the broker refusing a message while it was the only one awaiting
        its confirm on ``channel``. The broker closes the channel and aiormq fails every
        pending confirm alike, so with several in flight none can tell it was the one refused
        (those sent just before it may be queued). The first publish to see the close counts
        them all: the others have not run their ``finally`` yet."""
        if not isinstance(
            exc,
            aiormq.exceptions.ChannelPreconditionFailed | aiormq.exceptions.ChannelNotFoundEntity,
        ):
            return False
        if self._refused is None or self._refused[0] is not channel:
            self._refused = (channel, self._in_flight)
        return self._refused[1] == 1

    async def _reopened(self, out: Outgoing, deadline: float) -> _LiveChannel:
        """The live aiormq channel under the robust one; while the connection is being
        restored, wait for it until ``deadline`` (the job is not sent if it does not come).
        Publishes waiting here together get the one channel the first of them opened."""
        robust = self.robust
        try:
            async with asyncio.timeout_at(deadline), self._reopening:
                live = self._live
                if live is not None and broker_closed(live.channel) is not None:
                    # Publish on a new channel once aiormq has closed this one, not on it.
                    await asyncio.wait([live.channel.closing])
                elif live is not None and not live.channel.is_closed:
                    return live  # reopened by the publish that held the lock before
                # The robust connection reconnects and reopens the channel by itself.
                while robust.is_closed:
                    await robust.ready()
                    if robust.is_closed:
                        await asyncio.sleep(0.05)  # restored, then closed again: let it settle
                channel = cast(aiormq.Channel, await robust.get_underlay_channel())
                moved = self._connection is not None and self._connection is not channel.connection
                if self._fresh_next or moved:
                    channel = await self._fresh_channel(channel, out)
                self._connection = channel.connection
                self._live = _LiveChannel(
                    channel, _unblocked_event(channel), DirectPublisher.for_channel(channel)
                )
                return self._live
        except TimeoutError:
            raise ConnectionFailed(
                f"job {out.job_id} ({out.job_type}) was not published: the connection to "
                f"{self.settings.masked_url} did not come back within "
                f"{self.settings.publish_timeout_s:g}s"
            ) from None

    def _may_retire(self) -> bool:
        """At most one new channel per ``RETIRE_EVERY_S``: a queue that is simply full nacks
        every publish, and a channel per nack (each kept until its confirms time out) ran the
        connection out of channels (channel_max) within seconds, dropping it for every
        publisher and consumer on it."""
        now = asyncio.get_running_loop().time()
        if self._retired_at is not None and now - self._retired_at < RETIRE_EVERY_S:
            return False
        self._retired_at = now
        return True

    def _retire(self, channel: aiormq.Channel) -> None:
        """Stop publishing on ``channel`` after the broker nacked a message on it: the next
        publish opens a new channel. On a 3.10.8 cluster, a channel opened just as the node
        leading a quorum queue died had every later publish to that queue nacked, for minutes,
        while a channel opened a moment later on the same connection was confirmed at once
        (docs/cluster.md); a nack from a queue that is really full costs one channel. A channel
        opened here is closed once the publishes still awaiting its confirms have timed out."""
        self._live = None
        self._fresh_next = True
        if channel in self._opened:
            self._opened.discard(channel)
            loop = asyncio.get_running_loop()
            loop.call_later(
                self.settings.publish_timeout_s + 1,
                lambda: asyncio.ensure_future(close_quietly(channel)),
            )

    async def _fresh_channel(self, underlay: aiormq.Channel, out: Outgoing) -> aiormq.Channel:
        try:
            fresh = await underlay.connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
        except (aiormq.exceptions.AMQPError, *CONNECTION_LOST) as exc:
            raise ConnectionFailed(
                f"job {out.job_id} ({out.job_type}) was not published: no channel could be "
                f"opened on the new connection to {self.settings.masked_url} ({reply_text(exc)})"
            ) from None
        self._fresh_next = False
        channel = cast(aiormq.Channel, fresh)
        self._opened.add(channel)
        return channel

    async def _wait_unblocked(
        self, unblocked: asyncio.Event, out: Outgoing, deadline: float
    ) -> None:
        """Hold a publish back while the broker blocks the connection, so that on timeout
        the job is known not to have been sent."""
        try:
            async with asyncio.timeout_at(deadline):
                await unblocked.wait()
        except TimeoutError:
            raise BrokerBlockedError(
                f"the broker blocked publishing (memory or disk alarm) for longer than "
                f"{self.settings.publish_timeout_s:g}s; job {out.job_id} ({out.job_type}) was "
                "not published",
                job_id=out.job_id,
            ) from None


def _unblocked_event(channel: aiormq.abc.AbstractChannel) -> asyncio.Event:
    # aiormq tracks connection.blocked/unblocked in a private event and exposes no accessor;
    # read it defensively: a future aiormq without it only loses the blocked diagnosis.
    connection = getattr(channel, "connection", None)
    event = getattr(connection, "_Connection__connection_unblocked", None)
    if isinstance(event, asyncio.Event):
        return event
    always = asyncio.Event()
    always.set()
    return always
