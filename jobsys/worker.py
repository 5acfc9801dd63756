"""Per-queue consumer pools with manual acks, prefetch limits, deadlines and graceful shutdown.

Each queue gets a pool: its own channel with ``basic.qos(prefetch)`` and at most
``concurrency`` handlers running at once, in runner tasks of the worker's own (aiormq starts a
task per delivery, so without a bound concurrency would equal prefetch). Deliveries beyond
that wait in the pool, already prefetched; on shutdown they are requeued without having run.

Every delivery ends in ``_settle()``, the one place that acks, dead-letters or requeues.
A dead-lettered job is published to its queue's dead-letter queue, confirmed, and only then is
the original acked; if that publish fails the original is requeued, so nothing is lost. Acks
of jobs finishing in the same event-loop turn are coalesced (``_Acks``).

Deadlines: each attempt runs under its job type's ``timeout`` (shorter than the broker's
``consumer_timeout``, which the topology check enforces). A sync handler runs in a thread and
cannot be stopped: when it overruns, the attempt is settled as failed at the deadline and the
thread finishes in the background, its result ignored.

Faults: the robust connection restores channels and QoS after a transient loss and the pools
consume again; what it would retry forever (refused access, a queue that no longer exists) is
turned into one fatal error by ``_FaultWatch``.

For a supervisor: ``Worker.run()`` in a child process, ``request_stop()`` (or SIGTERM through
``jobsys.cli.worker.serve``) drains it, ``WorkerOptions.max_jobs`` recycles it after so many
jobs, and ``stats.settled`` counts the jobs it finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import aiormq.abc
from aio_pika.abc import AbstractRobustChannel
from aio_pika.exceptions import ChannelClosed, ChannelInvalidStateError, ChannelNotFoundEntity
from aiormq import spec
from aiormq.abc import DeliveredMessage

from jobsys.app import App, HandlerSpec, JobContext
from jobsys.connection import BrokerConnection, translate_error
from jobsys.deadletter import dead_letter_headers, record_for
from jobsys.duration import format_duration
from jobsys.envelope import Envelope, decode_envelope, new_job_id, now_ms
from jobsys.errors import (
    AccessRefused,
    ConfigError,
    HandlerSignal,
    JobsysError,
    MessageError,
    TopologyError,
)
from jobsys.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.check import route_job_type
from jobsys.topology.loader import LoadedTopology
from jobsys.topology.model import DEAD_LETTER_EXCHANGE, Topology, dead_letter_queue_name

log = logging.getLogger(__name__)

_DEFAULT_TIMEOUT_S = 300.0
# Errors that mean the delivery's channel is gone: the broker has already requeued the job.
_CHANNEL_GONE = (ChannelInvalidStateError, ChannelClosed, aiormq.exceptions.AMQPConnectionError)


@dataclass(frozen=True)
class WorkerOptions:
    """What to consume and how; ``None`` takes the topology file's per-queue defaults."""

    queues: Sequence[str] = ()  # empty: every queue reached by a job type with a handler
    concurrency: int | None = None
    prefetch: int | None = None
    grace_s: float = 30.0
    #: Drain and stop after this many settled jobs (a supervisor recycles the process).
    max_jobs: int | None = None


@dataclass
class WorkerStats:
    """What a worker did; a supervisor reads ``settled`` to count jobs done."""

    done: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    unfinished: int = 0
    lost_acks: int = 0

    @property
    def settled(self) -> int:
        """Jobs finished one way or the other (acked or dead-lettered)."""
        return self.done + self.dead_lettered

    def summary(self) -> str:
        """One line for the end of a run."""
        line = (
            f"worker stopped: {self.done} done, {self.dead_lettered} dead-lettered, "
            f"{self.requeued} requeued, {self.unfinished} unfinished"
        )
        if self.lost_acks:
            line += f", {self.lost_acks} redelivered after a lost channel"
        return line


