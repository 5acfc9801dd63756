"""The app, topology and helpers of the failure scenarios (``test_failures_*.py``).

Handlers append "start <job id>" and "done <job id>" to the file named by
``JOBSYS_TEST_RECORD``, in a subprocess worker and in-process alike, so a ``Ledger`` can read
what ran. ``idempotent`` jobs also apply their effect at most once per job id (a marker file
per id under ``JOBSYS_TEST_EFFECTS``) and note "effect <job id>" when they do.

Every job type has ``retry: {max_attempts: 1}``: these scenarios are about losing and
duplicating jobs, not about retries, and a failed attempt dead-letters at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import yaml
from aio_pika.abc import FieldValue
from pydantic import BaseModel

from jobsys.app import App, JobContext
from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology
from jobsys.publish.producer import JobRequest, Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology
from jobsys.wire.headers import HEADER_JOB_ID
from tests.harness.ledger import Ledger
from tests.harness.worker_subprocess import WorkerSubprocess
from tests.harness.worker_subprocess import wait_until as harness_wait_until

WORK = "ft.work"
WORK_DEAD = "ft.work.dead"
EXCHANGE = "ft.jobs"
APP_TARGET = "tests.apps.failure_apps:app"

app = App()


def topology(
    queue_type: str = "classic",
    *,
    delays_type: str | None = "classic",
    max_length: int | None = None,
    concurrency: int = 4,
    prefetch: int = 8,
) -> dict[str, Any]:
    """The scenarios' topology: one work queue (and its dead-letter queue) behind ``ft.jobs``."""
    queue: dict[str, Any] = {
        "type": queue_type,
        "consumer": {"concurrency": concurrency, "prefetch": prefetch},
    }
    if max_length is not None:
        queue.update(max_length=max_length, overflow="reject-publish")
    once = {"max_attempts": 1}
    return {
        "version": 1,
        "exchanges": {EXCHANGE: {"type": "direct"}},
        "queues": {WORK: queue},
        "bindings": [{"exchange": EXCHANGE, "queue": WORK, "routing_key": "work"}],
        "job_types": {
            name: {"exchange": EXCHANGE, "routing_key": "work", "timeout": "60s", "retry": once}
            for name in ("task", "idempotent", "strict", "unhandled")
        },
        "delays": {} if delays_type is None else {"queue_type": delays_type},
    }


def write_topology(directory: Path, spec: dict[str, Any] | None = None) -> LoadedTopology:
    """Write ``spec`` (default: ``topology()``) to ``directory/topology.yaml`` and load it."""
    file = directory / "topology.yaml"
    file.write_text(yaml.safe_dump(spec or topology()), encoding="utf-8")
    return load_topology(file)


async def apply(settings: Settings, loaded: LoadedTopology) -> None:
    """Declare the topology (in the settings' vhost)."""
    async with BrokerConnection(settings) as conn:
        await apply_topology(conn, loaded, use_management=False)


# -- handlers ----------------------------------------------------------------------------------


class StrictPayload(BaseModel):
    """``strict`` jobs need a name."""

    name: str


