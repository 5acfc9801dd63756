"""Replies to waiting callers: the worker's half of ``Producer.call`` (see ``jobsys.wire.reply``).

A job that carries a direct reply-to address gets one reply when it is settled for good: its
result when it succeeded, the error when it was dead-lettered, a note when it was cancelled.
Nothing else is ever answered (a retry, a wait, a requeue), and nothing but a direct reply-to
address: a ``reply_to`` naming a queue or exchange is ignored.

Order and cost: the reply is handed to the connection just before the ack, in the same loop
turn, without waiting for anything (no confirm: a direct reply-to reply is never confirmed as
delivered anyway, and a caller that went away simply does not get it). So a reply costs the ack
path one frame write and never a round trip. A worker that dies between the two has replied but
not acked: the broker redelivers the job, it runs again (delivery is at least once) and replies
again to an address whose caller has already returned, and the broker drops that reply.

The replies go out on a channel of their own, never on a pool's consumer channel: were the
broker ever to close a channel over a reply (3.10-4.x drop a reply to an address whose caller is
gone, but a broker version that closed the channel instead would otherwise take every unacked
job of the pool with it), only this channel closes, and the next reply opens a new one. A reply
that cannot be sent is logged and dropped; it never fails or delays a job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
from pamqp import commands as spec

from jobsys.consume.attempt import Delivery
from jobsys.consume.outcome import Outcome
from jobsys.errors import MessageError, Reject, ResultError
from jobsys.wire.deadletter import error_text, error_type_name
from jobsys.wire.display import escape
from jobsys.wire.reply import (
    REPLY_TYPE,
    failed_headers,
    is_correlation_id,
    is_reply_address,
    ok_headers,
)

log = logging.getLogger(__name__)

_NULL = b"null"
_CONTENT_TYPE = "application/json"
#: Failures that resubmitting the job unchanged repeats: bad input, a refused result, Reject.
_NOT_WORTH_RESUBMITTING = (MessageError, ResultError, Reject)


class ReplySender:
    """Sends replies on a channel of its own, opened by ``open_channel`` (again, after the
    broker or a reconnect closed the last one)."""

    def __init__(self, open_channel: Callable[[], Awaitable[aiormq.Channel]]) -> None:
        self._open_channel = open_channel
        self._channel: aiormq.Channel | None = None
        self._lock = asyncio.Lock()
        self.sent = 0
        self.dropped = 0
        self.ignored = 0  # a reply_to that is not a direct reply-to address
        self._warned_ignored = False

    async def succeeded(self, delivery: Delivery, outcome: Outcome) -> None:
        """Reply to ``delivery``'s caller, if any, with the result of ``outcome``."""
        target = self._target(delivery)
        if target is None:
            return
        job_id = delivery.job_id or "unknown"
        headers = ok_headers(job_id, delivery.attempt)
        await self._send(target, headers, outcome.result or _NULL, job_id)

    async def failed(self, delivery: Delivery, outcome: Outcome) -> None:
        """Reply to ``delivery``'s caller, if any, that the job was dead-lettered (or, for a
        ``cancel`` outcome, cancelled)."""
        target = self._target(delivery)
        if target is None:
            return
        job_id = delivery.job_id or "unknown"
        if outcome.kind == "cancel":
            headers = failed_headers(
                job_id,
                outcome="cancelled",
                error_type="cancelled",
                error_message="the job was cancelled before it ran",
                attempts=max(delivery.attempt - 1, 0),
                reason=None,
                safe_to_resubmit=True,
            )
        else:
            error = outcome.error
            headers = failed_headers(
                job_id,
                outcome="dead_lettered",
                error_type=error_type_name(error) if error is not None else "unknown",
                error_message=error_text(error) if error is not None else "",
                attempts=delivery.attempt,
                reason=outcome.reason,
                safe_to_resubmit=not isinstance(error, _NOT_WORTH_RESUBMITTING),
            )
        await self._send(target, headers, b"", job_id)

    def _target(self, delivery: Delivery) -> tuple[str, str] | None:
        """The (address, correlation id) to reply to; None when the job wants no reply or
        names something a worker never replies to."""
        props = delivery.message.header.properties
        reply_to = props.reply_to
        if not reply_to:
            return None
        correlation_id = props.correlation_id
        if is_reply_address(reply_to) and is_correlation_id(correlation_id):
            assert correlation_id is not None
            return reply_to, correlation_id
        self.ignored += 1
        if not self._warned_ignored:
            self._warned_ignored = True  # once: a hostile publisher must not flood the log
            log.warning(
                "job %s (%s) names reply_to %s with correlation id %s; a worker replies only to "
                "a direct reply-to address (amq.rabbitmq.reply-to.*) with a UTF-8 correlation "
                "id, so it gets no reply (logged once)",
                escape(delivery.job_id or "unknown"),
                escape(delivery.job_type or "unknown"),
                escape(reply_to[:80]),
                escape((correlation_id or "")[:80]),
            )
        return None

    async def _send(
        self, target: tuple[str, str], headers: dict[str, Any], body: bytes, job_id: str
    ) -> None:
        address, correlation_id = target
        props = spec.Basic.Properties(
            content_type=_CONTENT_TYPE,
            headers=headers,
            delivery_mode=1,  # a reply lives as long as its caller's channel, no longer
            correlation_id=correlation_id,
            message_type=REPLY_TYPE,
        )
        try:
            channel = await self._live_channel()
            # The default exchange, never mandatory: the broker returns a mandatory reply to a
            # direct reply-to address even when it delivered it.
            await channel.basic_publish(
                body, exchange="", routing_key=address, properties=props, wait=False
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.dropped += 1
            log.warning(
                "job %s: its reply could not be sent (%s); the caller will not get it",
                escape(job_id),
                type(exc).__name__,
            )
            return
        self.sent += 1

    async def _live_channel(self) -> aiormq.Channel:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._open_channel()
            return self._channel

    async def close(self) -> None:
        """Close the reply channel (safe to call twice)."""
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await channel.close()
