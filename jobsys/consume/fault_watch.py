"""Faults aio-pika's robust connection would retry forever, turned into one fatal error.

Refused access, or a queue or exchange that no longer exists, would keep a robust connection
reconnecting (or a consumer silently cancelled) without end. ``FaultWatch`` notices a lost
connection or a cancelled consumer, checks the topology on a separate short-lived connection,
and reports what cannot heal as one ``JobsysError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiormq.exceptions
from aio_pika.abc import AbstractRobustChannel
from aio_pika.exceptions import ChannelNotFoundEntity
from aiormq.channel import EXCEPTION_MAPPING

from jobsys.broker.connection import (
    BrokerConnection,
    broker_errors,
    close_quietly,
    translate_error,
)
from jobsys.broker.passive import node_down, reason_of, unreachable
from jobsys.errors import AccessRefused, JobsysError, TopologyError
from jobsys.topology.model import dead_letter_queue_name
from jobsys.wire.display import cut, escape

log = logging.getLogger(__name__)


def broker_close_reason(exc: BaseException | None) -> str | None:
    """``"406 PRECONDITION_FAILED - ..."`` for a channel the broker closed (code and its text,
    escaped and cut to a line), None for a channel closed by jobsys or with its connection."""
    if not isinstance(exc, aiormq.exceptions.ChannelClosed):
        return None
    code: object = next((c for c, kind in EXCEPTION_MAPPING.items() if type(exc) is kind), None)
    args = list(exc.args)
    if code is None and args and isinstance(args[0], int):
        code = args.pop(0)
    text = next((a for a in args if isinstance(a, str)), "")
    if code is None and not text:
        return None  # close-ok: the channel was closed on jobsys's own request
    return f"{code if code is not None else '?'} {cut(escape(text), 300)}".strip()


class FaultWatch:
    """Turns faults that aio-pika's robust connection would retry forever (refused access,
    a vanished queue or exchange) into one fatal error instead of a silent loop."""

    PROBE_INTERVAL_S = 2.0

    def __init__(
        self,
        connection: BrokerConnection,
        queues: list[str],
        on_fatal: Callable[[JobsysError], None],
        on_cancelled: Callable[[], Awaitable[None]],
        exchanges: Sequence[str] = (),
    ) -> None:
        self._on_cancelled = on_cancelled
        self._connection = connection
        self._queues = queues
        #: Exchanges settlement publishes to (the dead-letter and due exchanges).
        self._exchanges = list(exchanges)
        self._on_fatal = on_fatal
        self._channels: list[AbstractRobustChannel] = []
        self._probe: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def check_entities(self, connection: BrokerConnection | None = None) -> None:
        """Raise a drift error for the first queue or exchange the broker does not have."""
        conn = connection or self._connection
        # Everything settlement publishes to must be there too: a missing dead-letter queue
        # or delivery exchange would otherwise only show when the first job fails.
        wanted = [("exchange", name) for name in self._exchanges]
        wanted += [("queue", q) for q in self._queues]
        wanted += [("queue", dead_letter_queue_name(q)) for q in self._queues]
        for kind, name in wanted:
            channel = await conn.channel(confirms=False)
            try:
                with broker_errors(conn.settings):
                    try:
                        if kind == "queue":
                            await channel.get_queue(name, ensure=True)
                        else:
                            await channel.get_exchange(name, ensure=True)
                    except ChannelNotFoundEntity as exc:
                        if node_down(reason_of(exc)):  # transient: the worker waits, not exits
                            raise unreachable(f"{kind} {name!r}", reason_of(exc)) from None
                        raise TopologyError(
                            f"topology drift: {kind} {name!r} does not exist; "
                            "run `jobsys topology apply FILE`"
                        ) from None
            finally:
                await close_quietly(channel)

    def attach(self) -> None:
        """Start watching the connection for losses."""
        self._connection.connection.close_callbacks.add(self._on_connection_lost)

    async def watch_channel(self, channel: AbstractRobustChannel, queue: str = "") -> None:
        """Notice when the broker cancels a consumer on ``channel`` (e.g. queue deleted), and
        say why when it closes the channel (a consumer timeout, a refused operation): the
        robust channel opens a new one and the worker consumes ``queue`` on it again."""
        self._channels.append(channel)
        channel.reopen_callbacks.add(self._hook_cancel)
        channel.close_callbacks.add(functools.partial(self._on_channel_closed, queue))
        await self._hook_cancel(channel)

    def _on_channel_closed(self, queue: str, _channel: Any, exc: BaseException | None) -> None:
        reason = broker_close_reason(exc)
        if reason is None or self._closed:
            return  # closed by jobsys, or with its connection (logged once, as a loss)
        log.warning(
            "the broker closed the channel consuming %s: %s; opening a new channel and "
            "consuming again (the broker requeued the jobs it held unacked)",
            escape(queue),
            reason,
        )

    async def _hook_cancel(self, channel: Any, *_: Any) -> None:
        # Each reopen brings a new aiormq channel under the robust one; hook every one.
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_cancel)

    def _on_cancel(self, frame: Any) -> None:
        log.warning("the broker cancelled a consumer; checking the topology")
        self._spawn(self._consume_again())

    async def _consume_again(self) -> None:
        if await self._check_or_fail(self._connection):
            with contextlib.suppress(Exception):
                await self._on_cancelled()

    def _on_connection_lost(self, _connection: Any = None, exc: Any = None, *_: Any) -> None:
        if self._closed:
            return
        # Called for the loss and for every failed reconnect attempt after it: a refused one
        # (credentials, vhost, permissions) ends the worker at once, not at the next probe.
        if isinstance(exc, BaseException):
            error = translate_error(exc, self._connection.settings)
            if isinstance(error, AccessRefused):
                self._on_fatal(error)
                return
        if self._probe is None or self._probe.done():
            log.warning("connection to the broker lost; reconnecting")
            self._probe = self._spawn(self._probe_until_healthy())

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _check_or_fail(self, connection: BrokerConnection) -> bool:
        try:
            await self.check_entities(connection)
        except (TopologyError, AccessRefused) as exc:
            self._on_fatal(exc)
            return False
        except JobsysError:
            return False  # transient: the robust connection keeps trying
        return True

    def _healthy(self) -> bool:
        conn = self._connection.connection
        return conn.connected.is_set() and not any(ch.is_closed for ch in self._channels)

    async def _probe_until_healthy(self) -> None:
        # A separate, short-lived connection shows what the robust one would only retry.
        settings = self._connection.settings.with_overrides(connect_deadline_s=1.0)
        while True:
            await asyncio.sleep(self.PROBE_INTERVAL_S)
            if self._healthy():
                log.warning("reconnected to the broker; consuming again")
                return
            try:
                async with BrokerConnection(settings) as probe:
                    await self._check_or_fail(probe)
            except AccessRefused as exc:
                self._on_fatal(exc)
                return
            except JobsysError:
                continue

    async def close(self) -> None:
        """Stop watching."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
