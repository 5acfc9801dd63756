"""A small app and topology for the worker's hostile-input and misbehaving-handler tests.

Handlers record what they saw in ``SEEN`` (in-process tests) so a test can tell a job that ran
from one that was held, duplicated or lost.
"""

from __future__ import annotations

import asyncio
import collections
import struct
import sys
import threading
import time
from datetime import datetime
from typing import Any

import aiormq
from pamqp import commands as spec

from jobsys.app import App, JobContext
from jobsys.broker.connection import BrokerConnection
from jobsys.errors import Reject
from jobsys.ops.declare import apply_topology
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text
from jobsys.wire.envelope import new_job_id
from jobsys.wire.headers import HEADER_JOB_ID

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
  weird:
    {exchange: hx.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 2, delays: [1s]}}
  fails_twice:
    {exchange: hx.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 2, delays: [1s]}}
  exits: {exchange: hx.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 1}}
  interrupts: {exchange: hx.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 1}}
  blocks: {exchange: hx.jobs, routing_key: work, timeout: 1s, retry: {max_attempts: 1}}
  sync_hangs: {exchange: hx.jobs, routing_key: work, timeout: 1s, retry: {max_attempts: 1}}
  fails: {exchange: hx.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 1}}
  garbled:
    {exchange: hx.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 2, delays: [1s]}}
  unprintable:
    {exchange: hx.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 2, delays: [1s]}}
  rejects_garbled: {exchange: hx.jobs, routing_key: work, timeout: 10s}
"""

WORK = "hx.work"
OTHER = "hx.other"

#: job id -> how many times its handler started.
SEEN: collections.Counter[str] = collections.Counter()
#: job id -> (wall-clock time its handler last started, the due time it carried).
STARTED: dict[str, tuple[float, datetime | None]] = {}
_lock = threading.Lock()


def _seen(ctx: JobContext) -> None:
    with _lock:
        SEEN[ctx.job_id] += 1
        STARTED[ctx.job_id] = (time.time(), ctx.due_at)


class Weird(BaseException):
    """Neither an Exception nor a cancellation: what a careless library might raise."""


#: Text built from bytes that are not UTF-8: lone surrogates, which no encoder accepts.
GARBLED = "caf" + b"\xe9".decode("utf-8", "surrogateescape")


class Unprintable(Exception):
    """An exception whose message cannot even be read."""

    def __str__(self) -> str:
        raise RuntimeError("no message for you")


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


@app.handler("garbled")
async def garbled(payload: dict[str, Any], ctx: JobContext) -> None:
    _seen(ctx)
    raise ValueError(f"bad name {GARBLED}")


@app.handler("unprintable")
async def unprintable(payload: dict[str, Any], ctx: JobContext) -> None:
    _seen(ctx)
    raise Unprintable


@app.handler("rejects_garbled")
async def rejects_garbled(payload: dict[str, Any], ctx: JobContext) -> None:
    _seen(ctx)
    raise Reject(f"bad name {GARBLED}")


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
    time.sleep(float(payload["block_s"]))  # noqa: ASYNC251 - blocks the loop, as careless code does


@app.handler("sync_hangs")
def sync_hangs(payload: dict[str, Any], ctx: JobContext) -> None:
    _seen(ctx)
    time.sleep(float(payload["sleep_s"]))


@app.handler("fails")
async def fails(payload: dict[str, Any], ctx: JobContext) -> None:
    _seen(ctx)
    raise RuntimeError("this job always fails")


@app.handler("fails_twice")
async def fails_twice(payload: dict[str, Any], ctx: JobContext) -> None:
    _seen(ctx)
    raise RuntimeError("this job fails every time")


def loaded_topology() -> LoadedTopology:
    return load_topology_text(TOPOLOGY_YAML, "hostile-test.yaml")


async def apply(settings: Settings, loaded: LoadedTopology) -> None:
    async with BrokerConnection(settings) as connection:
        await apply_topology(connection, loaded, use_management=False)


# -- publishing what jobsys would never publish ---------------------------------------------------


class _RawProperties(spec.Basic.Properties):
    """Properties whose wire bytes are given, so a test can send what no client library would
    encode (invalid UTF-8 in a short string)."""

    __slots__ = ("raw",)

    def marshal(self) -> bytes:
        return self.raw  # type: ignore[no-any-return]


def raw_properties(
    *,
    job_type: str = "quick",
    headers: dict[str, Any] | None = None,
    message_id: str = "m-raw",
    content_type: str = "application/json",
    timestamp: datetime | None = None,
    replace: dict[bytes, bytes] | None = None,
) -> spec.Basic.Properties:
    """Properties as jobsys writes them, with byte runs replaced in their encoded form: e.g.
    ``replace={b"\\x04JTJT": b"\\x04\\xff\\xfe\\xff\\xfe"}`` with ``job_type="JTJT"`` gives a
    type that is not UTF-8. Each replacement must keep its length."""
    props = spec.Basic.Properties(
        content_type=content_type,
        headers={HEADER_JOB_ID: new_job_id(), **(headers or {})},
        delivery_mode=2,
        message_id=message_id,
        timestamp=timestamp,
        message_type=job_type,
    )
    data = props.marshal()
    for old, new in (replace or {}).items():
        assert len(old) == len(new) and old in data, (old, new)
        data = data.replace(old, new)
    raw = _RawProperties()
    raw.raw = data
    return raw


def nested_headers_properties(depth: int, *, job_type: str = "quick") -> spec.Basic.Properties:
    """Properties whose header table (a job id, then one entry) nests ``depth`` tables deep:
    past some 490 levels no Python decoder reads it (pamqp's encoder cannot write it either)."""
    nested = struct.pack(">I", 3) + b"\x01kV"
    for _ in range(depth):
        nested = struct.pack(">I", len(nested) + 3) + b"\x01kF" + nested
    job_id = new_job_id().encode()
    entries = bytes([len(HEADER_JOB_ID)]) + HEADER_JOB_ID.encode() + b"S"
    entries += struct.pack(">I", len(job_id)) + job_id + b"\x04deepF" + nested
    content_type = b"application/json"
    raw = _RawProperties()
    raw.raw = (
        struct.pack(">H", 0x8000 | 0x2000 | 0x1000 | 0x0080 | 0x0020)
        + bytes([len(content_type)])
        + content_type
        + struct.pack(">I", len(entries))
        + entries
        + b"\x02"  # persistent
        + b"\x05m-raw"
        + bytes([len(job_type)])
        + job_type.encode()
    )
    return raw


async def publish_raw(
    settings: Settings,
    properties: spec.Basic.Properties,
    body: bytes = b"{}",
    *,
    exchange: str = "hx.jobs",
    routing_key: str = "work",
) -> None:
    """Publish ``body`` with ``properties`` as they are, past jobsys, with a confirm."""
    connection = await aiormq.connect(settings.url)
    try:
        channel = await connection.channel()
        await channel.confirm_delivery()
        confirmation = await channel.basic_publish(
            body, exchange=exchange, routing_key=routing_key, properties=properties, mandatory=True
        )
        assert isinstance(confirmation, spec.Basic.Ack), confirmation
    finally:
        await connection.close()
