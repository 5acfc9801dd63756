"""A small app and topology for the worker's hostile-input and misbehaving-handler tests.

Handlers record what they saw in ``SEEN`` (in-process tests) so a test can tell a job that ran
from one that was held, duplicated or lost.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import threading
import time
from typing import Any

from jobsys.app import App, JobContext
from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text

TOPOLOGY_YAML = """\
version: 1
exchanges:
  hx.jobs: {type: direct}
queues:
  hx.work:
    type: classic
    consumer: {concurrency: 2, prefetch: 4}
  hx.other:
    type: classic
    consumer: {concurrency: 2, prefetch: 4}
bindings:
  - {exchange: hx.jobs, queue: hx.work, routing_key: work}
  - {exchange: hx.jobs, queue: hx.other, routing_key: other}
job_types:
  quick: {exchange: hx.jobs, routing_key: work, timeout: 10s}
  other_quick: {exchange: hx.jobs, routing_key: other, timeout: 10s}
  weird: {exchange: hx.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 2, delays: [1s]}}
  exits: {exchange: hx.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 1}}
  interrupts: {exchange: hx.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 1}}
  blocks: {exchange: hx.jobs, routing_key: work, timeout: 1s, retry: {max_attempts: 1}}
  sync_hangs: {exchange: hx.jobs, routing_key: work, timeout: 1s, retry: {max_attempts: 1}}
  fails: {exchange: hx.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 1}}
"""

WORK = "hx.work"
OTHER = "hx.other"

#: job id -> how many times its handler started.
SEEN: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()


def _seen(ctx: JobContext) -> None:
    with _lock:
        SEEN[ctx.job_id] += 1


class Weird(BaseException):
    """Neither an Exception nor a cancellation: what a careless library might raise."""


app = App()


@app.handler("quick")
async def quick(payload: dict[str, Any], ctx: JobContext) -> None:
    _seen(ctx)
    await asyncio.sleep(float(payload.get("sleep_s", 0.02)))


@app.handler("other_quick")
async def other_quick(payload: dict[str, Any], ctx: JobContext) -> None:
    _seen(ctx)


@app.handler("weird")
async def weird(payload: dict[str, Any], ctx: JobContext) -> None:
    _seen(ctx)
    raise Weird("not an Exception")


@app.handler("exits")
async def exits(payload: dict[str, Any], ctx: JobContext) -> None:
    _seen(ctx)
    sys.exit(3)


@app.handler("interrupts")
def interrupts(payload: dict[str, Any], ctx: JobContext) -> None:
    _seen(ctx)
    raise KeyboardInterrupt


@app.handler("blocks")
async def blocks(payload: dict[str, Any], ctx: JobContext) -> None:
    _seen(ctx)
    time.sleep(float(payload["block_s"]))  # blocks the event loop, as a careless handler does


@app.handler("sync_hangs")
def sync_hangs(payload: dict[str, Any], ctx: JobContext) -> None:
    _seen(ctx)
    time.sleep(float(payload["sleep_s"]))


@app.handler("fails")
async def fails(payload: dict[str, Any], ctx: JobContext) -> None:
    _seen(ctx)
    raise RuntimeError("this job always fails")


def loaded_topology() -> LoadedTopology:
    return load_topology_text(TOPOLOGY_YAML, "hostile-test.yaml")


async def apply(settings: Settings, loaded: LoadedTopology) -> None:
    async with BrokerConnection(settings) as connection:
        await apply_topology(connection, loaded, use_management=False)
