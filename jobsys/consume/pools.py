"""What a worker consumes: its pools, one per queue, with their bounds. Working out the pools
is pure; the worker fills in their channels."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import deque
from dataclasses import dataclass, field

from aio_pika.abc import AbstractRobustChannel

from jobsys.app import App
from jobsys.consume.acks import Acks
from jobsys.consume.attempt import Delivery
from jobsys.consume.options import WorkerOptions
from jobsys.errors import ConfigError
from jobsys.topology.model import Topology
from jobsys.topology.routing import route_job_type

log = logging.getLogger(__name__)


@dataclass
class Pool:
    """One queue's consumer pool: its bounds, channel and the deliveries it holds."""

    queue: str
    concurrency: int
    prefetch: int
    consumer_tag: str
    channel: AbstractRobustChannel | None = None
    acks: Acks[Delivery] | None = None
    running: int = 0
    waiting: deque[Delivery] = field(default_factory=deque)
    consuming: bool = False
    #: Its jobs go into the job history (set by the worker).
    recorded: bool = False


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


def describe_pools(pools: list[Pool]) -> str:
    """The pools in one line for the start banner: ``a (concurrency 10, prefetch 20), b (...)``."""
    return ", ".join(
        f"{pool.queue} (concurrency {pool.concurrency}, prefetch {pool.prefetch})" for pool in pools
    )
