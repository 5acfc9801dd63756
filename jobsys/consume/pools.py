"""What a worker consumes and how: its options, its pools (one per queue, with their bounds)
and its stats. Working out the pools is pure; the worker fills in their channels."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from aio_pika.abc import AbstractRobustChannel

from jobsys.app import App
from jobsys.consume.acks import Acks
from jobsys.consume.attempt import Job
from jobsys.errors import ConfigError
from jobsys.topology.check import route_job_type
from jobsys.topology.model import Topology

log = logging.getLogger(__name__)


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
    retried: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    unfinished: int = 0
    lost_acks: int = 0

    @property
    def settled(self) -> int:
        """Deliveries finished one way or the other: done, retried (republished for a later
        attempt) or dead-lettered."""
        return self.done + self.retried + self.dead_lettered

    def summary(self) -> str:
        """One line for the end of a run."""
        line = (
            f"worker stopped: {self.done} done, {self.dead_lettered} dead-lettered, "
            f"{self.requeued} requeued, {self.unfinished} unfinished"
        )
        if self.retried:
            line += f", {self.retried} attempts failed and retried"
        if self.lost_acks:
            line += f", {self.lost_acks} redelivered after a lost channel"
        return line


@dataclass
class Pool:
    """One queue's consumer pool: its bounds, channel and the jobs it holds."""

    queue: str
    concurrency: int
    prefetch: int
    consumer_tag: str
    channel: AbstractRobustChannel | None = None
    acks: Acks[Job] | None = None
    running: int = 0
    waiting: deque[Job] = field(default_factory=deque)
    consuming: bool = False


def plan_pools(app: App, topology: Topology, options: WorkerOptions) -> list[Pool]:
    """A pool for every queue named in ``options``, or else for every queue a job type with a
    handler in ``app`` reaches; ``ConfigError`` when there is none or a bound is wrong."""
    return [_pool_for(topology, options, name) for name in _queue_names(app, topology, options)]


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
    tag = f"jobsys.{socket.gethostname()}.{os.getpid()}.{name}.{uuid.uuid4().hex[:8]}"
    return Pool(name, concurrency, prefetch, tag)
