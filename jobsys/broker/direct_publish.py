"""Confirmed publishes queued for the connection's writer at once, a loop turn's worth as one
write.

aiormq's ``Channel.basic_publish`` enters two async context managers, takes the channel's lock,
marshals the frames into a buffer of their own, and puts them on the connection's write queue,
where the writer sends each publish with a socket call of its own (bench/README.md, "Where a
producer's time goes"). ``DirectPublisher.publish`` does what it does in one synchronous stretch
and returns the confirmation future, and publishes made in the same loop turn are appended to
one item of the write queue, sent with one socket call. Its frames are pamqp's bytes, written
without building pamqp's objects for them (``publish_frames``), and the ``basic.publish`` frame,
the same for every job of a type, is marshalled once and kept.

The broker numbers a channel's publishes in the order it receives them; aiormq numbers them
(``delivery_tag``) in the order they are queued, and matches confirms by that number. Both
orders stay the same here:

* a publish is numbered and queued in one synchronous stretch, with nothing awaited between;
* it joins the pending batch only while that batch is the last item of the write queue (the
  writer has not taken it and nothing was queued after it), else it starts a new one;
* while aiormq's own ``basic_publish`` holds the channel's lock (numbered, possibly waiting for
  room in the write queue) and when the write queue is full, ``publish`` returns None and the
  caller publishes through aiormq, which waits for both.

The confirmation future is registered where aiormq's ``create_future`` registers it: in the
channel's future store and its parents' (the connection's), whose ``reject_all`` fails it when
the channel or the connection closes. aiormq's way gives each confirmation four done callbacks
(reading an unread exception, a removal from each store, and jobsys's own forgetting of its
message id), each a loop callback of its own when the confirm arrives; here one callback does
the four.

It uses aiormq's channel attributes below its public API (``confirmations``,
``message_id_delivery_tag``, ``delivery_tag``, the write queue, the name-mangled lock and future
store), so ``for_channel`` checks they are there and returns None otherwise (aiormq's path is
used), and tests/integration/test_direct_publish.py checks confirms, returns, nacks and closes
on a real broker.
"""

from __future__ import annotations

import asyncio
import collections
import struct
import uuid
from typing import Any

import aiormq
import aiormq.exceptions
from aiormq.abc import ConfirmationFrameType
from aiormq.base import FutureStore
from pamqp import commands as spec
from pamqp.frame import marshal

#: aiormq's private channel lock (name-mangled ``__lock``), held by its ``basic_publish``.
_LOCK = "_Channel__lock"
#: aiormq's private future store of a channel (name-mangled ``Base.__future_store``).
_STORE = "_Base__future_store"
#: What a channel must have for a direct publish; without any of it aiormq's path is used.
_NEEDED = (
    "confirmations",
    "message_id_delivery_tag",
    "delivery_tag",
    "write_queue",
    "number",
    "max_content_size",
)
#: AMQP's short string: a routing key of more bytes cannot be sent (aiormq refuses it too).
_MAX_ROUTING_KEY = 255
#: ``basic.publish`` frames kept marshalled, by channel, exchange, routing key and mandatory: a
#: producer sends the same few again and again (one per job type). Past this many, the cache
#: starts over, so publishing to ever new routing keys costs no memory.
_METHOD_FRAMES = 256
#: A frame's type, channel and size; a content header's class, weight (zero) and body size.
_FRAME_HEAD = struct.Struct(">BHI").pack
_CONTENT_HEAD = struct.Struct(">BHIHxxQ").pack
_FRAME_END = b"\xce"


def broker_closed(channel: aiormq.Channel) -> BaseException | None:
    """The reason the broker gave when it closed ``channel`` (``Channel.Close``, e.g. a 404 for
    a publish to a missing exchange), while aiormq has not finished closing it; None when it did
    not. aiormq has queued its ``Channel.CloseOk`` by then, and a publish written after that
    makes the broker close the whole connection (``504 CHANNEL_ERROR - expected
    'channel.open'``), failing every publish in flight on it, other producers' included.
    aiormq's ``basic_publish`` does not check this; its ``basic_ack`` does, by the same mark."""
    reason = getattr(channel, "_close_exception", None)
    return reason if isinstance(reason, BaseException) else None


class _Batch:
    """One item of the write queue that the writer reads like aiormq's ``ChannelFrame``: the
    marshalled frames of several publishes, joined when the writer takes it."""

    __slots__ = ("parts",)
    should_close = False
    should_drain = False
    drain_future = None

    def __init__(self, first: bytes) -> None:
        self.parts = [first]

    @property
    def payload(self) -> bytes:
        return b"".join(self.parts)

    def drain(self) -> None:
        """Nothing to wake: nobody waits for a batch to reach the socket (the confirms count)."""


