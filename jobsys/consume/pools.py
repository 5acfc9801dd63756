"""What a worker consumes: its pools, one per queue, with their bounds. Working out the pools
is pure; the worker fills in their channels.

Each pool holds one queue's channel and deliveries; its ``runners`` say how many jobs may run
and which pool's job runs next. A pool of its own has runners of its own; the pools of a
weighted pool from the topology (``pools:``, ``--pool NAME``) share one ``Runners``, whose
``WeightedPicker`` hands the freed runner to the queues by weight."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import deque
from dataclasses import dataclass, field

from aio_pika.abc import AbstractRobustChannel
from pydantic import ValidationError

from jobsys.app import App
from jobsys.consume.acks import Acks
from jobsys.consume.attempt import Delivery
from jobsys.consume.fair import WeightedPicker
from jobsys.consume.options import WorkerOptions
from jobsys.errors import ConfigError
from jobsys.topology.model import Topology, WeightedPool
from jobsys.topology.routing import route_job_type

log = logging.getLogger(__name__)

#: How long a queue of a weighted pool counts as having a backlog after it was last busy,
#: though nothing of it waits in the worker: longer than the broker takes to refill a prefetch
#: after an ack, short enough that an emptied queue's share soon goes to the others.
HOLD_S = 0.05


@dataclass
class Pool:
    """One queue's consumer pool: its bounds, channel and the deliveries it holds."""

    queue: str
    concurrency: int
    prefetch: int
    consumer_tag: str
    channel: AbstractRobustChannel | None = None
    acks: Acks[Delivery] | None = None
    waiting: deque[Delivery] = field(default_factory=deque)
    consuming: bool = False
    #: Its jobs go into the job history (set by the worker).
    recorded: bool = False
    #: The runners it shares with the other queues of a weighted pool, or has to itself.
    runners: Runners = field(init=False)
    #: When a delivery last arrived while another of the queue's deliveries was still
    #: unsettled (event-loop time): the queue is delivering faster than one job at a time.
    busy_at: float = float("-inf")
    #: Set at each delivery: a runner of a weighted pool waits on it for the queue whose turn
    #: it is.
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.runners = Runners(self.queue, self.concurrency, [self], WeightedPicker([1]))


@dataclass(eq=False)
class Runners:
    """The runner tasks of one pool, or shared by the queues of a weighted pool: at most
    ``concurrency`` jobs run at once, and ``picker`` says which queue's job starts next."""

    name: str
    concurrency: int
    pools: list[Pool]
    picker: WeightedPicker
    running: int = 0
    #: A weighted pool of the topology (rather than one queue's runners).
    weighted: bool = False

    def next_pool(self, now: float) -> Pool | None:
        """The pool whose job should start next, by weight; None when none has a backlog.

        A pool has a backlog while jobs wait in it; in a weighted pool, also for ``HOLD_S``
        after it was last busy (a delivery arrived while another of its deliveries was
        unsettled). A busy queue's next jobs are on their way while the broker refills the
        prefetch after an ack; were the queue taken for idle in that gap, its turn would go to
        a lighter queue, and a busy worker (its event loop handling deliveries in bursts) would
        give the light queues far more than their share. So the pool picked may have nothing
        waiting yet: the runner then waits for its next delivery. A trickle (one job at a time,
        each settled before the next arrives) is never waited for."""
        if self.weighted:
            backlog = [bool(p.waiting) or now - p.busy_at < HOLD_S for p in self.pools]
        else:
            backlog = [bool(p.waiting) for p in self.pools]
        index = self.picker.pick(backlog)
        return None if index is None else self.pools[index]

    async def next_job(self, stop: asyncio.Event) -> tuple[Pool, Delivery] | None:
        """The next job to run and its pool, by weight; None when none is waiting (or
        ``stop`` is set): the runner then ends."""
        loop = asyncio.get_running_loop()
        while not stop.is_set() and (pool := self.next_pool(loop.time())) is not None:
            # Its turn, and its next job on the way (a weighted pool only): wait for it rather
            # than give the turn to a lighter queue. The turn is taken, so a runner woken by a
            # delivery another runner took waits on for this queue, never picks again.
            while not pool.waiting and not stop.is_set():
                remaining = pool.busy_at + HOLD_S - loop.time()
                if remaining <= 0:
                    break
                pool.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pool.arrived.wait(), remaining)
            if not pool.waiting:
                continue
            delivery = pool.waiting.popleft()
            # A job held on a channel that has closed since is back in its queue already.
            if not delivery.acks.channel.is_closed:
                return pool, delivery
        return None