@dataclass(frozen=True)
class Outcome:
    """How one delivery is settled."""

    kind: Literal["ack", "dead_letter", "retry", "requeue"]
    error: BaseException | None = None
    # A handler's traceback helps; a decoding error's traceback only shows jobsys's own code.
    with_traceback: bool = True
    delay_s: float | None = None  # for "retry", reserved for the retry policy

    @classmethod
    def dead_letter(cls, error: BaseException, *, with_traceback: bool = True) -> Outcome:
        """Dead-letter at once with ``error`` as the reason."""
        return cls("dead_letter", error=error, with_traceback=with_traceback)


ACK = Outcome("ack")
REQUEUE = Outcome("requeue")


class _Acks:
    """Acks for one channel, coalesced: jobs that finish in the same loop turn are acked with
    one ``basic.ack(multiple=True)`` covering a contiguous run of delivery tags. A tag is only
    covered when every lower tag still unsettled on the channel is ready too, so no job is
    ever acked before it finished, and none that is being requeued."""

    def __init__(
        self,
        channel: aiormq.abc.AbstractChannel,
        on_sent: Callable[[list[_Job], list[_Job]], None],
    ) -> None:
        self.channel = channel
        self._on_sent = on_sent  # (acked jobs, jobs whose ack found the channel gone)
        self._pending: dict[int, _Job | None] = {}  # delivery tag -> job once ready; tag order
        self._scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()

    def track(self, tag: int) -> None:
        """Note a delivery as unsettled."""
        self._pending[tag] = None

    def ack(self, job: _Job) -> None:
        """Ack ``job`` soon, with the others finishing in this loop turn; ``on_sent`` reports
        the outcome. Returns at once, so the job's task is free for the next job."""
        self._pending[job.tag] = job
        if not self._scheduled:
            self._scheduled = True
            task = asyncio.get_running_loop().create_task(self._send_ready())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def flushed(self) -> None:
        """Wait until every ack asked for so far has been handed to the connection."""
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    async def _send_ready(self) -> None:
        self._scheduled = False  # acks from now on go out with the next flush
        run: list[_Job] = []  # ready jobs below the first unsettled tag: one multiple ack
        singles: list[_Job] = []  # ready jobs above it: acked one by one
        in_run = True
        for tag, job in list(self._pending.items()):
            if job is None:
                in_run = False
                continue
            del self._pending[tag]
            (run if in_run else singles).append(job)
        sent: list[_Job] = []
        lost: list[_Job] = []
        # An ack has no reply in AMQP, so not waiting for the socket to drain loses nothing: if
        # the channel closes before the frame is out, the broker requeues the job anyway.
        batches = [(run[-1].tag, True, run)] if run else []
        batches += [(job.tag, False, [job]) for job in singles]
        for tag, multiple, jobs in batches:
            try:
                await self.channel.basic_ack(tag, multiple=multiple, wait=False)
            except _CHANNEL_GONE:
                lost += jobs
            else:
                sent += jobs
        self._on_sent(sent, lost)

    async def nack(self, tag: int) -> bool:
        """Requeue ``tag``; False when the channel is gone (it was requeued anyway)."""
        try:
            await self.channel.basic_nack(tag, requeue=True)
        except _CHANNEL_GONE:
            return False
        finally:
            # Only now: until the nack is out, no multiple ack may cover this tag.
            self._pending.pop(tag, None)
        return True


@dataclass
class _Job:
    message: DeliveredMessage
    acks: _Acks
    tag: int = 0
    redelivered: bool = False
    job_id: str = "?"
    job_type: str = "?"
    attempt: int = 1
    dead_lettered: bool = False