class DirectPublisher:
    """Publishes on one aiormq confirm channel without its per-publish machinery."""

    def __init__(
        self,
        channel: aiormq.Channel,
        lock: asyncio.Lock,
        queue: asyncio.Queue[Any],
        stores: tuple[FutureStore, ...],
    ):
        self.channel = channel
        self._lock = lock
        self._queue = queue
        #: The channel's future store and its parents', where a confirmation is registered.
        self._stores = stores
        # The write queue's items, to see whether the pending batch is still its last one.
        self._items: collections.deque[Any] = queue._queue  # type: ignore[attr-defined]
        self._pending: _Batch | None = None
        self._methods: dict[tuple[int, str, str, bool], bytes] = {}

    @classmethod
    def for_channel(cls, channel: aiormq.Channel) -> DirectPublisher | None:
        """A publisher for ``channel``; None when it is no confirm channel of the aiormq shape
        this was checked against (publish through ``basic_publish`` then)."""
        lock = getattr(channel, _LOCK, None)
        queue = getattr(channel, "write_queue", None)
        stores = _stores_of(channel)
        if not (
            all(hasattr(channel, name) for name in _NEEDED)
            and getattr(channel, "publisher_confirms", False)
            and isinstance(lock, asyncio.Lock)
            and isinstance(queue, asyncio.Queue)
            and isinstance(getattr(queue, "_queue", None), collections.deque)
            and isinstance(channel.confirmations, collections.OrderedDict)
            and stores
        ):
            return None
        return cls(channel, lock, queue, stores)

    def publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: spec.Basic.Properties,
        mandatory: bool,
    ) -> asyncio.Future[ConfirmationFrameType] | None:
        """Queue the publish and return its confirmation, as ``basic_publish`` awaits it: the
        broker's ack, ``DeliveryError`` on a nack, ``PublishError`` when returned unroutable,
        the channel's close reason when it closes first. None when it must go through aiormq
        (its lock is held, or the write queue is full): nothing was queued then."""
        channel = self.channel
        if channel.is_closed or broker_closed(channel) is not None:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
        if len(routing_key) > _MAX_ROUTING_KEY:
            raise ValueError("Routing key too long (max 255 bytes)")
        items = self._items
        joins = self._pending is not None and bool(items) and items[-1] is self._pending
        if self._lock.locked() or (not joins and self._queue.full()):
            return None
        stores = self._stores
        if any(store.reject_reason is not False for store in stores):
            return None  # closing: aiormq's path fails the publish with the store's reason
        if not properties.message_id:
            # As aiormq: a return is matched to its publish by the message id.
            properties.message_id = uuid.uuid4().hex
        number = channel.number
        method = self._method_frame(number, exchange, routing_key, mandatory)
        payload = publish_frames(method, number, properties, body, channel.max_content_size)
        channel.delivery_tag += 1
        tag = channel.delivery_tag
        message_id = properties.message_id
        confirmation: asyncio.Future[ConfirmationFrameType] = channel.loop.create_future()
        for store in stores:
            store.futures.add(confirmation)
        channel.confirmations[tag] = confirmation
        ids = channel.message_id_delivery_tag
        ids[message_id] = tag

        def settled(future: asyncio.Future[ConfirmationFrameType]) -> None:
            for store in stores:
                store.futures.discard(future)
            if ids.get(message_id) == tag:
                del ids[message_id]
            if not future.cancelled():
                future.exception()  # read once, as aiormq's stores do: never "not retrieved"

        confirmation.add_done_callback(settled)
        if joins:
            assert self._pending is not None
            self._pending.parts.append(payload)
        else:
            self._pending = _Batch(payload)
            self._queue.put_nowait(self._pending)
        return confirmation

    def _method_frame(self, number: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
        """The ``basic.publish`` frame, marshalled by pamqp once and kept (``_METHOD_FRAMES``)."""
        method = self._methods.get((number, exchange, routing_key, mandatory))
        if method is not None:
            return method
        method = marshal(
            spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
            number,
        )
        if len(self._methods) >= _METHOD_FRAMES:
            self._methods.clear()
        self._methods[(number, exchange, routing_key, mandatory)] = method
        return method


def publish_frames(
    method: bytes,
    number: int,
    properties: spec.Basic.Properties,
    body: bytes,
    max_content_size: int,
) -> bytes:
    """The frames of one publish on channel ``number`` after its marshalled ``method`` frame,
    as pamqp marshals a ``ContentHeader`` and aiormq splits and marshals the body (an empty
    body has no body frame; one of ``max_content_size`` bytes or more is split), without
    building their objects: 8 us per publish that way, 0.4 us this way (bench/README.md).
    tests/unit/test_publish_frames.py holds the bytes to pamqp's."""
    encoded = properties.marshal()
    parts = [method, _CONTENT_HEAD(2, number, 12 + len(encoded), 60, len(body)), encoded]
    if not body:
        parts.append(_FRAME_END)
    elif len(body) < max_content_size:
        parts += (_FRAME_END, _FRAME_HEAD(3, number, len(body)), body, _FRAME_END)
    else:
        parts.append(_FRAME_END)
        for start in range(0, len(body), max_content_size):
            chunk = body[start : start + max_content_size]
            parts += (_FRAME_HEAD(3, number, len(chunk)), chunk, _FRAME_END)
    return b"".join(parts)


def _stores_of(channel: aiormq.Channel) -> tuple[FutureStore, ...]:
    """The channel's future store and its parents' (empty: not the shape checked against)."""
    stores: list[FutureStore] = []
    store = getattr(channel, _STORE, None)
    while store is not None:
        if not (
            isinstance(store, FutureStore)
            and isinstance(store.futures, set)
            and hasattr(store, "reject_reason")
        ):
            return ()
        stores.append(store)
        store = store.parent
    return tuple(stores)
