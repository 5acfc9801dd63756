"""The broker a test kit runs on: the entities a topology declares, held in memory.

Built from ``topology.entities.desired_entities`` (the same exchanges, queues and bindings
``jobsys topology apply`` declares) and routed by ``topology.routing`` (RabbitMQ's matching,
checked against a regex oracle), so the kit routes exactly as the broker would. What a queue
does with a message follows the broker's rules for its arguments, as measured on RabbitMQ 3.10
(see docs/testing.md for what the kit does not model):

* ``x-max-priority``: the highest priority first, FIFO within one; a priority above the
  maximum counts as the maximum, none as 0;
* ``x-max-length`` / ``x-max-length-bytes`` count ready messages only; ``x-overflow``
  ``drop-head`` (the default) dead-letters the oldest, ``reject-publish`` refuses the new one
  (the publisher gets a nack), ``reject-publish-dlx`` refuses it and dead-letters it too;
* ``x-message-ttl``: a message expires that long after it was queued and is dead-lettered
  (reason ``expired``) to ``x-dead-letter-exchange`` with ``x-dead-letter-routing-key`` or its
  own routing key, with the ``x-death`` history the broker writes.

Time is the kit's virtual clock, in whole milliseconds; nothing here sleeps.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pamqp import commands as spec

from jobsys.topology.entities import ArgValue, BindingSpec, QueueSpec, desired_entities
from jobsys.topology.model import Topology
from jobsys.topology.routing import reachable_queues

PublishStatus = Literal["routed", "unroutable", "refused"]
DeathReason = Literal["expired", "maxlen", "rejected"]


class NoSuchExchange(LookupError):
    """A publish to an exchange that does not exist (the broker closes the channel, 404)."""


@dataclass(eq=False)
class StoredMessage:
    """One message in one queue."""

    body: bytes
    properties: spec.Basic.Properties
    exchange: str
    routing_key: str
    seq: int
    queued_at_ms: int
    redelivered: bool = False

    @property
    def priority(self) -> int:
        """The message's priority as a priority queue sees it (0 when it has none)."""
        return self.properties.priority or 0


