"""Broker faults, checked with the ledger: a full queue nacking publishes, a test-owned node
killed with -9 in the middle of a 20,000-job publish, and a node restarted while a worker
consumes. The kill and the restart are slow (``@pytest.mark.slow``: CI runs them).

(A 3,000-job kill without the resubmission and the consumer side is
``test_producer_broker_kill.py``; a restart between two batches is
``test_worker_faults.py::test_worker_resumes_after_a_restart_of_its_broker_node``.)
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobsys.consume.options import WorkerOptions
from jobsys.errors import ConnectionFailed, JobsysError, PublishOutcomeUnknown, QueueFullError
from jobsys.publish.producer import JobRequest, Producer, Receipt
from jobsys.settings import Settings
from tests.apps import failure_apps
from tests.apps.failure_apps import (
    WORK,
    WORK_DEAD,
    FailureWorker,
    effects,
    handler_lines,
    publish_into,
    wait_until,
)
from tests.conftest import settings_for_vhost
from tests.harness.fixtures import node_settings
from tests.harness.ledger import Ledger
from tests.harness.rabbit_node import RabbitNode
from tests.harness.running import running_worker

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def node_vhost(running_own_broker: RabbitNode) -> Iterator[Settings]:
    """Settings for a fresh vhost on the test-owned node."""
    name = f"jobsys-broker-{uuid.uuid4().hex[:8]}"
    running_own_broker.ctl("add_vhost", name)
    running_own_broker.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield settings_for_vhost(node_settings(running_own_broker), name)
    finally:
        running_own_broker.ensure_running()
        running_own_broker.ctl("delete_vhost", name)


@pytest.fixture
def workers() -> Iterator[list[FailureWorker]]:
    started: list[FailureWorker] = []
    yield started
    for worker in started:
        worker.kill()


async def test_jobs_a_full_queue_nacked_are_never_reported_published_or_found_queued(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    limit = 100
    # Quorum: a classic queue under reject-publish would drop delayed jobs and retries.
    spec = failure_apps.topology(max_length=limit, queue_type="quorum")
    loaded = failure_apps.write_topology(tmp_path, spec)
    await failure_apps.apply(vhost_settings, loaded)
    ledger = Ledger()
    async with Producer(vhost_settings, loaded.topology) as producer:
        ids = [f"job-{i:04d}" for i in range(600)]
        results = await producer.publish_many(
            [JobRequest("task", {}, job_id=job_id) for job_id in ids], window=64
        )
    ledger.record_many(ids, results)
    assert {type(r) for r in results} == {Receipt, QueueFullError}
    await ledger.read_queue(vhost_settings.url, WORK)
    result = ledger.check()
    print(f"queue full: {result.summary()}")
    result.assert_ok()
    # Every confirmed job is there and no nacked one is. A quorum queue may take a few more
    # than its limit while publishes are in flight together.
    assert len(ledger.confirmed) == sum(ledger.queued.values())
    assert limit <= len(ledger.confirmed) < 600
    assert len(ledger.failed) == 600 - len(ledger.confirmed)
    assert set(ledger.failure.values()) == {"QueueFullError"}


JOBS = 20_000
KILL_AFTER_CONFIRMED = 5_000
LANES = 128


@pytest.mark.slow
async def test_a_broker_killed_during_20000_publishes_loses_no_confirmed_job_and_resubmits_safely(
    running_own_broker: RabbitNode,
    node_vhost: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = running_own_broker
    loaded = failure_apps.write_topology(tmp_path)
    await failure_apps.apply(node_vhost, loaded)
    # Long enough for jobs sent during the outage to wait for the restarted node.
    settings = node_vhost.with_overrides(publish_timeout_s=90.0)
    ledger = Ledger()
    results: dict[str, Receipt | JobsysError] = {}
    confirmed_enough = asyncio.Event()
    pending = iter([f"job-{i:05d}" for i in range(JOBS)])
    confirmed = 0

    async def lane(producer: Producer) -> None:
        nonlocal confirmed
        for job_id in pending:
            try:
                results[job_id] = await producer.publish("idempotent", {}, job_id=job_id)
                confirmed += 1
            except JobsysError as exc:
                results[job_id] = exc
            if confirmed >= KILL_AFTER_CONFIRMED:
                confirmed_enough.set()

    async with Producer(settings, loaded.topology) as producer:
        lanes = [asyncio.create_task(lane(producer)) for _ in range(LANES)]
        await asyncio.wait_for(confirmed_enough.wait(), timeout=120)
        await asyncio.to_thread(node.kill)
        await asyncio.to_thread(node.start)
        await asyncio.gather(*lanes)
        for job_id, outcome in results.items():
            ledger.record_publish(job_id, outcome)
        kinds = Counter(type(r).__name__ for r in results.values())
        print(f"broker kill -9 publish results: {dict(kinds)}")
        assert len(results) == JOBS
        assert set(kinds) <= {"Receipt", "PublishOutcomeUnknown", "ConnectionFailed"}, kinds
        unknown = {j for j, r in results.items() if isinstance(r, PublishOutcomeUnknown)}
        assert unknown, "the kill should have caught jobs between publish and confirm"
        assert all(
            "was not published" in str(r) for r in results.values() if type(r) is ConnectionFailed
        )
        # Resubmit what is unknown with the same ids: safe, by the job id.
        resubmitted = await producer.publish_many(
            [JobRequest("idempotent", {}, job_id=job_id) for job_id in sorted(unknown)]
        )
        for job_id, outcome in zip(sorted(unknown), resubmitted, strict=True):
            ledger.record_publish(job_id, outcome)
    assert not ledger.unknown, "every resubmission should have been confirmed"

    record = tmp_path / "w.record"
    for name, value in failure_apps.record_env(record).items():
        monkeypatch.setenv(name, value)
    async with running_worker(
        failure_apps.app, loaded, node_vhost, WorkerOptions(concurrency=32, prefetch=128)
    ):
        await wait_until(
            lambda: set(handler_lines(record, "done")) >= ledger.confirmed,
            timeout_s=180,
            what="every confirmed job done",
        )
        await wait_until(lambda: _empty(node_vhost), what="the queue drained")
    ledger.read_runs(record)
    await ledger.read_queue(node_vhost.url, WORK)
    await ledger.read_queue(node_vhost.url, WORK_DEAD, dead=True)
    result = ledger.check()
    print(f"broker kill -9 during {JOBS} publishes: {result.summary()}")
    # A job whose first outcome was unknown but which was queued anyway is queued twice after
    # its resubmission and runs twice; only those may, and their effect still happens once.
    result.assert_ok(allowed_duplicates=unknown)
    applied = Counter(effects(record))
    assert set(applied) == ledger.confirmed
    assert max(applied.values()) == 1, applied.most_common(3)


@pytest.mark.slow
async def test_a_broker_restart_during_consumption_is_ridden_out_by_a_running_worker(
    running_own_broker: RabbitNode,
    node_vhost: Settings,
    tmp_path: Path,
    workers: list[FailureWorker],
) -> None:
    node = running_own_broker
    loaded = failure_apps.write_topology(tmp_path)
    await failure_apps.apply(node_vhost, loaded)
    ledger = Ledger()
    prefetch = 16
    worker = FailureWorker(tmp_path, node_vhost, "--concurrency", "8", "--prefetch", str(prefetch))
    workers.append(worker)
    await worker.wait_for_output("consuming ft.work")
    async with Producer(node_vhost, loaded.topology) as producer:
        await publish_into(ledger, producer, "task", [{"sleep_s": 0.01}] * 2000, prefix="job")
    await wait_until(lambda: len(handler_lines(worker.record, "done")) >= 300, what="300 done")
    await asyncio.to_thread(node.restart)
    started_before = set(handler_lines(worker.record, "start"))
    assert len(started_before) < 2000, "the restart came after the work was done"
    await wait_until(
        lambda: set(handler_lines(worker.record, "done")) >= ledger.confirmed,
        timeout_s=120,
        what="every job done after the restart",
    )
    assert worker.proc.poll() is None, "the worker exited instead of riding out the restart"
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(30) == 0, worker.stderr
    ledger.read_runs(worker.record)
    await ledger.read_queue(node_vhost.url, WORK)
    await ledger.read_queue(node_vhost.url, WORK_DEAD, dead=True)
    result = ledger.check()
    print(f"broker restart during consumption: {result.summary()}")
    result.assert_ok(allowed_duplicates=started_before)
    assert len(result.duplicated) <= prefetch
    assert len(result.ok) == 2000


async def _empty(settings: Settings) -> bool:
    return await failure_apps.queue_depth(settings) == 0