@dataclass
class _Pool:
    queue: str
    concurrency: int
    prefetch: int
    consumer_tag: str
    channel: AbstractRobustChannel | None = None
    acks: _Acks | None = None
    running: int = 0
    waiting: deque[_Job] = field(default_factory=deque)
    consuming: bool = False


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
        self.pools = [self._pool_for(name) for name in self._queue_names()]
        self._host = socket.gethostname()
        #: Set once every pool is consuming.
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._fatal: JobsysError | None = None
        self._running: set[asyncio.Task[None]] = set()  # job runners
        self._in_progress = 0  # jobs between start and settlement
        self._idle = asyncio.Event()
        self._connection = BrokerConnection(settings)
        self._producer: Producer | None = None
        self._watch: _FaultWatch | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._timeouts = {name: jt.timeout for name, jt in self.topology.job_types.items()}

    # -- setup -----------------------------------------------------------------------------

    def _queue_names(self) -> list[str]:
        for job_type in self.app.job_types:
            if job_type not in self.topology.job_types:
                log.warning("handler for job type %r, which the topology does not have", job_type)
        if self.options.queues:
            unknown = [q for q in self.options.queues if q not in self.topology.queues]
            if unknown:
                raise ConfigError(f"queue(s) not in the topology: {', '.join(unknown)}")
            return list(dict.fromkeys(self.options.queues))
        names: list[str] = []
        for job_type in self.app.job_types:
            spec = self.topology.job_types.get(job_type)
            if spec is not None:
                names += [q for q in route_job_type(self.topology, spec) if q not in names]
        if not names:
            raise ConfigError("no queue to consume: no handler's job type reaches a queue")
        return names

    def _pool_for(self, name: str) -> _Pool:
        defaults = self.topology.queues[name].consumer
        concurrency = self.options.concurrency or defaults.concurrency
        prefetch = self.options.prefetch or max(defaults.prefetch, concurrency)
        if prefetch < concurrency:
            raise ConfigError(f"prefetch ({prefetch}) is below concurrency ({concurrency})")
        tag = f"jobsys.{socket.gethostname()}.{os.getpid()}.{name}.{uuid.uuid4().hex[:8]}"
        return _Pool(name, concurrency, prefetch, tag)

    async def _start(self) -> None:
        await self._connection.open()
        if self._loaded is not None:
            self._loaded.check_broker_version(self._connection.server_version)
        watch = self._watch = _FaultWatch(
            self._connection, [p.queue for p in self.pools], self._fail, self._resubscribe_all
        )
        await watch.check_entities()
        watch.attach()
        if any(not spec.is_async for spec in self.app):
            workers = sum(p.concurrency for p in self.pools)
            self._executor = ThreadPoolExecutor(workers, thread_name_prefix="jobsys-handler")
        self._producer = Producer(self.settings, self.topology, connection=self._connection)
        await self._producer.open()
        for pool in self.pools:
            pool.channel = await self._connection.channel(confirms=False, prefetch=pool.prefetch)
            # A passive declare, which the robust channel repeats after every reconnect.
            await pool.channel.get_queue(pool.queue, ensure=True)
            await watch.watch_channel(pool.channel)
            pool.channel.reopen_callbacks.add(functools.partial(self._on_reopen, pool))
            pool.consuming = True
            await self._subscribe(pool)
            log.info(
                "consuming %s (concurrency %d, prefetch %d)",
                pool.queue,
                pool.concurrency,
                pool.prefetch,
            )

    async def _subscribe(self, pool: _Pool) -> None:
        # Consuming on the aiormq channel under the robust one skips aio-pika's per-delivery
        # message object and second task; the robust channel still restores QoS and the
        # queue check, and ``_on_reopen`` consumes again on each new channel.
        assert pool.channel is not None
        underlay = cast(aiormq.Channel, await pool.channel.get_underlay_channel())
        if pool.consuming and pool.consumer_tag not in underlay.consumers:
            await underlay.basic_consume(
                pool.queue,
                functools.partial(self._on_message, pool),
                consumer_tag=pool.consumer_tag,
            )

    async def _on_reopen(self, pool: _Pool, *_: Any) -> None:
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

    def request_stop(self) -> None:
        """Drain gracefully; called a second time, stop at once."""
        if self._stop.is_set():
            log.warning("second stop request: stopping now; unfinished jobs will be redelivered")
            self._hard_stop.set()
        else:
            log.info("stopping: no new jobs; waiting up to %ss", self.options.grace_s)
            self._stop.set()

    async def run(self) -> WorkerStats:
        """Serve until stopped; returns the stats (``graceful`` says how it ended)."""
        try:
            try:
                await self._start()
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and _cancel_requested():
                    raise
                # e.g. basic.consume refused for lack of read permission: one clear error.
                raise translate_error(exc, self.settings) from None
            self.ready.set()
            await self._stop.wait()
            if self._fatal is None:
                await self._drain()
        finally:
            await self._shutdown()
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
        if not self._running:
            return
        self._idle.clear()
        hard = asyncio.ensure_future(self._hard_stop.wait())
        idle = asyncio.ensure_future(self._idle.wait())
        try:
            await asyncio.wait(
                {hard, idle}, timeout=self.options.grace_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            hard.cancel()
            idle.cancel()
        if self._running:
            if not self._hard_stop.is_set():
                log.warning("grace period of %s ran out", format_duration(self.options.grace_s))
            self.graceful = False

    async def _requeue_waiting(self, pool: _Pool) -> None:
        while pool.waiting:
            await self._settle(pool.waiting.popleft(), REQUEUE, pool)

    async def _shutdown(self) -> None:
        self.stats.unfinished = self._in_progress
        if self._in_progress:
            self.graceful = False
        for task in list(self._running):
            task.cancel()  # not settled: closing the channel returns the job to its queue
        await asyncio.gather(*self._running, return_exceptions=True)
        if self._watch is not None:
            await self._watch.close()
        # Closing a channel waits for the broker's close-ok, which follows every ack sent on
        # it: a job counted as done has really been acked.
        for pool in self.pools:
            if pool.acks is not None:
                await pool.acks.flushed()
            if pool.channel is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pool.channel.close(), 5)
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.close()
        await self._connection.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def lingering_threads(self) -> int:
        """Sync handlers still running past their deadline or past shutdown."""
        if self._executor is None:
            return 0
        return sum(1 for t in self._executor._threads if t.is_alive())

    # -- one delivery ----------------------------------------------------------------------

    def _acks_for(self, pool: _Pool, message: DeliveredMessage) -> _Acks:
        channel = message.channel
        if pool.acks is None or pool.acks.channel is not channel:
            # The channel reopened (or this is the first delivery): delivery tags start again.
            pool.acks = _Acks(channel, self._on_acks_sent)
        return pool.acks

    async def _on_message(self, pool: _Pool, message: DeliveredMessage) -> None:
        delivery = _deliver(message)
        job = _Job(
            message,
            self._acks_for(pool, message),
            delivery.delivery_tag or 0,
            bool(delivery.redelivered),
        )
        job.acks.track(job.tag)
        if self._stop.is_set():
            await self._settle(job, REQUEUE, pool)
            return
        pool.waiting.append(job)
        if pool.running < pool.concurrency:
            # Handlers run in tasks of jobsys's own, not in aiormq's delivery task: aiormq
            # cancels those when the channel closes, and a handler should rather finish across
            # a reconnect (its ack then fails and is logged; the broker redelivers the job).
            pool.running += 1
            runner = asyncio.get_running_loop().create_task(self._run_jobs(pool))
            self._running.add(runner)
            runner.add_done_callback(functools.partial(self._runner_done, pool))

    async def _run_jobs(self, pool: _Pool) -> None:
        # One runner takes waiting jobs one after the other; at most ``concurrency`` runners.
        while (job := self._next_waiting(pool)) is not None:
            self._in_progress += 1
            try:
                await self._settle(job, await self._process(job, pool.queue), pool)
            finally:
                self._in_progress -= 1

    def _runner_done(self, pool: _Pool, runner: asyncio.Task[None]) -> None:
        pool.running -= 1
        self._running.discard(runner)
        if not self._running:
            self._idle.set()
        if not runner.cancelled() and runner.exception() is not None:
            log.error("a job runner of %s failed", pool.queue, exc_info=runner.exception())

    def _next_waiting(self, pool: _Pool) -> _Job | None:
        while pool.waiting and not self._stop.is_set():
            job = pool.waiting.popleft()
            # A job held on a channel that has closed since is back in its queue already.
            if not job.acks.channel.is_closed:
                return job
        return None

    async def _process(self, job: _Job, queue: str) -> Outcome:
        message = job.message
        props = message.header.properties
        try:
            envelope = decode_envelope(
                message.body,
                content_type=props.content_type,
                message_type=props.message_type,
                headers=props.headers,
                priority=props.priority,
                max_bytes=self.settings.max_payload_bytes,
            )
            job.job_id, job.job_type, job.attempt = (
                envelope.job_id,
                envelope.job_type,
                envelope.attempt,
            )
            spec = self.app.get(envelope.job_type)
            payload = spec.parse_payload(envelope.payload)
        except MessageError as exc:
            return Outcome.dead_letter(exc, with_traceback=False)
        if spec.wants_context:
            ctx = JobContext(
                envelope.job_id,
                envelope.job_type,
                envelope.attempt,
                envelope.headers,
                queue,
                job.redelivered,
            )
            args: tuple[Any, ...] = (payload, ctx)
        else:
            args = (payload,)
        try:
            await self._call(spec, args, job)
        except (Exception, HandlerSignal) as exc:
            # Retries come from the job type's retry policy (the retry issue); until it lands a
            # failed attempt, a Retry signal and a Reject all dead-letter with the error.
            return Outcome.dead_letter(exc)
        except asyncio.CancelledError as exc:
            if _cancel_requested():
                raise  # a hard stop: leave the job unsettled, the broker redelivers it
            return Outcome.dead_letter(exc)  # the handler's own cancellation is a failure
        return ACK

    async def _call(self, spec: HandlerSpec, args: tuple[Any, ...], job: _Job) -> None:
        timeout_s = self._timeouts.get(job.job_type, _DEFAULT_TIMEOUT_S)
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                if spec.is_async:
                    await spec.func(*args)
                else:
                    loop = asyncio.get_running_loop()
                    await loop.run_in_executor(self._executor, spec.func, *args)
        except TimeoutError:
            if not deadline.expired():
                raise  # the handler's own TimeoutError
            if not spec.is_async:
                log.warning(
                    "job %s (%s): sync handler overran its deadline; its thread runs on in the "
                    "background and its result is ignored",
                    job.job_id,
                    job.job_type,
                )
            raise TimeoutError(
                f"job exceeded its deadline of {format_duration(timeout_s)} "
                f"(the job type's timeout)"
            ) from None

    # -- settlement ------------------------------------------------------------------------

    async def _settle(self, job: _Job, outcome: Outcome, pool: _Pool) -> None:
        """The one place a delivery is acked, dead-lettered or requeued."""
        if outcome.kind == "ack":
            job.acks.ack(job)  # counted as done in _on_acks_sent, once the ack is out
        elif outcome.kind in ("dead_letter", "retry"):
            assert outcome.error is not None
            if not await self._publish_dead_letter(job, outcome, pool.queue):
                await job.acks.nack(job.tag)  # keep the job: better twice than never
                return
            job.dead_lettered = True
            self.stats.dead_lettered += 1
            log.warning(
                "job %s (%s) dead-lettered to %s: %s",
                job.job_id,
                job.job_type,
                dead_letter_queue_name(pool.queue),
                type(outcome.error).__name__,
            )
            job.acks.ack(job)
            self._count_settled()
        else:
            self.stats.requeued += 1
            await job.acks.nack(job.tag)

    def _on_acks_sent(self, sent: list[_Job], lost: list[_Job]) -> None:
        self.stats.done += sum(1 for job in sent if not job.dead_lettered)
        for job in lost:
            self.stats.lost_acks += 1
            log.warning(
                "job %s (%s): ack failed because the channel was lost; the broker requeued the job",
                job.job_id,
                job.job_type,
            )
        self._count_settled()

    def _count_settled(self) -> None:
        limit = self.options.max_jobs
        if limit is not None and self.stats.settled >= limit and not self._stop.is_set():
            log.info("reached %d jobs; draining", limit)
            self._stop.set()

    async def _publish_dead_letter(self, job: _Job, outcome: Outcome, queue: str) -> bool:
        """Publish a copy of the job (same body, the broker's death history stripped, the
        reason added) to ``queue``'s dead-letter queue and await the confirm."""
        message = job.message
        props = message.header.properties
        assert outcome.error is not None and self._producer is not None
        record = record_for(
            outcome.error,
            attempts=job.attempt,
            failed_at_ms=now_ms(),
            exchange=_deliver(message).exchange,
            routing_key=_deliver(message).routing_key or "",
            queue=queue,
            worker_host=self._host,
            with_traceback=outcome.with_traceback,
        )
        # A job that could not be decoded has no envelope; this one only carries its identity
        # through the producer, and the original headers (added last) win over its own.
        envelope = Envelope(
            job_id=job.job_id if job.job_id != "?" else (props.message_id or new_job_id()),
            job_type=props.message_type or job.job_type,
            payload=None,
            attempt=job.attempt,
            priority=props.priority,
        )
        try:
            await self._producer.publish_envelope(
                envelope,
                DEAD_LETTER_EXCHANGE,
                dead_letter_queue_name(queue),
                body=message.body,
                extra_headers=dead_letter_headers(props.headers, record),
                queues=(dead_letter_queue_name(queue),),
            )
        except JobsysError as exc:
            log.error(
                "job %s (%s): dead-letter publish failed, requeueing the job: %s",
                job.job_id,
                job.job_type,
                exc,
            )
            return False
        return True