@dataclass(eq=False)
class MemoryQueue:
    """A queue: its arguments, its ready messages and those delivered but not yet settled."""

    spec: QueueSpec
    ready: list[StoredMessage] = field(default_factory=list)
    unacked: dict[int, StoredMessage] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The queue's name."""
        return self.spec.name

    def argument(self, key: str) -> ArgValue | None:
        """One ``x-`` argument of the queue, None when it has none."""
        return self.spec.arguments.get(key)

    def _int_argument(self, key: str) -> int | None:
        value = self.argument(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def max_priority(self) -> int | None:
        """``x-max-priority``, None for a queue without priorities."""
        return self._int_argument("x-max-priority")

    @property
    def is_quorum(self) -> bool:
        """Whether the queue is a quorum queue."""
        return self.argument("x-queue-type") == "quorum"

    def is_full_for(self, body: bytes) -> bool:
        """Whether the queue refuses one more message of ``body`` under reject-publish: a
        classic queue when it would pass its limit, a quorum queue (which checks the limit
        it has, not the one it would have: 3.10 measured) only once it is past it."""
        extra, size = (0, 0) if self.is_quorum else (1, len(body))
        max_length = self._int_argument("x-max-length")
        if max_length is not None and len(self.ready) + extra > max_length:
            return True
        max_bytes = self._int_argument("x-max-length-bytes")
        return max_bytes is not None and self.ready_bytes + size > max_bytes

    @property
    def ready_bytes(self) -> int:
        """The body bytes of the ready messages (what ``x-max-length-bytes`` counts)."""
        return sum(len(m.body) for m in self.ready)

    def over_limit(self) -> bool:
        """Whether the ready messages are past ``x-max-length(-bytes)``."""
        max_length = self._int_argument("x-max-length")
        if max_length is not None and len(self.ready) > max_length:
            return True
        max_bytes = self._int_argument("x-max-length-bytes")
        return max_bytes is not None and self.ready_bytes > max_bytes

    def next_index(self) -> int | None:
        """Index of the message the queue delivers next, None when it is empty."""
        if not self.ready:
            return None
        top = self.max_priority
        if top is None:
            return 0
        best = max(range(len(self.ready)), key=lambda i: (min(self.ready[i].priority, top), -i))
        return best

    def expiry_of(self, message: StoredMessage) -> int | None:
        """When ``message`` expires (ms on the kit's clock), None when never."""
        ttl = self._int_argument("x-message-ttl")
        return None if ttl is None else message.queued_at_ms + ttl


class MemoryBroker:
    """The exchanges, queues and bindings of ``topology``, and the broker's rules for them."""

    def __init__(self, topology: Topology, now_ms: Callable[[], int]) -> None:
        entities = desired_entities(topology)
        self._now_ms = now_ms
        self.exchange_types: dict[str, str] = {ex.name: ex.type for ex in entities.exchanges}
        self.bindings: list[BindingSpec] = list(entities.bindings)
        self.queues: dict[str, MemoryQueue] = {q.name: MemoryQueue(q) for q in entities.queues}
        self._seq = itertools.count(1)
        #: Messages dead-lettered with nowhere to go (queue, reason): the broker drops them.
        self.dropped: list[tuple[str, DeathReason]] = []

    # -- publishing ------------------------------------------------------------------------

    def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: spec.Basic.Properties
    ) -> tuple[PublishStatus, list[str]]:
        """Route one message as a confirm channel publishing ``mandatory`` would: ``routed``
        (acked), ``unroutable`` (returned) or ``refused`` (nacked: a full queue refused it),
        with the queues it reached. ``NoSuchExchange`` when the exchange does not exist."""
        if exchange not in self.exchange_types:
            raise NoSuchExchange(exchange)
        targets = self.route(exchange, routing_key, properties.headers or {})
        if not targets:
            return "unroutable", []
        refused = False
        for name in targets:
            if not self._enqueue(self.queues[name], exchange, routing_key, body, properties):
                refused = True
        return ("refused" if refused else "routed"), targets

    def route(self, exchange: str, routing_key: str, headers: Mapping[str, object]) -> list[str]:
        """The queues a message reaches (``topology.routing``, the broker's matching)."""
        found = reachable_queues(exchange, routing_key, self.exchange_types, self.bindings, headers)
        return [name for name in found if name in self.queues]

    def _enqueue(
        self,
        queue: MemoryQueue,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: spec.Basic.Properties,
    ) -> bool:
        """Put a message in ``queue``; False when the queue refused it (reject-publish)."""
        message = StoredMessage(
            body, properties, exchange, routing_key, next(self._seq), self._now_ms()
        )
        overflow = queue.argument("x-overflow") or "drop-head"
        if overflow != "drop-head" and queue.is_full_for(body):
            if overflow == "reject-publish-dlx":
                self._dead_letter(queue, message, "maxlen")
            return False
        queue.ready.append(message)
        while overflow == "drop-head" and queue.over_limit():
            self._dead_letter(queue, queue.ready.pop(0), "maxlen")
        return True

    # -- expiry and dead-lettering ---------------------------------------------------------

    def next_expiry_ms(self) -> int | None:
        """The earliest time a ready message expires, None when none ever does."""
        times = [
            expiry
            for queue in self.queues.values()
            for message in queue.ready[:1]  # the broker expires messages at the head
            if (expiry := queue.expiry_of(message)) is not None
        ]
        return min(times, default=None)

    def expire_due(self) -> int:
        """Dead-letter every message whose TTL ran out by now; returns how many."""
        now, expired = self._now_ms(), 0
        again = True
        while again:
            again = False
            for queue in list(self.queues.values()):
                while queue.ready and (expiry := queue.expiry_of(queue.ready[0])) is not None:
                    if expiry > now:
                        break
                    self._dead_letter(queue, queue.ready.pop(0), "expired")
                    expired += 1
                    again = True
        return expired

    def dead_letter(self, queue: MemoryQueue, message: StoredMessage) -> None:
        """Dead-letter a message a consumer rejected without requeue (reason ``rejected``)."""
        self._dead_letter(queue, message, "rejected")

    def _dead_letter(self, queue: MemoryQueue, message: StoredMessage, reason: DeathReason) -> None:
        exchange = queue.argument("x-dead-letter-exchange")
        if not isinstance(exchange, str) or exchange not in self.exchange_types:
            self.dropped.append((queue.name, reason))  # no dead-letter exchange: gone
            return
        key = queue.argument("x-dead-letter-routing-key")
        routing_key = key if isinstance(key, str) else message.routing_key
        headers = _with_death(message, queue.name, reason, self._now_ms())
        properties = _replace_headers(message.properties, headers)
        targets = self.route(exchange, routing_key, headers)
        if not targets:
            self.dropped.append((queue.name, reason))  # dead letters are never mandatory
        for name in targets:
            # Dead-lettered copies keep the original exchange and key in x-death only.
            self._enqueue(self.queues[name], exchange, routing_key, message.body, properties)

    # -- consuming ---------------------------------------------------------------------------

    def take(self, queue: MemoryQueue, tag: int) -> StoredMessage | None:
        """Deliver the queue's next message under delivery tag ``tag``."""
        index = queue.next_index()
        if index is None:
            return None
        message = queue.ready.pop(index)
        queue.unacked[tag] = message
        return message

    def settle(self, queue: MemoryQueue, tags: Iterable[int], *, requeue: bool | None) -> None:
        """Ack (``requeue`` None), requeue (True) or reject (False) delivered messages."""
        for tag in sorted(tags):
            message = queue.unacked.pop(tag, None)
            if message is None:
                continue
            if requeue is None:
                continue
            if requeue:
                message.redelivered = True
                # A classic queue puts a requeued message back in its place; a quorum queue at
                # the tail (3.10 measured).
                position = next(
                    (i for i, m in enumerate(queue.ready) if m.seq > message.seq), len(queue.ready)
                )
                if queue.is_quorum:
                    position = len(queue.ready)
                queue.ready.insert(position, message)
            else:
                self.dead_letter(queue, message)


