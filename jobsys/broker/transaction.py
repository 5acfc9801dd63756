"""An AMQP transaction: several publishes that the broker takes all together or not at all.

``tx.select`` puts a plain channel in transaction mode; publishes on it are held by the broker
until ``tx.commit`` and dropped if the channel closes first (a publisher killed mid-way leaves
nothing behind). RabbitMQ routes held publishes at the commit, so a mandatory publish that
matched no queue comes back as ``basic.return`` *before* ``commit-ok`` (checked on 3.10.8):
``commit`` reports which publishes were returned. The commit has happened by then; a caller
that must not keep a returned publish's companions writes them back in a second transaction.

aiormq matches returns to publishes only on confirm channels; here each publish registers the
future aiormq resolves on a return, under a tag of its own (negative, never a real delivery
tag), which is what aiormq's confirm mode does too.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiormq.abc
from pamqp import commands as spec

from jobsys.broker.connection import BrokerConnection, broker_errors, close_quietly
from jobsys.wire.envelope import new_message_id


@dataclass(frozen=True)
class Returned:
    """A publish of a committed transaction that reached no queue."""

    exchange: str
    routing_key: str


class Transaction:
    """A plain channel in transaction mode on ``connection``'s current AMQP connection."""

    def __init__(self, connection: BrokerConnection) -> None:
        self._connection = connection
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._watching: list[tuple[int, str, asyncio.Future[object], Returned]] = []
        self._next_tag = 0

    async def open(self) -> Transaction:
        """Open the channel and select transaction mode."""
        channel = await self._connection.plain_channel(confirms=False)
        with broker_errors(self._connection.settings):
            await channel.tx_select()
        self._channel = channel
        return self

    @property
    def is_open(self) -> bool:
        """False once the channel (or its connection) closed."""
        return self._channel is not None and not self._channel.is_closed

    async def publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: spec.Basic.Properties,
    ) -> None:
        """Hold a mandatory publish in the transaction."""
        channel = self._live()
        if not properties.message_id:
            properties.message_id = new_message_id()
        self._next_tag -= 1
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        message_id = properties.message_id
        # Registered as aiormq's confirm mode registers a publish: a basic.return for this
        # message_id resolves the future (with an error, as the channel raises on returns).
        channel.message_id_delivery_tag[message_id] = self._next_tag  # type: ignore[attr-defined]
        channel.confirmations[self._next_tag] = future  # type: ignore[attr-defined]
        self._watching.append((self._next_tag, message_id, future, Returned(exchange, routing_key)))
        with broker_errors(self._connection.settings):
            await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
            )

    async def commit(self) -> list[Returned]:
        """Commit; the publishes that were returned (reached no queue), empty when all routed.
        Raises a jobsys ``BrokerError`` when the commit failed or its outcome is unknown."""
        channel = self._live()
        try:
            with broker_errors(self._connection.settings):
                await channel.tx_commit()
            return [returned for _, _, future, returned in self._watching if future.done()]
        finally:
            self._forget(channel)

    async def rollback(self) -> None:
        """Drop what was published since the last commit."""
        channel = self._live()
        try:
            with broker_errors(self._connection.settings):
                await channel.tx_rollback()
        finally:
            self._forget(channel)

    async def close(self) -> None:
        """Close the channel (uncommitted publishes are dropped by the broker)."""
        channel, self._channel = self._channel, None
        await close_quietly(channel)

    def _forget(self, channel: aiormq.abc.AbstractChannel) -> None:
        for tag, message_id, future, _ in self._watching:
            channel.confirmations.pop(tag, None)  # type: ignore[attr-defined]
            channel.message_id_delivery_tag.pop(message_id, None)  # type: ignore[attr-defined]
            if future.done():
                future.exception()  # retrieved: a returned publish is reported, not raised
            else:
                future.cancel()
        self._watching.clear()

    def _live(self) -> aiormq.abc.AbstractChannel:
        if self._channel is None:
            raise RuntimeError("the transaction's channel is not open")
        return self._channel