def runner_groups(pools: list[Pool]) -> list[Runners]:
    """The distinct runner groups of ``pools``, in order."""
    return list({id(pool.runners): pool.runners for pool in pools}.values())


def plan_pools(app: App, topology: Topology, options: WorkerOptions) -> list[Pool]:
    """A pool for every queue named in ``options``, or of the weighted pool it names, or else
    for every queue a job type with a handler in ``app`` reaches; ``ConfigError`` when there is
    none or a bound is wrong."""
    if options.pool is not None:
        return _weighted_pools(topology, options)
    return [_pool_for(topology, options, name) for name in _queue_names(app, topology, options)]


def _weighted_pools(topology: Topology, options: WorkerOptions) -> list[Pool]:
    assert options.pool is not None
    if options.queues:
        raise ConfigError("give either a weighted pool or queues, not both")
    spec: WeightedPool | None = topology.pools.get(options.pool)
    if spec is None:
        declared = ", ".join(sorted(topology.pools)) or "none are declared"
        raise ConfigError(f"pool {options.pool!r} is not in the topology (pools: {declared})")
    overrides = {
        key: value
        for key, value in (("concurrency", options.concurrency), ("prefetch", options.prefetch))
        if value is not None
    }
    if overrides:
        try:
            spec = spec.model_validate({**spec.model_dump(), **overrides})
        except ValidationError as exc:
            reason = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            raise ConfigError(f"pool {options.pool!r}: {reason}") from None
    concurrency = spec.concurrency
    pools = [
        Pool(queue, concurrency, spec.prefetch_of(queue), _consumer_tag(queue))
        for queue in spec.queues
    ]
    shared = Runners(
        options.pool,
        concurrency,
        pools,
        WeightedPicker(list(spec.queues.values())),
        weighted=True,
    )
    for pool in pools:
        pool.runners = shared
    return pools


def _queue_names(app: App, topology: Topology, options: WorkerOptions) -> list[str]:
    for job_type in app.job_types:
        if job_type not in topology.job_types:
            log.warning("handler for job type %r, which the topology does not have", job_type)
    if options.queues:
        unknown = [q for q in options.queues if q not in topology.queues]
        if unknown:
            raise ConfigError(f"queue(s) not in the topology: {', '.join(unknown)}")
        return list(dict.fromkeys(options.queues))
    names: list[str] = []
    for job_type in app.job_types:
        spec = topology.job_types.get(job_type)
        if spec is not None:
            names += [q for q in route_job_type(topology, spec) if q not in names]
    if not names:
        raise ConfigError("no queue to consume: no handler's job type reaches a queue")
    return names


def _pool_for(topology: Topology, options: WorkerOptions, name: str) -> Pool:
    defaults = topology.queues[name].consumer
    concurrency = options.concurrency or defaults.concurrency
    prefetch = options.prefetch or max(defaults.prefetch, concurrency)
    if prefetch < concurrency:
        raise ConfigError(f"prefetch ({prefetch}) is below concurrency ({concurrency})")
    return Pool(name, concurrency, prefetch, _consumer_tag(name))


def _consumer_tag(queue: str) -> str:
    return f"jobsys.{socket.gethostname()}.{os.getpid()}.{queue}.{uuid.uuid4().hex[:8]}"


def describe_pools(pools: list[Pool]) -> str:
    """The pools in one line for the start banner: ``a (concurrency 10, prefetch 20), b (...)``;
    a weighted pool as ``pool mixed (concurrency 10): urgent 6 (prefetch 40), bulk 1 (...)``."""
    parts = []
    for group in runner_groups(pools):
        first = group.pools[0]
        if not group.weighted:
            parts.append(
                f"{first.queue} (concurrency {group.concurrency}, prefetch {first.prefetch})"
            )
            continue
        weights = ", ".join(
            f"{pool.queue} {weight} (prefetch {pool.prefetch})"
            for pool, weight in zip(group.pools, group.picker.weights, strict=True)
        )
        parts.append(f"pool {group.name} (concurrency {group.concurrency}): {weights}")
    return ", ".join(parts)
