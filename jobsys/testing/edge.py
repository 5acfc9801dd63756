"""The kit's broker edge: what a ``Producer``, ``Acks`` and ``ReplySender`` talk to in place of
RabbitMQ channels.

A publish goes to the ``MemoryBroker``; what the broker would answer (a return, a nack, a
closed channel for a missing exchange) is raised as the aiormq exception the real channel
raises, and turned into jobsys's typed error by the same ``broker.confirm.publish_error`` a
real publish goes through, so a test sees exactly the error a service would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiormq.exceptions
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader

from jobsys.broker.confirm import Outgoing
from jobsys.broker.publish_errors import publish_error
from jobsys.testing.broker import MemoryBroker, MemoryQueue, NoSuchExchange

#: RabbitMQ's default ``frame_max`` (what a real producer's header limit is computed from).
FRAME_MAX = 131072


@dataclass(frozen=True)
class Sent:
    """One message a producer sent and the broker confirmed (inspection)."""

    job_id: str
    job_type: str
    exchange: str
    routing_key: str
    queues: tuple[str, ...]  # the queues it reached, in binding order
    headers: dict[str, Any] = field(repr=False)
    priority: int | None
    at_ms: int


class MemoryConfirms:
    """Publishes into ``broker`` and answers as a confirm channel publishing ``mandatory``."""

    frame_max = FRAME_MAX

    def __init__(
        self,
        broker: MemoryBroker,
        now_ms: Callable[[], int],
        call: Callable[..., Awaitable[Any]],
        *,
        refusals_dead_lettered: frozenset[str] = frozenset(),
    ) -> None:
        self.broker = broker
        self._now_ms = now_ms
        self._call = call
        self._refusals = refusals_dead_lettered
        #: Every confirmed publish, in order.
        self.sent: list[Sent] = []

    async def publish(self, out: Outgoing, props: spec.Basic.Properties) -> None:
        """Route ``out``; raise the typed error a real confirm channel would."""
        try:
            status, queues = self.broker.publish(out.exchange, out.routing_key, out.body, props)
        except NoSuchExchange:
            reply = f"NOT_FOUND - no exchange '{out.exchange}' in vhost"
            raise self._error(aiormq.exceptions.ChannelNotFoundEntity(404, reply), out) from None
        if status == "unroutable":
            raise self._error(_returned(out, props), out)
        if status == "refused":
            raise self._error(aiormq.exceptions.DeliveryError(None, spec.Basic.Nack()), out)
        self.sent.append(
            Sent(
                out.job_id,
                out.job_type,
                out.exchange,
                out.routing_key,
                tuple(queues),
                dict(props.headers or {}),
                props.priority,
                self._now_ms(),
            )
        )

    async def call_through(self, *args: Any, **kwargs: Any) -> Any:
        """``Producer.call`` on the kit (``jobsys.testing.calls``)."""
        return await self._call(*args, **kwargs)

    def _error(self, exc: BaseException, out: Outgoing) -> Exception:
        # The kit refuses exactly the one publish it was handed: nothing else was in flight.
        return publish_error(
            exc,
            out,
            blocked=False,
            timeout_s=30.0,
            refusals_dead_lettered=self._refusals,
            alone=True,
        )


def _returned(out: Outgoing, props: spec.Basic.Properties) -> aiormq.exceptions.PublishError:
    frame = spec.Basic.Return(
        reply_code=312, reply_text="NO_ROUTE", exchange=out.exchange, routing_key=out.routing_key
    )
    header = ContentHeader(body_size=len(out.body), properties=props)
    returned = DeliveredMessage(delivery=frame, header=header, body=out.body, channel=None)  # type: ignore[arg-type]
    return aiormq.exceptions.PublishError(returned, frame)


class MemoryAckChannel:
    """A consumer channel of one queue: acks and nacks settle the queue's delivered messages."""

    is_closed = False

    def __init__(self, broker: MemoryBroker, queue: MemoryQueue) -> None:
        self.broker = broker
        self.queue = queue

    def _tags(self, delivery_tag: int, multiple: bool) -> list[int]:
        if not multiple:
            return [delivery_tag]
        return [tag for tag in self.queue.unacked if tag <= delivery_tag]

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        """Ack one delivery (or every one up to ``delivery_tag``)."""
        self.broker.settle(self.queue, self._tags(delivery_tag, multiple), requeue=None)

    async def basic_nack(
        self, delivery_tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True
    ) -> None:
        """Requeue (or reject) one delivery (or every one up to ``delivery_tag``)."""
        self.broker.settle(self.queue, self._tags(delivery_tag, multiple), requeue=requeue)


class MemoryReplyChannel:
    """The channel a worker's ``ReplySender`` sends replies on: they go to the kit's waiting
    calls (``deliver``) instead of a direct reply-to address."""

    is_closed = False

    def __init__(self, deliver: Callable[[spec.Basic.Properties, bytes], None]) -> None:
        self._deliver = deliver

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: spec.Basic.Properties | None = None,
        wait: bool = True,
    ) -> None:
        """Hand one reply to the kit."""
        self._deliver(properties or spec.Basic.Properties(), body)

    async def close(self) -> None:
        """Nothing to close."""
