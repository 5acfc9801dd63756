"""Handler apps and helpers for the worker tests.

``jobsys worker tests.apps.worker_apps:app --topology FILE`` runs ``app`` in a
subprocess; handlers that the subprocess tests watch append lines to the file named by
``JOBSYS_TEST_RECORD`` ("start <job id>" / "done <job id>"). In-process tests watch ``PROBE``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from pydantic import BaseModel

from jobsys.app import App, JobContext
from jobsys.broker.connection import BrokerConnection
from jobsys.errors import Reject
from jobsys.ops.declare import apply_topology
from jobsys.publish.producer import JobRequest, Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology, load_topology_text
from jobsys.wire.envelope import new_job_id
from jobsys.wire.headers import HEADER_JOB_ID
from tests.harness.worker_subprocess import WorkerSubprocess
from tests.harness.worker_subprocess import wait_until as wait_until

# Job types whose handlers fail take ``retry: {max_attempts: 1}``: these tests are about one
# attempt's settlement; tests/integration/test_retries.py covers retries.
TOPOLOGY_YAML = """\
version: 1
exchanges:
  wt.jobs: {type: direct}
queues:
  wt.work:
    type: classic
    consumer: {concurrency: 4, prefetch: 8}
  wt.other:
    type: classic
    consumer: {concurrency: 1, prefetch: 1}
bindings:
  - {exchange: wt.jobs, queue: wt.work, routing_key: work}
  - {exchange: wt.jobs, queue: wt.other, routing_key: other}
job_types:
  echo: {exchange: wt.jobs, routing_key: work, timeout: 10s}
  email: {exchange: wt.jobs, routing_key: work, timeout: 10s}
  boom: {exchange: wt.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 1}}
  refuse: {exchange: wt.jobs, routing_key: work, timeout: 10s}
  slow: {exchange: wt.jobs, routing_key: work, timeout: 500ms, retry: {max_attempts: 1}}
  sync_echo: {exchange: wt.jobs, routing_key: work, timeout: 10s}
  sync_slow:
    {exchange: wt.jobs, routing_key: work, timeout: 500ms, retry: {max_attempts: 1}}
  hold: {exchange: wt.jobs, routing_key: work, timeout: 60s}
  record: {exchange: wt.jobs, routing_key: work, timeout: 60s}
  orphan: {exchange: wt.jobs, routing_key: work, timeout: 10s}
  other: {exchange: wt.jobs, routing_key: other, timeout: 10s}
"""

WORK = "wt.work"
WORK_DEAD = "wt.work.dead"


@dataclass
class Probe:
    """What the in-process handlers saw."""

    done: list[str] = field(default_factory=list)
    contexts: list[JobContext] = field(default_factory=list)
    payloads: list[Any] = field(default_factory=list)
    running: int = 0
    max_running: int = 0
    release: asyncio.Event | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        """Forget everything (each test starts clean)."""
        self.__init__()  # type: ignore[misc]


PROBE = Probe()
app = App()


class EmailPayload(BaseModel):
    """The payload of ``email`` jobs."""

    to: str
    subject: str
    retries: int = 0


@app.handler("echo")
async def echo(payload: Any, ctx: JobContext) -> None:
    PROBE.payloads.append(payload)
    PROBE.contexts.append(ctx)
    PROBE.done.append(ctx.job_id)


@app.handler("email")
async def email(payload: EmailPayload, ctx: JobContext) -> None:
    PROBE.payloads.append(payload)
    PROBE.done.append(ctx.job_id)


@app.handler("boom")
async def boom(payload: Any) -> None:
    raise RuntimeError("the handler broke")


@app.handler("refuse")
async def refuse(payload: Any) -> None:
    raise Reject("not for us")


@app.handler("slow")
async def slow(payload: Any) -> None:
    await asyncio.sleep(30)


@app.handler("sync_echo")
def sync_echo(payload: Any, ctx: JobContext) -> None:
    with PROBE.lock:
        PROBE.payloads.append((threading.current_thread().name, payload))
        PROBE.done.append(ctx.job_id)


@app.handler("sync_slow")
def sync_slow(payload: Any) -> None:
    time.sleep(1.5)


@app.handler("hold")
async def hold(payload: Any, ctx: JobContext) -> None:
    """Counts how many run at once and waits for the test to release it."""
    PROBE.running += 1
    PROBE.max_running = max(PROBE.max_running, PROBE.running)
    try:
        if PROBE.release is not None:
            await PROBE.release.wait()
    finally:
        PROBE.running -= 1
    PROBE.done.append(ctx.job_id)


@app.handler("record")
async def record(payload: dict[str, Any], ctx: JobContext) -> None:
    """Appends "start <id>" and "done <id>" to $JOBSYS_TEST_RECORD around a sleep."""
    path = os.environ["JOBSYS_TEST_RECORD"]
    _append(path, f"start {ctx.job_id}")
    await asyncio.sleep(float(payload.get("sleep_s", 0)))
    _append(path, f"done {ctx.job_id}")


@app.handler("other")
async def other(payload: Any, ctx: JobContext) -> None:
    PROBE.done.append(ctx.job_id)


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()


def read_records(path: Path) -> list[tuple[str, str]]:
    """The ("start"|"done", job id) lines a subprocess worker wrote."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [tuple(line.split(" ", 1)) for line in lines if " " in line]  # type: ignore[misc]


