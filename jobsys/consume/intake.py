"""Where a worker's deliveries land: filed in their pool, taken by at most ``concurrency``
runner tasks per runner group, each attempt run and settled.

A delivery is filed in the channel reader's turn (``jobsys.broker.direct_delivery``), or in
aiormq's task per delivery where the channel cannot hand it over directly; nothing on the
filing path waits. Once the worker stops, a delivery is not filed but requeued.

``Intake`` also counts: the jobs between start and settlement (what a hard stop leaves
unfinished) and the jobs finished (done, retried or dead-lettered), toward ``max_jobs``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

from aiormq import spec
from aiormq.abc import DeliveredMessage

from jobsys.consume.acks import Acks
from jobsys.consume.attempt import AttemptRunner, Delivery
from jobsys.consume.attempt_span import run_and_settle
from jobsys.consume.history import HistoryWriter
from jobsys.consume.outcome import REQUEUE, Outcome
from jobsys.consume.pools import Pool, Runners

log = logging.getLogger("jobsys.consume.worker")

#: The outcomes that count as a job handled, toward ``max_jobs``.
_FINISHED = frozenset({"ack", "retry", "dead_letter"})

Settle = Callable[[Delivery, Outcome, Pool], Coroutine[Any, Any, Outcome]]


class Intake:
    """Files a worker's deliveries and runs them: ``settle`` ends each one, ``stop`` (set)
    turns new deliveries back, ``max_jobs`` sets ``stop`` once that many jobs finished."""

    def __init__(
        self,
        runner: AttemptRunner,
        settle: Settle,
        stop: asyncio.Event,
        max_jobs: int | None,
    ) -> None:
        self._runner = runner
        self._settle = settle
        self._stop = stop
        self._max_jobs = max_jobs
        #: Called with the acks a pool's channel took (set once the settler exists).
        self.on_acks_sent: Callable[[list[Delivery], list[Delivery]], None] | None = None
        #: Job history, for the pools whose jobs are recorded.
        self.history: HistoryWriter | None = None
        self.running: set[asyncio.Task[None]] = set()  # job runners
        self._requeues: set[asyncio.Task[Outcome]] = set()  # deliveries arriving while stopping
        self.in_progress = 0  # jobs between start and settlement
        self.finished = 0  # jobs settled as done, retried or dead-lettered (--max-jobs)
        #: Set when the last runner left.
        self.idle = asyncio.Event()

    # -- filing ----------------------------------------------------------------------------

    def _acks_for(self, pool: Pool, message: DeliveredMessage) -> Acks[Delivery]:
        channel = message.channel
        if pool.acks is None or pool.acks.channel is not channel:
            # The channel reopened (or this is the first delivery): delivery tags start again.
            assert self.on_acks_sent is not None
            # The acks count as sent once a basic.qos after them (the prefetch it already
            # has, so nothing changes) is answered: an ack into a dead socket is lost silently.
            prove = functools.partial(channel.basic_qos, prefetch_count=pool.prefetch)
            pool.acks = Acks(channel, self.on_acks_sent, prove)
        return pool.acks

    async def on_message(self, pool: Pool, message: DeliveredMessage) -> None:
        """aiormq's way, a task per delivery: where the channel cannot deliver directly."""
        returned = self._file(pool, message)
        if returned is not None:
            await self._settle(returned, REQUEUE, pool)

    def on_message_directly(self, pool: Pool, message: DeliveredMessage) -> None:
        """In the channel reader's turn (jobsys.broker.direct_delivery): nothing here waits."""
        returned = self._file(pool, message)
        if returned is not None:
            requeue = asyncio.get_running_loop().create_task(self._settle(returned, REQUEUE, pool))
            self._requeues.add(requeue)
            requeue.add_done_callback(self._requeues.discard)

    def _file(self, pool: Pool, message: DeliveredMessage) -> Delivery | None:
        """File a delivery for the pool's runners, starting one if there is room; returns it
        instead when the worker is stopping: it is to be requeued."""
        acks = self._acks_for(pool, message)
        # A consumer only ever receives basic.deliver (never get-ok or return).
        deliver = cast(spec.Basic.Deliver, message.delivery)
        delivery = Delivery(message, acks, deliver.delivery_tag or 0, bool(deliver.redelivered))
        acks.track(delivery.tag)
        if self._stop.is_set():
            return delivery
        pool.waiting.append(delivery)
        if acks.unsettled >= min(2, pool.prefetch):
            pool.busy_at = asyncio.get_running_loop().time()
        pool.arrived.set()
        runners = pool.runners
        if runners.running < runners.concurrency:
            # Handlers run in tasks of jobsys's own, not in aiormq's delivery task: aiormq
            # cancels those when the channel closes, and a handler should rather finish across
            # a reconnect (its ack then fails and is logged; the broker redelivers the job).
            runners.running += 1
            runner = asyncio.get_running_loop().create_task(self._run_jobs(runners))
            self.running.add(runner)
            runner.add_done_callback(functools.partial(self._runner_done, runners))
        return None

    # -- running ---------------------------------------------------------------------------

    async def _run_jobs(self, runners: Runners) -> None:
        # One runner takes waiting jobs one after the other, from whichever of its pools comes
        # next by weight; at most ``concurrency`` runners.
        try:
            while (picked := await runners.next_job(self._stop)) is not None:
                pool, delivery = picked
                self.in_progress += 1
                try:
                    await self._attempt(delivery, pool)
                finally:
                    self.in_progress -= 1
        finally:
            # The runner leaves in the same loop turn as its last look at the waiting jobs. Were
            # it counted as gone only in its done-callback, a delivery arriving in between would
            # see the pool full, start no runner, and wait unrun until the next delivery.
            runners.running -= 1

    async def _attempt(self, delivery: Delivery, pool: Pool) -> None:
        identity = delivery.identify()
        # One line per finished job only under -v: a busy worker's log stays readable.
        started = time.monotonic() if log.isEnabledFor(logging.DEBUG) else None
        settled = await run_and_settle(
            delivery,
            pool.queue,
            self._runner,
            lambda d, outcome, _queue: self._settle(d, outcome, pool),
            self.history if pool.recorded else None,
        )
        if settled.kind in _FINISHED:
            self.finished += 1
            self.count_settled()
        if started is not None and settled.kind == "ack":
            log.debug(
                "job %s (%s) done at attempt %d in %.1f ms",
                identity.job_id,
                identity.job_type,
                identity.attempt,
                (time.monotonic() - started) * 1000,
            )

    def _runner_done(self, runners: Runners, runner: asyncio.Task[None]) -> None:
        self.running.discard(runner)
        if not self.running:
            self.idle.set()
        if not runner.cancelled() and runner.exception() is not None:
            log.error("a job runner of %s failed", runners.name, exc_info=runner.exception())

    # -- counting --------------------------------------------------------------------------

    def count_settled(self) -> None:
        """Stop taking jobs once ``max_jobs`` finished. Counted when a job's settlement is
        issued, not when its ack is proven: the proof (jobsys.consume.acks) lags under load,
        and counting by it let a worker start jobs well past --max-jobs meanwhile."""
        limit = self._max_jobs
        if limit is not None and self.finished >= limit and not self._stop.is_set():
            log.info("reached %d jobs; draining", limit)
            self._stop.set()