def _cancel_requested() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _deliver(message: DeliveredMessage) -> spec.Basic.Deliver:
    # A consumer only ever receives basic.deliver (never get-ok or return).
    return cast(spec.Basic.Deliver, message.delivery)


class _FaultWatch:
    """Turns faults that aio-pika's robust connection would retry forever (refused access,
    a vanished queue or exchange) into one fatal error instead of a silent loop."""

    PROBE_INTERVAL_S = 2.0

    def __init__(
        self,
        connection: BrokerConnection,
        queues: list[str],
        on_fatal: Callable[[JobsysError], None],
        on_cancelled: Callable[[], Awaitable[None]],
    ) -> None:
        self._on_cancelled = on_cancelled
        self._connection = connection
        self._queues = queues
        self._on_fatal = on_fatal
        self._channels: list[AbstractRobustChannel] = []
        self._probe: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def check_entities(self, connection: BrokerConnection | None = None) -> None:
        """Raise a drift error for the first queue or exchange the broker does not have."""
        conn = connection or self._connection
        wanted = [("exchange", DEAD_LETTER_EXCHANGE)] + [("queue", q) for q in self._queues]
        for kind, name in wanted:
            channel = await conn.channel(confirms=False)
            try:
                if kind == "queue":
                    await channel.get_queue(name, ensure=True)
                else:
                    await channel.get_exchange(name, ensure=True)
            except ChannelNotFoundEntity:
                raise TopologyError(
                    f"topology drift: {kind} {name!r} does not exist; "
                    "run `jobsys topology apply FILE`"
                ) from None
            except aiormq.exceptions.AMQPError as exc:
                raise translate_error(exc, conn.settings) from None
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()

    def attach(self) -> None:
        """Start watching the connection for losses."""
        self._connection.connection.close_callbacks.add(self._on_connection_lost)

    async def watch_channel(self, channel: AbstractRobustChannel) -> None:
        """Notice when the broker cancels a consumer on ``channel`` (e.g. queue deleted)."""
        self._channels.append(channel)
        channel.reopen_callbacks.add(self._hook_cancel)
        await self._hook_cancel(channel)

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

    def _on_connection_lost(self, *_: Any) -> None:
        if self._closed:
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


__all__ = ["ACK", "REQUEUE", "Outcome", "Worker", "WorkerOptions", "WorkerStats"]
