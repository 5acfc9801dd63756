"""Per-queue consumer pools with manual acks, prefetch limits, deadlines and graceful shutdown.

Each queue gets a pool: its own channel with ``basic.qos(prefetch)`` and at most
``concurrency`` handlers running at once, in runner tasks of the worker's own (aiormq starts a
task per delivery, so without a bound concurrency would equal prefetch). Deliveries beyond
that wait in the pool, already prefetched; on shutdown they are requeued without having run.
Filing and running them is ``jobsys.consume.intake``'s; this module sets up, stops and
reconnects.

Every delivery ends in ``_settle()``, the one place that acks, retries, dead-letters or
requeues. A failed attempt is retried or dead-lettered as the job type's retry policy says
(``jobsys.consume.retry``): the job is republished (to its own queue through the delay levels, or to
its queue's dead-letter queue), confirmed, and only then is the original acked; if that publish
fails the original is requeued, so nothing is lost. Acks
of jobs finishing in the same event-loop turn are coalesced (``jobsys.consume.acks``).

Deadlines: each attempt runs under its job type's ``timeout`` (shorter than the broker's
``consumer_timeout``, which the topology check enforces). A sync handler runs in a thread and
cannot be stopped: when it overruns, the attempt is settled as failed at the deadline and the
thread finishes in the background, its result ignored.

Faults: the robust connection restores channels and QoS after a transient loss and the pools
consume again; what it would retry forever (refused access, a queue that no longer exists) is
turned into one fatal error by ``jobsys.consume.fault_watch``.

For a supervisor: ``Worker.run()`` in a child process, ``request_stop()`` (or SIGTERM through
``jobsys.process.serve``) drains it, ``WorkerOptions.max_jobs`` recycles it after so many
jobs, and ``stats.settled`` counts the jobs it finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any, cast

import aiormq

from jobsys.app import App
from jobsys.broker.connection import BrokerConnection, broker_errors
from jobsys.broker.direct_delivery import deliver_directly
from jobsys.consume.attempt import AttemptRunner, Delivery
from jobsys.consume.cancellations import Cancellations
from jobsys.consume.fault_watch import FaultWatch
from jobsys.consume.history import HistoryWriter
from jobsys.consume.intake import Intake
from jobsys.consume.lifecycle import run_shutdown_hooks, run_startup_hooks
from jobsys.consume.limits import Limits
from jobsys.consume.options import WorkerOptions, WorkerStats
from jobsys.consume.outcome import REQUEUE, Outcome
from jobsys.consume.pools import Pool, plan_pools, runner_groups
from jobsys.consume.presence import banner, worker_settings
from jobsys.consume.reply import ReplySender
from jobsys.consume.settle import Settler
from jobsys.consume.threads import HandlerThreads
from jobsys.consume.watchdog import LoopWatchdog
from jobsys.duration import format_duration
from jobsys.errors import JobsysError
from jobsys.observe.health import Health, worker_health
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.topology.model import Topology

log = logging.getLogger(__name__)


class Worker:
    """Consumes the queues of a topology and runs ``app``'s handlers.

    ``run()`` serves until ``request_stop()`` (or ``max_jobs``); a first request drains
    gracefully, a second one (or the grace period running out) stops at once, leaving
    unfinished jobs unacked so the broker redelivers them. Fatal faults (refused access,
    topology drift) raise a ``JobsysError`` from ``run()``.
    """

    def __init__(
        self,
        app: App,
        topology: LoadedTopology | Topology,
        settings: Settings,
        options: WorkerOptions | None = None,
    ) -> None:
        self.app = app
        self._loaded = topology if isinstance(topology, LoadedTopology) else None
        self.topology = topology.topology if isinstance(topology, LoadedTopology) else topology
        self.settings = settings
        self.options = options or WorkerOptions()
        self.stats = WorkerStats()
        self.graceful = True
        self.pools = plan_pools(app, self.topology, self.options)
        #: Set once every pool is consuming.
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._fatal: JobsysError | None = None
        self._connection = BrokerConnection(worker_settings(settings))
        self._producer: Producer | None = None
        self._watch: FaultWatch | None = None
        self._runner = AttemptRunner(app, self.topology, settings)
        self._intake = Intake(self._runner, self._settle, self._stop, self.options.max_jobs)
        self._settler: Settler | None = None
        self._cancellations: Cancellations | None = None
        #: max_running, rate_limit and breakers of the topology's job types.
        self.limits = Limits()
        self._replies: ReplySender | None = None
        #: Job history (a topology with ``history:``), written off the hot path.
        self.history: HistoryWriter | None = None

    # -- setup -----------------------------------------------------------------------------

    async def _start(self) -> None:
        await self._connection.open()
        if self._loaded is not None:
            self._loaded.check_broker_version(self._connection.server_version)
        watch = self._watch = FaultWatch(
            self._connection,
            [p.queue for p in self.pools],
            self._fail,
            self._resubscribe_all,
            exchanges=[self.topology.dead_letter_exchange, self.topology.delay_layout.due_exchange],
        )
        await watch.check_entities()
        watch.attach()
        if any(not spec.is_async for spec in self.app):
            size = self.options.threads or sum(
                group.concurrency for group in runner_groups(self.pools)
            )
            self._runner.threads = HandlerThreads(size)
        self._runner.watchdog = LoopWatchdog(self.settings.heartbeat_s)
        self._runner.watchdog.start()
        # With the app: follow-up jobs are validated by its payload models and go through its
        # publish middleware.
        self._producer = Producer(
            self.settings, self.topology, connection=self._connection, app=self.app
        )
        await self._producer.open()
        self._runner.producer = self._producer
        # Every cancellation made before this worker consumes is known before its first job.
        self._cancellations = Cancellations(
            self._connection, self.topology.namespace, self.topology.delays.max_delay
        )
        await self._cancellations.start(self._producer)
        self._runner.cancellations = self._cancellations
        self.limits = await Limits.start(self._connection, self.topology, self._runner)
        self._settler = Settler(
            self._producer, self.stats, on_fatal=self._fail, on_settled=self._intake.count_settled
        )
        self._intake.on_acks_sent = self._settler.on_acks_sent
        self._settler.replies = self._replies = ReplySender(self._open_reply_channel)
        if self.topology.history is not None:
            self.history = HistoryWriter(self._connection, self.topology, self.topology.history)
            self.history.start()
            self._intake.history = self.history
        for pool in self.pools:
            pool.recorded = self.history is not None and self.history.records(pool.queue)
            pool.channel = await self._connection.channel(confirms=False, prefetch=pool.prefetch)
            # A passive declare, which the robust channel repeats after every reconnect.
            await pool.channel.get_queue(pool.queue, ensure=True)
            await watch.watch_channel(pool.channel, pool.queue)
            pool.channel.reopen_callbacks.add(functools.partial(self._on_reopen, pool))
            pool.consuming = True
        # Every channel is ready before any pool consumes, and then all consume at once: the
        # queues of a weighted pool start together, not one queue alone for the few round trips
        # the next one's channel setup would take.
        await asyncio.gather(*(self._subscribe(pool) for pool in self.pools))
        for pool in self.pools:  # a line per queue, as operators and scripts grep for them
            log.debug("consuming %s", pool.queue)
        self._log_banner()

    def _log_banner(self) -> None:
        threads = self._runner.threads.size if self._runner.threads is not None else None
        log.info(banner(self.pools, threads, self.settings, self._connection))

    async def _subscribe(self, pool: Pool) -> None:
        # Consuming on the aiormq channel under the robust one skips aio-pika's per-delivery
        # message object and second task; the robust channel still restores QoS and the
        # queue check, and ``_on_reopen`` consumes again on each new channel.
        assert pool.channel is not None
        underlay = cast(aiormq.Channel, await pool.channel.get_underlay_channel())
        if pool.consuming and pool.consumer_tag not in underlay.consumers:
            # Until its first deliveries arrive, a queue of a weighted pool counts as having a
            # backlog: the first queue to deliver does not take the others' turns meanwhile.
            pool.busy_at = asyncio.get_running_loop().time()
            deliver_directly(
                underlay,
                pool.consumer_tag,
                functools.partial(self._intake.on_message_directly, pool),
            )
            await underlay.basic_consume(
                pool.queue,
                functools.partial(self._intake.on_message, pool),
                consumer_tag=pool.consumer_tag,
            )

    async def _open_reply_channel(self) -> aiormq.Channel:
        # A plain channel of the connection's current transport, opened again on demand.
        return cast(aiormq.Channel, await self._connection.amqp.channel())

    async def _on_reopen(self, pool: Pool, *_: Any) -> None:
        await self._subscribe(pool)

    async def _resubscribe_all(self) -> None:
        for pool in self.pools:
            await self._subscribe(pool)

    def _fail(self, error: JobsysError) -> None:
        if self._fatal is None:
            self._fatal = error
        self._hard_stop.set()
        self._stop.set()

    # -- run and stop ----------------------------------------------------------------------

    @property
    def node(self) -> str:
        """The broker node the worker's connection is on (its URL, password masked);
        ``ConnectionFailed`` before the worker connected."""
        return self._connection.node

    @property
    def stopping(self) -> bool:
        """True once the worker drains or stops (asked to, ``max_jobs`` reached, or a fatal
        error); it takes no new jobs from then on."""
        return self._stop.is_set()

    def health(self) -> Health:
        """Live and ready, as ``/livez`` and ``/readyz`` report them (safe from another
        thread: it only reads flags)."""
        watchdog = self._runner.watchdog
        return worker_health(
            blocked_s=watchdog.blocked_s() if watchdog is not None else 0.0,
            heartbeat_s=self.settings.heartbeat_s,
            started=self.ready.is_set(),
            stopping=self.stopping,
            connected=self._connection.connected,
        )

    def request_stop(self) -> None:
        """Drain gracefully; called a second time, stop at once."""
        if self._stop.is_set():
            log.warning("second stop request: stopping now; unfinished jobs will be redelivered")
            self._hard_stop.set()
        else:
            log.info("stopping: no new jobs; waiting up to %ss", self.options.grace_s)
            self._stop.set()

    async def run(self) -> WorkerStats:
        """Serve until stopped; returns the stats (``graceful`` says how it ended).

        The app's startup hooks run first (``StartupFailed`` when one fails: nothing was
        consumed), its shutdown hooks last, once the worker has drained and disconnected."""
        await run_startup_hooks(self.app, self.options.hook_timeout_s)
        try:
            # e.g. basic.consume refused for lack of read permission: one clear error.
            with broker_errors(self.settings):
                await self._start()
            self.ready.set()
            await self._stop.wait()
            if self._fatal is None:
                await self._drain()
        finally:
            try:
                await self._shutdown()
            finally:
                await run_shutdown_hooks(self.app, self.options.hook_timeout_s)
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    async def _drain(self) -> None:
        for pool in self.pools:
            pool.consuming = False  # and no reopen consumes again
            if pool.channel is not None:
                with contextlib.suppress(Exception):
                    underlay = await pool.channel.get_underlay_channel()
                    await underlay.basic_cancel(pool.consumer_tag)
            await self._requeue_waiting(pool)
        if not self._intake.running:
            return
        self._intake.idle.clear()
        hard = asyncio.ensure_future(self._hard_stop.wait())
        idle = asyncio.ensure_future(self._intake.idle.wait())
        try:
            await asyncio.wait(
                {hard, idle}, timeout=self.options.grace_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            hard.cancel()
            idle.cancel()
        if self._intake.running:
            if not self._hard_stop.is_set():
                log.warning("grace period of %s ran out", format_duration(self.options.grace_s))
            self.graceful = False

    async def _requeue_waiting(self, pool: Pool) -> None:
        while pool.waiting:
            await self._settle(pool.waiting.popleft(), REQUEUE, pool)

    async def _settle(self, delivery: Delivery, outcome: Outcome, pool: Pool) -> Outcome:
        assert self._settler is not None
        return await self._settler.settle(delivery, outcome, pool.queue)

    async def _shutdown(self) -> None:
        self.stats.unfinished = self._intake.in_progress
        if self._intake.in_progress:
            self.graceful = False
        running = list(self._intake.running)
        for task in running:
            task.cancel()  # not settled: closing the channel returns the job to its queue
        await asyncio.gather(*running, return_exceptions=True)
        if self._watch is not None:
            await self._watch.close()
        if self._cancellations is not None:
            with contextlib.suppress(Exception):
                await self._cancellations.close()
        # Closing a channel waits for the broker's close-ok, which follows every ack sent on
        # it: a job counted as done has really been acked.
        for pool in self.pools:
            if pool.acks is not None:
                await pool.acks.flushed()
            if pool.channel is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pool.channel.close(), 5)
        await self._close_side_channels()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.close()
        await self._connection.close()
        if self._runner.threads is not None:
            self._runner.threads.shutdown()
        if self._runner.watchdog is not None:
            self._runner.watchdog.stop()

    async def _close_side_channels(self) -> None:
        """The reply channel, the job history (its last events written first), and the limits'
        channels (the broker returns any permit still held)."""
        for side in (self._replies, self.history, self.limits):
            if side is not None:
                with contextlib.suppress(Exception):
                    await side.close()

    @property
    def in_progress(self) -> int:
        """Jobs started and not settled yet: what a hard stop now would leave unfinished."""
        return self._intake.in_progress

    @property
    def lingering_threads(self) -> int:
        """Sync handlers still running (past their deadline, or past shutdown)."""
        threads = self._runner.threads
        return threads.running if threads is not None else 0


__all__ = ["Worker", "WorkerOptions", "WorkerStats"]
