"""Stopping a worker: SIGTERM drains, a second SIGTERM or the grace period stops at once,
and ``kill -9`` loses nothing. Each worker runs as ``jobsys worker`` in a subprocess."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobsys.settings import Settings
from tests.apps import worker_apps
from tests.apps.worker_apps import (
    WORK,
    WorkerProcess,
    publish,
    queue_depth,
    read_records,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def topology_file(vhost_settings: Settings, tmp_path: Path) -> Path:
    loaded = worker_apps.loaded_topology(tmp_path)
    await worker_apps.apply(vhost_settings, loaded)
    return tmp_path


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


def _count(records: list[tuple[str, str]], kind: str) -> int:
    return sum(1 for k, _ in records if k == kind)


async def _publish_records(settings: Settings, tmp_path: Path, n: int, sleep_s: float) -> list[str]:
    loaded = worker_apps.loaded_topology(tmp_path)
    return await publish(settings, loaded, "record", [{"sleep_s": sleep_s} for _ in range(n)])


async def test_sigterm_lets_running_jobs_finish_requeues_prefetched_ones_and_exits_zero(
    vhost_settings: Settings, topology_file: Path, workers: list[WorkerProcess]
) -> None:
    tmp = topology_file
    worker = WorkerProcess(tmp, vhost_settings, "--concurrency", "2", "--prefetch", "6")
    workers.append(worker)
    await worker.wait_for_output("consuming wt.work")
    await _publish_records(vhost_settings, tmp, 10, sleep_s=1.5)
    await wait_until(lambda: _count(read_records(worker.record), "start") == 2, what="2 started")
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(20) == 0, worker.stderr
    records = read_records(worker.record)
    assert _count(records, "start") == 2 and _count(records, "done") == 2
    match = re.search(
        r"worker stopped: (\d+) done, 0 dead-lettered, (\d+) requeued, 0 unfinished", worker.stderr
    )
    assert match, worker.stderr
    assert match.group(1) == "2"
    assert await queue_depth(vhost_settings, WORK) == 8


async def test_second_sigterm_exits_non_zero_and_unfinished_jobs_are_redelivered(
    vhost_settings: Settings, topology_file: Path, workers: list[WorkerProcess]
) -> None:
    tmp = topology_file
    worker = WorkerProcess(tmp, vhost_settings, "--concurrency", "2", "--prefetch", "2")
    workers.append(worker)
    await worker.wait_for_output("consuming wt.work")
    await _publish_records(vhost_settings, tmp, 4, sleep_s=60)
    await wait_until(lambda: _count(read_records(worker.record), "start") == 2, what="2 started")
    worker.signal(signal.SIGTERM)
    await worker.wait_for_output("stopping")
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(20) == 1, worker.stderr
    assert "0 done, 0 dead-lettered, 0 requeued, 2 unfinished" in worker.stderr
    assert _count(read_records(worker.record), "done") == 0
    await wait_until(
        _depth_is(vhost_settings, 4), what="all four jobs back in the queue (2 redelivered)"
    )


async def test_grace_period_running_out_exits_non_zero_without_acking_unfinished_jobs(
    vhost_settings: Settings, topology_file: Path, workers: list[WorkerProcess]
) -> None:
    tmp = topology_file
    worker = WorkerProcess(
        tmp, vhost_settings, "--concurrency", "1", "--prefetch", "1", "--grace", "1s"
    )
    workers.append(worker)
    await worker.wait_for_output("consuming wt.work")
    await _publish_records(vhost_settings, tmp, 1, sleep_s=60)
    await wait_until(lambda: _count(read_records(worker.record), "start") == 1, what="started")
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(15) == 1, worker.stderr
    assert "grace period of 1s ran out" in worker.stderr
    assert "1 unfinished" in worker.stderr
    await wait_until(_depth_is(vhost_settings, 1), what="the job back in its queue")


async def test_kill_9_of_a_worker_loses_nothing_another_worker_finishes_every_job(
    vhost_settings: Settings, topology_file: Path, workers: list[WorkerProcess]
) -> None:
    tmp = topology_file
    first = WorkerProcess(tmp, vhost_settings, "--concurrency", "3", "--prefetch", "6", name="a")
    workers.append(first)
    await first.wait_for_output("consuming wt.work")
    ids = await _publish_records(vhost_settings, tmp, 40, sleep_s=0.1)
    await wait_until(lambda: _count(read_records(first.record), "done") >= 5, what="5 done")
    first.signal(signal.SIGKILL)
    assert await first.wait_exit(10) == -signal.SIGKILL
    second = WorkerProcess(tmp, vhost_settings, "--concurrency", "3", "--prefetch", "6", name="b")
    workers.append(second)

    def every_job_done() -> bool:
        done = {job_id for kind, job_id in read_records(second.record) if kind == "done"}
        return done >= set(ids)

    await wait_until(every_job_done, timeout_s=60, what="every job done at least once")
    second.signal(signal.SIGTERM)
    assert await second.wait_exit(20) == 0, second.stderr
    assert await queue_depth(vhost_settings, WORK) == 0


def _depth_is(settings: Settings, expected: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return await queue_depth(settings, WORK) == expected

    return check