# -- helpers -----------------------------------------------------------------------------------


def loaded_topology(tmp_path: Path | None = None) -> LoadedTopology:
    """The test topology; written to ``tmp_path/topology.yaml`` when a path is given."""
    if tmp_path is None:
        return load_topology_text(TOPOLOGY_YAML, "worker-test.yaml")
    file = tmp_path / "topology.yaml"
    file.write_text(TOPOLOGY_YAML, encoding="utf-8")
    return load_topology(file)


async def apply(settings: Settings, loaded: LoadedTopology) -> None:
    """Declare the topology in the test's vhost."""
    async with BrokerConnection(settings) as conn:
        await apply_topology(conn, loaded, use_management=False)


async def publish(
    settings: Settings, loaded: LoadedTopology, job_type: str, payloads: list[Any]
) -> list[str]:
    """Publish one job per payload with confirms; returns the job ids."""
    async with Producer(settings, loaded.topology) as producer:
        receipts = await producer.publish_many(
            [JobRequest(job_type, payload) for payload in payloads]
        )
    ids = []
    for receipt in receipts:
        assert not isinstance(receipt, Exception), receipt
        ids.append(receipt.job_id)
    return ids


async def publish_raw(
    settings: Settings, body: bytes, *, routing_key: str = "work", **properties: Any
) -> None:
    """Publish a message that jobsys did not build (for bad-input tests)."""
    async with BrokerConnection(settings) as conn:
        channel = await conn.channel(confirms=True)
        exchange = await channel.get_exchange("wt.jobs", ensure=False)
        properties.setdefault("headers", {HEADER_JOB_ID: new_job_id()})
        properties.setdefault("content_type", "application/json")
        await exchange.publish(aio_pika.Message(body, **properties), routing_key=routing_key)


async def queue_depth(settings: Settings, queue: str) -> int:
    """Ready messages in ``queue``."""
    async with BrokerConnection(settings) as conn:
        channel = await conn.channel(confirms=False)
        declared = await channel.get_queue(queue, ensure=True)
        return declared.declaration_result.message_count or 0


async def drain_dead(settings: Settings, queue: str = WORK_DEAD) -> list[aio_pika.IncomingMessage]:
    """Every message in the dead-letter queue, acked."""
    messages = []
    async with BrokerConnection(settings) as conn:
        channel = await conn.channel(confirms=False)
        declared = await channel.get_queue(queue, ensure=True)
        while True:
            message = await declared.get(fail=False, no_ack=True)
            if message is None:
                break
            messages.append(message)
    return messages  # type: ignore[return-value]


class WorkerProcess(WorkerSubprocess):
    """``jobsys worker tests.apps.worker_apps:app`` in a subprocess; handlers record to
    ``tmp_path/record.txt``, stderr goes to ``tmp_path/<name>.stderr``."""

    def __init__(
        self,
        tmp_path: Path,
        settings: Settings,
        *args: str,
        name: str = "w",
        verbose: bool = True,
    ) -> None:
        self.record = tmp_path / "record.txt"
        super().__init__(
            "tests.apps.worker_apps:app",
            tmp_path / "topology.yaml",
            tmp_path / f"{name}.stderr",
            {"JOBSYS_URL": settings.url, "JOBSYS_TEST_RECORD": str(self.record)},
            args,
            verbose=verbose,
        )
