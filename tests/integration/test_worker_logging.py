"""What a worker says on its own: a one-line banner when it is ready, every retry and dead
letter at the default level, and one line per finished job only with ``-v``. Each worker runs
as ``jobsys worker`` in a subprocess, as an operator starts it."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobsys.settings import Settings
from jobsys.topology.loader import load_topology
from tests.apps import worker_apps
from tests.apps.worker_apps import WorkerProcess, publish, queue_depth, wait_until

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]

# ``boom`` retried once after 1 s, then dead-lettered: one retry line and one dead-letter line.
_RETRYING = worker_apps.TOPOLOGY_YAML.replace(
    "boom: {exchange: wt.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 1}}",
    "boom: {exchange: wt.jobs, routing_key: work, timeout: 10s, "
    "retry: {max_attempts: 2, delays: [1s]}}",
)
_BANNER = re.compile(
    r"INFO jobsys\.consume\.worker: jobsys \S+ worker ready \(pid \d+\): "
    r"wt\.work \(concurrency 4, prefetch 8\); (no sync handlers|\d+ handler threads); broker "
)


@pytest.fixture
async def topology_dir(vhost_settings: Settings, tmp_path: Path) -> Path:
    assert _RETRYING != worker_apps.TOPOLOGY_YAML, "the boom retry policy line moved"
    (tmp_path / "topology.yaml").write_text(_RETRYING, encoding="utf-8")
    await worker_apps.apply(vhost_settings, load_topology(tmp_path / "topology.yaml"))
    return tmp_path


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


async def _run_one_of_each(settings: Settings, tmp: Path, worker: WorkerProcess) -> None:
    loaded = load_topology(tmp / "topology.yaml")
    await publish(settings, loaded, "echo", [{"n": 1}])
    await publish(settings, loaded, "boom", [{"n": 2}])
    await wait_until(
        lambda: queue_depth(settings, worker_apps.WORK_DEAD), 20, what="the dead letter"
    )
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0, worker.stderr


async def test_by_default_a_worker_logs_its_banner_retries_and_dead_letters_not_each_job(
    vhost_settings: Settings, topology_dir: Path, workers: list[WorkerProcess]
) -> None:
    worker = WorkerProcess(topology_dir, vhost_settings, "--queue", "wt.work", verbose=False)
    workers.append(worker)
    await worker.wait_for_output("worker ready")
    await _run_one_of_each(vhost_settings, topology_dir, worker)
    lines = worker.stderr.splitlines()
    banners = [line for line in lines if "worker ready" in line]
    assert len(banners) == 1, worker.stderr
    assert _BANNER.search(banners[0]), banners[0]
    assert "broker amqp://guest:***@" in banners[0] and "(RabbitMQ 3." in banners[0]
    assert any(
        "INFO" in line and "(boom): attempt 1 failed (RuntimeError); retrying in 1s" in line
        for line in lines
    ), worker.stderr
    assert any(
        "WARNING" in line and "(boom) dead-lettered to wt.work.dead" in line for line in lines
    ), worker.stderr
    assert "done at attempt" not in worker.stderr
    assert "guest:guest" not in worker.stderr


async def test_with_v_a_worker_also_logs_each_finished_job(
    vhost_settings: Settings, topology_dir: Path, workers: list[WorkerProcess]
) -> None:
    worker = WorkerProcess(topology_dir, vhost_settings, "--queue", "wt.work", verbose=True)
    workers.append(worker)
    await worker.wait_for_output("worker ready")
    await _run_one_of_each(vhost_settings, topology_dir, worker)
    done = [line for line in worker.stderr.splitlines() if "done at attempt" in line]
    assert len(done) == 1, worker.stderr
    expected = r"DEBUG jobsys\.consume\.worker: job \S+ \(echo\) done at attempt 1 in "
    assert re.search(expected, done[0]), done[0]


async def test_the_handler_thread_count_is_the_documented_threads_option(
    vhost_settings: Settings, topology_dir: Path, workers: list[WorkerProcess]
) -> None:
    # Item 6 of the hardening: the sync handlers' pool size is an option, documented, and the
    # worker says which it uses.
    assert "[--threads T]" in (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    worker = WorkerProcess(topology_dir, vhost_settings, "--threads", "3", verbose=False)
    workers.append(worker)
    await worker.wait_for_output("worker ready")
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0, worker.stderr
    [banner] = [line for line in worker.stderr.splitlines() if "worker ready" in line]
    assert "; 3 handler threads; " in banner, banner


async def test_a_sync_handler_that_overran_and_then_returned_is_not_reported_still_running(
    vhost_settings: Settings, topology_dir: Path, workers: list[WorkerProcess]
) -> None:
    # U8: a worker once said "1 sync handler(s) still running; exiting" and exited hard long
    # after its sync handlers had finished. sync_slow sleeps 1.5 s past its 500 ms deadline.
    worker = WorkerProcess(topology_dir, vhost_settings, verbose=False)
    workers.append(worker)
    await worker.wait_for_output("worker ready")
    loaded = load_topology(topology_dir / "topology.yaml")
    await publish(vhost_settings, loaded, "sync_slow", [{}, {}])
    await wait_until(
        lambda: worker.stderr.count("(sync_slow) dead-lettered to") == 2, 20, what="both failed"
    )
    await asyncio.sleep(2.5)  # both threads have returned by now
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0, worker.stderr
    assert worker.stderr.count("sync handler overran its deadline") == 2, worker.stderr
    assert "still running" not in worker.stderr, worker.stderr
