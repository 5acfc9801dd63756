"""``Kit``: an ``App`` and its topology run in memory, on a virtual clock.

The code under test publishes through ``kit.producer``, a real ``Producer`` whose broker edge is
the kit's (``jobsys.testing.edge``): payload validation, routing, headers and errors are the
product's own. Jobs run through the worker's own ``AttemptRunner`` (decode, validate, the
handler under its deadline, the retry policy) and are settled by its own ``Settler`` (ack,
retry through the delay levels, dead letter with its record, replies to ``call()``). Only
the broker is simulated (``jobsys.testing.broker``), and time: ``advance(30)`` moves the
virtual clock 30 seconds and runs what falls due on the way, with no real sleeping.

Jobs run one at a time, in the order the queues hand them out, so a test is deterministic.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader
from pydantic import BaseModel

from jobsys.app import App
from jobsys.consume.acks import Acks
from jobsys.consume.attempt import AttemptRunner, Delivery
from jobsys.consume.attempt_span import run_and_settle
from jobsys.consume.lifecycle import run_shutdown_hooks, run_startup_hooks
from jobsys.consume.options import WorkerOptions, WorkerStats
from jobsys.consume.pools import plan_pools
from jobsys.consume.reply import ReplySender
from jobsys.consume.settle import Settler
from jobsys.consume.threads import HandlerThreads
from jobsys.errors import ConfigError, JobsysError, KitError
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.testing.broker import MemoryBroker, MemoryQueue
from jobsys.testing.calls import KitCalls
from jobsys.testing.edge import MemoryAckChannel, MemoryConfirms, Sent
from jobsys.testing.inspect import DeadLetter, Queued, Run, dead_letter_of, queued_of
from jobsys.topology.loader import LoadedTopology, load_topology
from jobsys.topology.model import DEAD_LETTER_SUFFIX, Topology, dead_letter_queue_name
from jobsys.wire.headers import HEADER_ATTEMPT, set_clock

#: Deliveries one ``drain`` runs before it gives up on a kit that never goes idle.
MAX_DELIVERIES = 100_000
#: The furthest ``advance`` moves the clock in one call: past the longest delay jobsys allows.
MAX_ADVANCE_S = 2.0**30


class Kit:
    """Runs ``app``'s handlers for the jobs of ``topology`` in memory (module docstring).

    Use it as ``async with Kit(app, topology) as kit:``; ``kit.producer`` is the ``Producer``
    to hand the code under test. ``topology`` may be a file's path (refused exactly as
    ``jobsys topology validate`` refuses it). ``options`` picks the queues as a worker's would;
    ``start`` is the virtual clock's first moment (default: now); ``max_deliveries`` bounds one
    run of the kit (``KitError`` past it: jobs that never stop coming back). While a kit is
    open, jobsys's clock in this process is the kit's virtual clock.
    """

    def __init__(
        self,
        app: App,
        topology: Topology | LoadedTopology | str | Path,
        settings: Settings | None = None,
        *,
        options: WorkerOptions | None = None,
        start: datetime | None = None,
        max_deliveries: int = MAX_DELIVERIES,
    ) -> None:
        if isinstance(topology, str | Path):
            topology = load_topology(topology)  # refused exactly as `topology validate` does
        if isinstance(topology, LoadedTopology):
            topology = topology.topology
        self.app = app
        self.topology = topology
        self.settings = settings or Settings()
        self.max_deliveries = max_deliveries
        self._running = False  # the kit is running jobs (a handler may be on the stack)
        start_s = start.timestamp() if start is not None else time.time()
        self._now_ms = int(start_s * 1000)
        self.broker = MemoryBroker(topology, self.now_ms)
        refusals = frozenset(
            name for name, q in topology.queues.items() if q.overflow == "reject-publish-dlx"
        )
        self._confirms = MemoryConfirms(
            self.broker, self.now_ms, self._call, refusals_dead_lettered=refusals
        )
        self._calls = KitCalls(
            self._confirms,
            self.now_ms,
            self.broker.next_expiry_ms,
            self._run_until,
            lambda: self._running,
        )
        self.producer = Producer(self.settings, topology, app=app, edge=self._confirms)
        self.stats = WorkerStats()
        #: The queues the kit consumes, as a worker of ``app`` would (none for an app without
        #: handlers: a kit that only checks what is published).
        self.queues: list[str] = []
        if app.job_types or (options is not None and options.queues):
            planned = plan_pools(app, topology, options or WorkerOptions())
            self.queues = [pool.queue for pool in planned]
        self._runner = AttemptRunner(app, topology, self.settings)
        self._runner.producer = self.producer
        self._settler = Settler(
            self.producer, self.stats, on_fatal=self._on_fatal, on_settled=_nothing
        )
        self._settler.replies = ReplySender(self._calls.open_channel)
        self._acks: dict[str, Acks[Delivery]] = {}
        self._tags = itertools.count(1)
        self._fatal: JobsysError | None = None
        self._open = False
        self._previous_clock: Callable[[], int] | None = None
        #: Every attempt that ran, in order.
        self.runs: list[Run] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> Kit:
        """Run the app's startup hooks and put jobsys on the kit's clock."""
        if self._open:
            return self
        if any(not spec_.is_async for spec_ in self.app):
            self._runner.threads = HandlerThreads(4)
        self._previous_clock = set_clock(self.now_ms)
        self._open = True
        try:
            await run_startup_hooks(self.app, 30.0)
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Run the shutdown hooks and give jobsys its wall clock back (safe to call twice)."""
        if not self._open:
            return
        self._open = False
        try:
            await run_shutdown_hooks(self.app, 30.0)
        finally:
            set_clock(self._previous_clock)
            if self._runner.threads is not None:
                self._runner.threads.shutdown()

    async def __aenter__(self) -> Kit:
        return await self.open()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def new_producer(
        self, *, app: App | None = None, models: Mapping[str, type[BaseModel]] | None = None
    ) -> Producer:
        """Another ``Producer`` on this kit, with its own payload models (or an app's): what a
        different service that publishes these job types would send."""
        return Producer(self.settings, self.topology, app=app, models=models, edge=self._confirms)

    # -- time ------------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The virtual clock, in milliseconds since the epoch."""
        return self._now_ms

    @property
    def now(self) -> datetime:
        """The virtual clock as an aware datetime."""
        return datetime.fromtimestamp(self._now_ms / 1000, UTC)

    async def advance(self, seconds: float) -> None:
        """Move the virtual clock ``seconds`` ahead, running every job that falls due on the
        way at the moment it falls due (delays, retries). Nothing sleeps."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise KitError(f"advance() takes a number of seconds, got {type(seconds).__name__}")
        # Compared before math.isfinite, which cannot convert an int beyond a float's range.
        if seconds > MAX_ADVANCE_S or not math.isfinite(seconds) or seconds < 0:
            raise KitError(
                f"advance() takes from 0 to {MAX_ADVANCE_S:.0f} seconds, got {seconds!r}: "
                "the clock only moves forward"
            )
        await self._run_until(self._now_ms + math.ceil(seconds * 1000))

    async def drain(self) -> None:
        """Run jobs until nothing is due now (jobs delayed into the future stay waiting)."""
        await self._run_until(self._now_ms)

    async def run_until_idle(self, max_s: float = 86_400.0) -> None:
        """Advance through every pending delay until no job is waiting anywhere; the clock
        stops where the last job fell due. ``KitError`` when jobs still wait ``max_s`` seconds
        on (they stay waiting, and the clock stands ``max_s`` ahead)."""
        await self.advance(0)  # checks the kit, runs what is due now
        start_ms = self._now_ms
        while (next_ms := self.broker.next_expiry_ms()) is not None:
            if next_ms - start_ms > max_s * 1000:
                await self.advance(max(start_ms + max_s * 1000 - self._now_ms, 0) / 1000)
                waiting = sum(len(q.ready) for q in self.broker.queues.values())
                raise KitError(
                    f"{waiting} message(s) still wait after run_until_idle(max_s={max_s:g}); the "
                    f"next falls due {(next_ms - start_ms) / 1000:g}s after the start: pass a "
                    "larger max_s, or advance() to it"
                )
            await self.advance((next_ms - self._now_ms) / 1000)

    async def _run_until(self, target_ms: int) -> None:
        self._check_open()
        if self._running:
            raise KitError("the kit cannot be run from inside a handler it is running")
        self._running = True
        try:
            while True:
                self.broker.expire_due()
                await self._deliver_due()
                next_ms = self.broker.next_expiry_ms()
                if next_ms is None or next_ms > target_ms:
                    break
                self._now_ms = max(self._now_ms, next_ms)
            self._now_ms = max(self._now_ms, target_ms)
            self.broker.expire_due()
            await self._deliver_due()
        finally:
            self._running = False

    async def _deliver_due(self) -> None:
        for _ in range(self.max_deliveries):
            if not any([await self._deliver_one(name) for name in self.queues]):
                return
            self.broker.expire_due()
        raise KitError(
            f"{self.max_deliveries} deliveries without the kit going idle: jobs keep coming back "
            "(a job requeued forever, or handlers publishing without end); they are still "
            "in the kit's queues"
        )

    def _check_open(self) -> None:
        if not self._open:
            raise KitError("the kit is not open: use `async with Kit(...) as kit:`")
        if self._fatal is not None:
            raise self._fatal

    # -- one delivery ------------------------------------------------------------------------

    async def _deliver_one(self, name: str) -> bool:
        queue = self.broker.queues[name]
        tag = next(self._tags)
        stored = self.broker.take(queue, tag)
        if stored is None:
            return False
        acks = self._acks_for(queue)
        deliver = spec.Basic.Deliver(
            consumer_tag="jobsys-kit",
            delivery_tag=tag,
            redelivered=stored.redelivered,
            exchange=stored.exchange,
            routing_key=stored.routing_key,
        )
        header = ContentHeader(body_size=len(stored.body), properties=stored.properties)
        message = DeliveredMessage(deliver, header, stored.body, acks.channel)  # type: ignore[arg-type]
        delivery = Delivery(message, acks, tag, stored.redelivered)
        acks.track(tag)
        identity = delivery.identify()
        at_ms = self._now_ms
        settled = await run_and_settle(delivery, name, self._runner, self._settler.settle)
        await acks.flushed()
        self.runs.append(Run.of(identity, name, settled, at_ms, stored.redelivered))
        if self._fatal is not None:
            raise self._fatal
        return True

    def _acks_for(self, queue: MemoryQueue) -> Acks[Delivery]:
        acks = self._acks.get(queue.name)
        if acks is None:
            channel = MemoryAckChannel(self.broker, queue)
            acks = self._acks[queue.name] = Acks(channel, self._settler.on_acks_sent)
        return acks

    async def _call(self, *args: Any, **kwargs: Any) -> Any:
        return await self._calls.call_through(*args, **kwargs)

    def _on_fatal(self, error: JobsysError) -> None:
        if self._fatal is None:
            self._fatal = error

    # -- inspection --------------------------------------------------------------------------

    @property
    def sent(self) -> list[Sent]:
        """Every message producers sent and the kit confirmed: jobs, retries, dead letters."""
        return list(self._confirms.sent)

    @property
    def published(self) -> list[Sent]:
        """The jobs published by the code under test (not the worker's retries or dead
        letters)."""
        dead = self.topology.dead_letter_exchange
        return [s for s in self._confirms.sent if s.exchange != dead and not _is_retry(s)]

    def queued(self, queue: str) -> list[Queued]:
        """The jobs waiting in ``queue`` (ready, in the order they would be delivered)."""
        q = self._queue(queue)
        order = sorted(
            range(len(q.ready)),
            key=lambda i: (-(min(q.ready[i].priority, q.max_priority or 0)), i),
        )
        return [queued_of(q.ready[i]) for i in order]

    def dead_letters(self, queue: str) -> list[DeadLetter]:
        """What is in ``queue``'s dead-letter queue, and why (``queue`` may name the
        dead-letter queue itself)."""
        name = queue if queue.endswith(DEAD_LETTER_SUFFIX) else dead_letter_queue_name(queue)
        return [dead_letter_of(m) for m in self._queue(name).ready]

    def runs_of(self, job_id: str) -> list[Run]:
        """The attempts of one job, in order."""
        return [run for run in self.runs if run.job_id == job_id]

    def _queue(self, name: str) -> MemoryQueue:
        try:
            return self.broker.queues[name]
        except KeyError:
            raise ConfigError(f"the topology has no queue {name!r}") from None


def _is_retry(sent: Sent) -> bool:
    attempt = sent.headers.get(HEADER_ATTEMPT)
    return isinstance(attempt, int) and attempt > 1


def _nothing() -> None:
    pass
