"""Retries on a real broker: a failed attempt goes back to its own queue through the delay
levels, on time, and after the last attempt the job lands in the dead-letter queue with its
record. Each test runs an in-process worker in a private vhost.

Gaps are measured between the start times of consecutive attempts: each must be at least its
planned delay and at most the planned delay + 1 s + 10 %.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest

from jobsys.app import App, JobContext
from jobsys.consume.worker import Worker
from jobsys.errors import Reject, Retry
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text
from jobsys.wire.deadletter import replay_headers
from jobsys.wire.headers import (
    HEADER_ATTEMPT,
    HEADER_ATTEMPTS,
    HEADER_DEAD_LETTER_REASON,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_FAILED_AT_MS,
    HEADER_FIRST_FAILED_AT_MS,
    HEADER_JOB_ID,
    HEADER_ORIGINAL_EXCHANGE,
    HEADER_ORIGINAL_QUEUE,
    HEADER_ORIGINAL_ROUTING_KEY,
    HEADER_TRACEBACK,
    HEADER_WORKER_HOST,
)
from tests.apps.worker_apps import apply, drain_dead, publish, queue_depth, wait_until
from tests.harness.running import running_worker

pytestmark = pytest.mark.timeout(90)

WORK = "rt.work"
AUDIT = "rt.audit"
TOPOLOGY_YAML = """\
version: 1
exchanges:
  rt.jobs: {type: direct}
  rt.fanout: {type: fanout}
queues:
  rt.work: {type: classic, consumer: {concurrency: 10, prefetch: 20}}
  rt.audit: {type: classic, consumer: {concurrency: 2, prefetch: 4}}
bindings:
  - {exchange: rt.jobs, queue: rt.work, routing_key: work}
  - {exchange: rt.fanout, queue: rt.work}
  - {exchange: rt.fanout, queue: rt.audit}
job_types:
  flaky:
    {exchange: rt.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 3, delays: [1s, 2s]}}
  always_fails:
    {exchange: rt.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 3, delays: [1s]}}
  five_tries:
    {exchange: rt.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 5, delays: [1s]}}
  not_retried:
    exchange: rt.jobs
    routing_key: work
    timeout: 10s
    retry: {max_attempts: 5, delays: [1s], dont_retry: [PermissionError]}
  refused: {exchange: rt.jobs, routing_key: work, timeout: 10s}
  asks_again:
    {exchange: rt.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 3, delays: [20s]}}
  fanned_out: {exchange: rt.fanout, timeout: 10s, retry: {max_attempts: 3, delays: [0s]}}
