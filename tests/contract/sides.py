"""The two sides of the contract: the in-memory kit and RabbitMQ in a private vhost, behind one
small interface, so that a scenario is written once and run on both.

A side gives the scenario a ``Producer`` (the kit's, or a real one), runs the app's handlers
until a condition holds (the kit by moving its virtual clock, RabbitMQ by a real worker and
real time), reads what waits in a queue, and removes a binding (topology drift)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from jobsys.app import App
from jobsys.broker.connection import BrokerConnection
from jobsys.consume.options import WorkerOptions
from jobsys.ops.declare import apply_topology
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.testing import Kit
from jobsys.topology.loader import LoadedTopology
from tests.harness.running import running_worker
from tests.harness.worker_subprocess import wait_until


@dataclass(frozen=True)
class Message:
    """A message read from a queue: what the contract compares (no timestamps, no ids)."""

    job_type: str | None
    priority: int | None
    headers: dict[str, Any]
    body: bytes


class Side(Protocol):
    name: str
    producer: Producer

    def modelless(self) -> Producer: ...

    def working(self) -> contextlib.AbstractAsyncContextManager[object]: ...

    async def run_until(self, done: Callable[[], bool], max_s: float) -> None: ...

    async def read(self, queue: str) -> list[Message]: ...

    async def unbind(self, exchange: str, queue: str, routing_key: str) -> None: ...

    async def delete_exchange(self, exchange: str) -> None: ...


class KitSide:
    """The in-memory kit."""

    name = "kit"

    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self.producer = kit.producer

    def modelless(self) -> Producer:
        return self.kit.new_producer()

    def working(self) -> contextlib.AbstractAsyncContextManager[object]:
        # The kit's call() runs the jobs itself.
        return contextlib.nullcontext()

    async def run_until(self, done: Callable[[], bool], max_s: float) -> None:
        # Whole seconds of virtual time, so the condition is looked at as often as a poll.
        for _ in range(int(max_s)):
            await self.kit.drain()
            if done():
                return
            await self.kit.advance(1)
        await self.kit.drain()

    async def read(self, queue: str) -> list[Message]:
        taken = self.kit.queued(queue)
        self.kit.broker.queues[queue].ready.clear()
        return [Message(q.job_type, q.priority, q.headers, q.body) for q in taken]

    async def unbind(self, exchange: str, queue: str, routing_key: str) -> None:
        bindings = self.kit.broker.bindings
        bindings[:] = [
            b
            for b in bindings
            if (b.source, b.destination, b.routing_key) != (exchange, queue, routing_key)
        ]

    async def delete_exchange(self, exchange: str) -> None:
        del self.kit.broker.exchange_types[exchange]


class BrokerSide:
    """RabbitMQ, in the test's private vhost."""

    name = "rabbitmq"

    def __init__(
        self, app: App, loaded: LoadedTopology, settings: Settings, producer: Producer
    ) -> None:
        self.app = app
        self.loaded = loaded
        self.settings = settings
        self.producer = producer

    def modelless(self) -> Producer:
        return Producer(self.settings, self.loaded, connection=self.producer.connection)

    def working(self) -> contextlib.AbstractAsyncContextManager[object]:
        options = WorkerOptions(concurrency=1, prefetch=1)
        return running_worker(self.app, self.loaded, self.settings, options)

    async def run_until(self, done: Callable[[], bool], max_s: float) -> None:
        options = WorkerOptions(concurrency=1, prefetch=1)
        async with running_worker(self.app, self.loaded, self.settings, options):
            await wait_until(done, max_s, "the scenario's jobs to run")

    async def read(self, queue: str) -> list[Message]:
        found = []
        async with BrokerConnection(self.settings) as conn:
            channel = await conn.channel(confirms=False)
            declared = await channel.get_queue(queue, ensure=True)
            while (message := await declared.get(fail=False, no_ack=True)) is not None:
                found.append(
                    Message(message.type, message.priority, dict(message.headers), message.body)
                )
        return found

    async def unbind(self, exchange: str, queue: str, routing_key: str) -> None:
        async with BrokerConnection(self.settings) as conn:
            channel = await conn.channel(confirms=False)
            declared = await channel.get_queue(queue, ensure=True)
            await declared.unbind(exchange, routing_key)

    async def delete_exchange(self, exchange: str) -> None:
        async with BrokerConnection(self.settings) as conn:
            channel = await conn.channel(confirms=False)
            await channel.exchange_delete(exchange)


@contextlib.asynccontextmanager
async def kit_side(app: App, loaded: LoadedTopology) -> AsyncIterator[KitSide]:
    async with Kit(app, loaded) as kit:
        yield KitSide(kit)


@contextlib.asynccontextmanager
async def broker_side(
    app: App, loaded: LoadedTopology, settings: Settings
) -> AsyncIterator[BrokerSide]:
    async with BrokerConnection(settings) as conn:
        await apply_topology(conn, loaded, use_management=False)
    async with Producer(settings, loaded, app=app) as producer:
        yield BrokerSide(app, loaded, settings, producer)


async def on_both(
    scenario: Callable[[Side], Any], app: App, loaded: LoadedTopology, settings: Settings
) -> tuple[Any, Any, float]:
    """Run ``scenario`` on the kit, then on RabbitMQ; their outcomes and the kit's time (s)."""
    began = time.perf_counter()
    async with kit_side(app, loaded) as kit:
        in_memory = await scenario(kit)
    kit_s = time.perf_counter() - began
    async with broker_side(app, loaded, settings) as broker:
        on_broker = await scenario(broker)
    return in_memory, on_broker, kit_s


__all__ = ["BrokerSide", "KitSide", "Message", "Side", "on_both"]
