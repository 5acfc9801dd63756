"""Deliveries handed to a consumer in the channel reader's own turn, without a task each.

aiormq runs every consumer callback in a task of its own (``Channel._on_deliver_frame``):
creating the task, registering it in the channel's and the connection's future stores and
running it one loop turn later costs more than anything jobsys does with a delivery before a
runner takes it (bench/README.md, "Where a worker's time goes"). A worker's callback only files
the delivery and returns, so ``deliver_directly`` has the channel call it as a plain function,
right after the body is read.

It replaces ``_on_deliver_frame`` on one aiormq channel object (not on the class) with a
function that reads the content as aiormq does, with aiormq's own methods, then calls the
consumer; deliveries to consumer tags it does not know go the usual way. That reaches below
aiormq's public API, so it is checked against the aiormq versions pyproject.toml admits
(tests/unit/test_direct_delivery.py) and falls back to aiormq's path when the channel lacks
what it uses. A consumer that raises is logged, like aiormq logs a failed consumer task: the
reader, which serves the whole channel, goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

log = logging.getLogger(__name__)

#: aiormq's private reader of a delivery's content header (name-mangled ``__get_content_header``).
_GET_HEADER = "_Channel__get_content_header"
#: Where the consumers served directly are kept on a patched channel.
_DIRECT = "_jobsys_direct_consumers"

DirectConsumer = Callable[[DeliveredMessage], None]


def deliver_directly(channel: aiormq.Channel, consumer_tag: str, consumer: DirectConsumer) -> bool:
    """Have ``channel`` call ``consumer`` for each delivery to ``consumer_tag`` directly, in
    its reader's turn; False (nothing changed) when this aiormq does not have the shape it
    was checked against. Register the tag with ``basic_consume`` as usual: its callback then
    serves only if this returned False."""
    direct: dict[str, DirectConsumer] | None = getattr(channel, _DIRECT, None)
    if direct is None:
        if not callable(getattr(channel, _GET_HEADER, None)) or not callable(
            getattr(channel, "_read_content", None)
        ):
            return False
        direct = {}
        original = channel._on_deliver_frame
        channel._on_deliver_frame = _reader_for(channel, direct, original)  # type: ignore[method-assign,assignment]
        setattr(channel, _DIRECT, direct)
    direct[consumer_tag] = consumer
    return True


def _reader_for(
    channel: aiormq.Channel,
    direct: dict[str, DirectConsumer],
    original: Callable[[spec.Basic.Deliver], Awaitable[None]],
) -> Callable[[spec.Basic.Deliver], Awaitable[None]]:
    get_header: Callable[[], Awaitable[Any]] = getattr(channel, _GET_HEADER)

    async def on_deliver_frame(frame: spec.Basic.Deliver) -> None:
        consumer = direct.get(frame.consumer_tag) if frame.consumer_tag is not None else None
        if consumer is None:
            await original(frame)
            return
        # As aiormq's own _on_deliver_frame: the header frame, then the body frames.
        header = await get_header()
        message = await channel._read_content(frame, header)
        try:
            consumer(message)
        except Exception:
            log.exception("the consumer of %s failed on a delivery", frame.consumer_tag)

    return on_deliver_frame
