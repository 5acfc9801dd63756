"""Taking one message from a queue the flow-control limits keep (a ``max_running`` permit, a
``rate_limit`` token) by polling ``basic.get`` for a short while: the one loop both use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiormq
import aiormq.abc
from aiormq import spec

from jobsys.consume.acks import CHANNEL_GONE
from jobsys.errors import JobsysError

log = logging.getLogger(__name__)

#: A queue that cannot be read is logged at most once per this many seconds.
REPEAT_LOG_S = 30
#: queue -> loop time its failure was last logged at error level.
_logged_at: dict[str, float] = {}

#: The channel to take on: the current one, or a fresh one after the last was lost.
CurrentChannel = Callable[[], Awaitable[aiormq.abc.AbstractChannel]]


async def get_within(
    current: CurrentChannel,
    queue: str,
    *,
    no_ack: bool,
    within_s: float,
    interval_s: float,
    what: str,
) -> tuple[aiormq.abc.AbstractChannel, int] | None:
    """Take one message of ``queue``: the channel it was taken on and its delivery tag, or None
    when none came within ``within_s`` (polled every ``interval_s``) or the queue cannot be
    read. ``what`` names it in the log (``a permit``, ``a token``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        try:
            channel = await current()
            got = await channel.basic_get(queue, no_ack=no_ack)
        except (JobsysError, aiormq.exceptions.AMQPError, ConnectionError, *CHANNEL_GONE) as exc:
            # The queue deleted, its node down, the connection lost: the job waits (held back,
            # not lost) and tries again on a fresh channel. Every job of the type fails alike
            # meanwhile, each about once a second: said once per queue per REPEAT_LOG_S.
            now = loop.time()
            if now - _logged_at.get(queue, -REPEAT_LOG_S) >= REPEAT_LOG_S:
                _logged_at[queue] = now
                log.error(
                    "cannot take %s from %s: %s; its jobs wait (said again in %ds if it lasts)",
                    what,
                    queue,
                    exc,
                    REPEAT_LOG_S,
                )
            else:
                log.debug("cannot take %s from %s: %s; the job waits", what, queue, exc)
            return None
        if isinstance(got.delivery, spec.Basic.GetOk):
            return channel, got.delivery.delivery_tag or 0
        if loop.time() >= deadline:
            return None
        await asyncio.sleep(interval_s)