def _append(line: str) -> None:
    with open(os.environ["JOBSYS_TEST_RECORD"], "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


@app.handler("task")
async def task(payload: dict[str, Any], ctx: JobContext) -> None:
    """Records its start and end around ``payload["sleep_s"]`` seconds of work."""
    _append(f"start {ctx.job_id}")
    await asyncio.sleep(float(payload.get("sleep_s", 0)))
    _append(f"done {ctx.job_id}")


@app.handler("idempotent")
async def idempotent(payload: dict[str, Any], ctx: JobContext) -> None:
    """Applies its effect once per job id, however often it runs."""
    _append(f"start {ctx.job_id}")
    marker = Path(os.environ["JOBSYS_TEST_EFFECTS"]) / ctx.job_id
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        pass  # done before: the job id is the idempotency key
    else:
        os.close(fd)
        _append(f"effect {ctx.job_id}")
    _append(f"done {ctx.job_id}")


@app.handler("strict")
async def strict(payload: StrictPayload, ctx: JobContext) -> None:
    """Runs only with a valid payload."""
    _append(f"start {ctx.job_id}")
    _append(f"done {ctx.job_id}")


def record_env(record: Path) -> dict[str, str]:
    """The environment that makes handlers write to ``record``; the idempotent effects'
    markers live beside it (shared by every worker writing there)."""
    effects = record.parent / "effects"
    effects.mkdir(exist_ok=True)
    return {"JOBSYS_TEST_RECORD": str(record), "JOBSYS_TEST_EFFECTS": str(effects)}


def effects(record: Path) -> list[str]:
    """The job ids whose idempotent effect was applied, one entry per application."""
    if not record.exists():
        return []
    lines = record.read_text(encoding="utf-8").splitlines()
    return [line.split(" ", 1)[1] for line in lines if line.startswith("effect ")]


def handler_lines(record: Path, kind: str) -> list[str]:
    """The job ids of the ``kind`` ("start" / "done") lines in ``record``."""
    if not record.exists():
        return []
    prefix = kind + " "
    lines = record.read_text(encoding="utf-8").splitlines()
    return [line[len(prefix) :] for line in lines if line.startswith(prefix)]


# -- publishing into a ledger ------------------------------------------------------------------


async def publish_into(
    ledger: Ledger,
    producer: Producer,
    job_type: str,
    payloads: Sequence[Any],
    *,
    prefix: str,
    window: int = 256,
) -> list[str]:
    """Publish one job per payload with ids ``prefix-00000``...; records every result."""
    ids = [f"{prefix}-{i:05d}" for i in range(len(payloads))]
    requests = [JobRequest(job_type, p, job_id=i) for i, p in zip(ids, payloads, strict=True)]
    ledger.record_many(ids, await producer.publish_many(requests, window=window))
    return ids


async def publish_raw(
    settings: Settings, body: bytes, *, job_id: str, routing_key: str = "work", **props: Any
) -> None:
    """Publish, confirmed, a message jobsys did not build (for bad-input scenarios)."""
    async with BrokerConnection(settings) as conn:
        channel = await conn.channel(confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        headers: dict[str, FieldValue] = {HEADER_JOB_ID: job_id}
        props.setdefault("content_type", "application/json")
        await exchange.publish(
            aio_pika.Message(body, headers=headers, delivery_mode=2, **props), routing_key
        )


async def drain(settings: Settings, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message now in ``queue``, taken out (acked)."""
    connection = await aio_pika.connect(settings.url)
    try:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=False)
        messages = []
        while (message := await q.get(fail=False, no_ack=True)) is not None:
            messages.append(message)
        return messages
    finally:
        await connection.close()


async def queue_depth(settings: Settings, queue: str = WORK) -> int:
    """Ready messages in ``queue``."""
    connection = await aio_pika.connect(settings.url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


async def wait_until(check: Callable[[], Any], timeout_s: float = 20.0, what: str = "") -> None:
    """Poll ``check`` (sync or async) until it is truthy; fail after ``timeout_s``."""
    await harness_wait_until(check, timeout_s, what)


class FailureWorker(WorkerSubprocess):
    """``jobsys worker tests.apps.failure_apps:app`` in a subprocess; its handlers
    write to ``tmp_path/<name>.record`` and its stderr goes to ``tmp_path/<name>.stderr``."""

    output_timeout_s = 30.0

    def __init__(self, tmp_path: Path, settings: Settings, *args: str, name: str = "w") -> None:
        self.record = tmp_path / f"{name}.record"
        super().__init__(
            APP_TARGET,
            tmp_path / "topology.yaml",
            tmp_path / f"{name}.stderr",
            {**record_env(self.record), "JOBSYS_URL": settings.url},
            args,
        )


def in_flight(record: Path) -> set[str]:
    """Jobs whose handler started and has not finished, by the record so far."""
    started = handler_lines(record, "start")
    done = set(handler_lines(record, "done"))
    return {job_id for job_id in started if job_id not in done}


def ids_of(*groups: Iterable[str]) -> set[str]:
    """The union of ``groups``."""
    return set().union(*groups)