"""

#: Start of every attempt, per job id: (queue, attempt, wall-clock time). Wall clock, because a
#: job's due time is wall-clock time, stamped by the worker that delayed it on this machine.
RUNS: dict[str, list[tuple[str, int, float]]] = defaultdict(list)
#: Every attempt that started: (its wall-clock start, the due time it carried).
STARTS: list[tuple[float, datetime | None]] = []
app = App()


def _started(ctx: JobContext) -> None:
    now = time.time()
    RUNS[ctx.job_id].append((ctx.queue, ctx.attempt, now))
    STARTS.append((now, ctx.due_at))


@app.handler("flaky")
async def flaky(payload: Any, ctx: JobContext) -> None:
    _started(ctx)
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt}: the service is down")


@app.handler("always_fails")
async def always_fails(payload: Any, ctx: JobContext) -> None:
    _started(ctx)
    raise RuntimeError("the service said no")


@app.handler("five_tries")
async def five_tries(payload: Any, ctx: JobContext) -> None:
    _started(ctx)
    raise RuntimeError("still no")


@app.handler("not_retried")
async def not_retried(payload: Any, ctx: JobContext) -> None:
    _started(ctx)
    raise PermissionError("not allowed, and retrying will not change that")


@app.handler("refused")
async def refused(payload: Any, ctx: JobContext) -> None:
    _started(ctx)
    raise Reject("not for us")


@app.handler("asks_again")
async def asks_again(payload: Any, ctx: JobContext) -> None:
    _started(ctx)
    if ctx.attempt == 1:
        raise Retry(delay_s=1, reason="come back in a second")


@app.handler("fanned_out")
async def fanned_out(payload: Any, ctx: JobContext) -> None:
    _started(ctx)
    if ctx.attempt == 1:
        raise RuntimeError("first time fails")


@pytest.fixture
async def loaded(vhost_settings: Settings) -> LoadedTopology:
    topology = load_topology_text(TOPOLOGY_YAML, "retries-test.yaml")
    await apply(vhost_settings, topology)
    RUNS.clear()
    STARTS.clear()
    return topology


@pytest.fixture
async def worker(vhost_settings: Settings, loaded: LoadedTopology) -> AsyncIterator[Worker]:
    async with running_worker(app, loaded, vhost_settings) as running:
        yield running
    # What the product promises, for every attempt of every test here: never before it is due.
    early = [(start, due) for start, due in STARTS if due is not None and start < due.timestamp()]
    assert early == [], "attempts started before their due time"


def _runs(job_id: str, count: int) -> Callable[[], bool]:
    return lambda: len(RUNS[job_id]) >= count


def _gaps(job_id: str) -> list[float]:
    starts = [started for _, _, started in RUNS[job_id]]
    return [later - earlier for earlier, later in itertools.pairwise(starts)]


def _on_time(gap_s: float, planned_s: float) -> bool:
    # The lower bound holds by the due time each retry carries, stamped from the failure time
    # rounded down to the millisecond (so a start exactly at its due time may measure up to
    # 1 ms short of the plan); the upper one is a tolerance.
    return planned_s - 0.001 <= gap_s <= planned_s + 1.0 + 0.1 * planned_s


async def test_job_failing_twice_then_succeeding_runs_three_times_with_the_planned_gaps(
    vhost_settings: Settings, loaded: LoadedTopology, worker: Worker
) -> None:
    [job_id] = await publish(vhost_settings, loaded, "flaky", [{"n": 1}])
    await wait_until(lambda: worker.stats.done == 1, timeout_s=20, what="the job done")
    assert [(queue, attempt) for queue, attempt, _ in RUNS[job_id]] == [
        (WORK, 1),
        (WORK, 2),
        (WORK, 3),
    ]
    first, second = _gaps(job_id)
    assert _on_time(first, 1.0), first
    assert _on_time(second, 2.0), second
    assert worker.stats.retried == 2
    assert await drain_dead(vhost_settings, f"{WORK}.dead") == []
    assert await queue_depth(vhost_settings, WORK) == 0


async def test_job_that_keeps_failing_runs_max_attempts_times_and_lands_in_the_dlq_with_its_record(
    vhost_settings: Settings, loaded: LoadedTopology, worker: Worker
) -> None:
    before_ms = int(time.time() * 1000)
    [job_id] = await publish(vhost_settings, loaded, "always_fails", [{"secret": "s3cr3t"}])
    await wait_until(lambda: worker.stats.dead_lettered == 1, timeout_s=20, what="dead-lettered")
    assert [attempt for _, attempt, _ in RUNS[job_id]] == [1, 2, 3]
    assert all(_on_time(gap, 1.0) for gap in _gaps(job_id)), _gaps(job_id)
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    headers = dead.headers
    assert headers[HEADER_JOB_ID] == job_id
    assert headers[HEADER_ATTEMPT] == 3
    assert headers[HEADER_ERROR_TYPE] == "RuntimeError"
    assert headers[HEADER_ERROR_MESSAGE] == "the service said no"
    assert "in always_fails" in str(headers[HEADER_TRACEBACK])
    assert "s3cr3t" not in str(headers[HEADER_TRACEBACK])
    assert headers[HEADER_ATTEMPTS] == 3
    first, last = headers[HEADER_FIRST_FAILED_AT_MS], headers[HEADER_FAILED_AT_MS]
    assert isinstance(first, int) and isinstance(last, int)
    assert before_ms <= first and last - first >= 2000  # two retries of 1 s in between
    assert headers[HEADER_ORIGINAL_EXCHANGE] == "rt.jobs"
    assert headers[HEADER_ORIGINAL_ROUTING_KEY] == "work"
    assert headers[HEADER_ORIGINAL_QUEUE] == WORK
    assert headers[HEADER_WORKER_HOST] == socket.gethostname()
    assert headers[HEADER_DEAD_LETTER_REASON] == "gave up after 3 attempts: RuntimeError"
    assert not [name for name in headers if str(name).startswith("x-")]
    assert dead.body == b'{"secret":"s3cr3t"}'
    # A replay starts the job afresh: attempt 1, no failure record, no carried origin.
    replayed = replay_headers(headers)
    assert replayed[HEADER_ATTEMPT] == 1
    assert not {
        HEADER_FIRST_FAILED_AT_MS,
        HEADER_DEAD_LETTER_REASON,
        HEADER_ORIGINAL_EXCHANGE,
    } & set(replayed)


async def test_error_named_in_dont_retry_is_dead_lettered_after_one_run(
    vhost_settings: Settings, loaded: LoadedTopology, worker: Worker
) -> None:
    [job_id] = await publish(vhost_settings, loaded, "not_retried", [{}])
    await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    assert len(RUNS[job_id]) == 1
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert dead.headers[HEADER_ERROR_TYPE] == "PermissionError"
    assert dead.headers[HEADER_ATTEMPTS] == 1
    assert "dont_retry" in str(dead.headers[HEADER_DEAD_LETTER_REASON])
    assert worker.stats.retried == 0


async def test_rejected_job_is_dead_lettered_after_one_run(
    vhost_settings: Settings, loaded: LoadedTopology, worker: Worker
) -> None:
    [job_id] = await publish(vhost_settings, loaded, "refused", [{}])
    await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    assert len(RUNS[job_id]) == 1
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert dead.headers[HEADER_ERROR_TYPE] == "jobsys.errors.Reject"
    assert dead.headers[HEADER_DEAD_LETTER_REASON] == "rejected by the handler: not for us"


async def test_retry_signal_runs_the_job_again_after_the_delay_it_asked_for(
    vhost_settings: Settings, loaded: LoadedTopology, worker: Worker
) -> None:
    [job_id] = await publish(vhost_settings, loaded, "asks_again", [{}])
    await wait_until(lambda: worker.stats.done == 1, timeout_s=20, what="the job done")
    [gap] = _gaps(job_id)
    # Retry(delay_s=1) wins over the policy's 20 s.
    assert _on_time(gap, 1.0), gap


async def test_jobs_retried_through_the_same_delay_level_again_and_again_are_never_lost(
    vhost_settings: Settings, loaded: LoadedTopology, worker: Worker
) -> None:
    # The broker silently drops a message whose death history shows a cycle through the same
    # TTL queue; a retry strips that history, so every job makes all five runs.
    ids = await publish(vhost_settings, loaded, "five_tries", [{"n": i} for i in range(20)])
    await wait_until(
        lambda: worker.stats.dead_lettered == 20, timeout_s=40, what="every job dead-lettered"
    )
    assert {job_id: len(RUNS[job_id]) for job_id in ids} == {job_id: 5 for job_id in ids}
    dead = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert sorted(str(message.headers[HEADER_JOB_ID]) for message in dead) == sorted(ids)
    assert {message.headers[HEADER_ATTEMPTS] for message in dead} == {5}


async def test_a_retry_goes_back_to_the_queue_it_came_from_not_through_a_fanout(
    vhost_settings: Settings, loaded: LoadedTopology, worker: Worker
) -> None:
    [job_id] = await publish(vhost_settings, loaded, "fanned_out", [{}])
    await wait_until(lambda: worker.stats.done == 2, timeout_s=20, what="both copies done")
    runs = sorted((queue, attempt) for queue, attempt, _ in RUNS[job_id])
    assert runs == [(AUDIT, 1), (AUDIT, 2), (WORK, 1), (WORK, 2)]
    assert await queue_depth(vhost_settings, WORK) == 0
    assert await queue_depth(vhost_settings, AUDIT) == 0