def _with_death(
    message: StoredMessage, queue: str, reason: DeathReason, now_ms: int
) -> dict[str, Any]:
    """The message's headers with this death added to ``x-death`` as RabbitMQ records it:
    one entry per (queue, reason), newest first, its count raised when it happens again."""
    headers: dict[str, Any] = dict(message.properties.headers or {})
    previous = headers.get("x-death")
    deaths = (
        [dict(d) for d in previous if isinstance(d, dict)] if isinstance(previous, list) else []
    )
    for death in deaths:
        if death.get("queue") == queue and death.get("reason") == reason:
            death["count"] = int(death.get("count", 0)) + 1
            death["time"] = now_ms // 1000
            deaths.remove(death)
            deaths.insert(0, death)
            break
    else:
        deaths.insert(
            0,
            {
                "count": 1,
                "reason": reason,
                "queue": queue,
                "time": now_ms // 1000,
                "exchange": message.exchange,
                "routing-keys": [message.routing_key],
            },
        )
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-exchange", message.exchange)
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-reason", reason)
    return headers


def _replace_headers(
    properties: spec.Basic.Properties, headers: dict[str, Any]
) -> spec.Basic.Properties:
    return spec.Basic.Properties(
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        headers=headers,
        delivery_mode=properties.delivery_mode,
        priority=properties.priority,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        expiration=properties.expiration,
        message_id=properties.message_id,
        timestamp=properties.timestamp,
        message_type=properties.message_type,
        user_id=properties.user_id,
        app_id=properties.app_id,
    )
