"""Misbehaving handlers and awkward timing against a real broker: every job is done, waiting,
or dead-lettered with its reason, and the worker keeps serving."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from jobsys.publish.producer import JobRequest, Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from tests.apps import hostile_apps
from tests.apps.hostile_apps import SEEN, WORK
from tests.apps.worker_apps import drain_dead, queue_depth, wait_until
from tests.harness.running import running_worker
from tests.harness.worker_subprocess import WorkerSubprocess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def loaded(vhost_settings: Settings) -> LoadedTopology:
    topology = hostile_apps.loaded_topology()
    await hostile_apps.apply(vhost_settings, topology)
    SEEN.clear()
    return topology


async def publish(
    settings: Settings, loaded: LoadedTopology, job_type: str, payloads: list[Any]
) -> list[str]:
    async with Producer(settings, loaded) as producer:
        results = await producer.publish_many([JobRequest(job_type, p) for p in payloads])
    ids = []
    for result in results:
        assert not isinstance(result, Exception), result
        ids.append(result.job_id)
    return ids


async def _until_empty(settings: Settings, queue: str, timeout_s: float = 15.0) -> None:
    """Wait until ``queue`` holds no ready job."""
    for _ in range(int(timeout_s * 10)):
        if not await queue_depth(settings, queue):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{queue} still holds jobs after {timeout_s:g}s")


def _ran(ids: list[str]) -> bool:
    return all(SEEN[job_id] >= 1 for job_id in ids)


# -- F5: a prefetched job is never stranded ------------------------------------------------------


@pytest.mark.parametrize("sleep_s", [0.0, 0.05])
@pytest.mark.parametrize("burst", [1, 2, 3, 4, 5, 8])
async def test_a_burst_ready_when_the_worker_starts_all_runs_promptly(
    vhost_settings: Settings, loaded: LoadedTopology, burst: int, sleep_s: float
) -> None:
    # concurrency 2, prefetch 4: a burst of exactly 4 once left one job held and never run.
    # The window was one event-loop turn wide: a few starts in a row make a miss likely.
    for _ in range(3):
        SEEN.clear()
        ids = await publish(vhost_settings, loaded, "quick", [{"sleep_s": sleep_s}] * burst)
        async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
            await wait_until(lambda ids=ids: _ran(ids), timeout_s=5, what=f"all {burst} run")
            await wait_until(lambda: worker.stats.done == burst, timeout_s=5, what="all acked")
        assert await queue_depth(vhost_settings, WORK) == 0


async def test_bursts_of_exactly_prefetch_on_a_live_worker_all_run_promptly(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        total = 0
        for _ in range(6):
            ids = await publish(vhost_settings, loaded, "quick", [{"sleep_s": 0.0}] * 4)
            total += 4
            await wait_until(lambda ids=ids: _ran(ids), timeout_s=5, what="the burst run")
            await wait_until(lambda t=total: worker.stats.done == t, timeout_s=5, what="acked")


# -- F6, F8: a handler raising any BaseException is settled like a failure -----------------------


@pytest.mark.parametrize(
    ("job_type", "error_type", "runs"),
    [
        ("weird", "tests.apps.hostile_apps.Weird", 2),  # retried once, then dead-lettered
        ("exits", "SystemExit", 1),
        ("interrupts", "KeyboardInterrupt", 1),  # from a sync handler's thread
    ],
)
async def test_a_handler_raising_a_base_exception_is_settled_and_the_worker_serves_on(
    vhost_settings: Settings, loaded: LoadedTopology, job_type: str, error_type: str, runs: int
) -> None:
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        [bad] = await publish(vhost_settings, loaded, job_type, [{}])
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the job dead-lettered")
        good = await publish(vhost_settings, loaded, "quick", [{}] * 3)
        await wait_until(lambda: _ran(good), what="the next jobs run")
        assert not worker.stopping
    assert SEEN[bad] == runs
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert dead.headers["jobsys-error-type"] == error_type
    assert await queue_depth(vhost_settings, WORK) == 0


async def test_sys_exit_in_a_handler_never_ends_a_supervised_worker_process(
    vhost_settings: Settings, loaded: LoadedTopology, tmp_path: Path
) -> None:
    topology_path = tmp_path / "topology.yaml"
    topology_path.write_text(hostile_apps.TOPOLOGY_YAML, encoding="utf-8")
    worker = WorkerSubprocess(
        "tests.apps.hostile_apps:app",
        topology_path,
        tmp_path / "stderr.txt",
        {"JOBSYS_URL": vhost_settings.url},
        ["--processes", "1"],
    )
    try:
        await worker.wait_for_output("consuming hx.work")
        await publish(vhost_settings, loaded, "exits", [{}, {}, {}])
        await wait_until(
            lambda: worker.stderr.count("dead-lettered to hx.work.dead") == 3,
            what="three jobs dead-lettered",
        )
        await publish(vhost_settings, loaded, "quick", [{}])
        await _until_empty(vhost_settings, WORK)
    finally:
        worker.signal(signal.SIGTERM)
        code = await worker.wait_exit()
        worker.kill()
    assert code == 0, worker.stderr
    assert "crashed" not in worker.stderr and "Traceback" not in worker.stderr
    assert "(0 restarted after a crash" in worker.stderr
    assert len(await drain_dead(vhost_settings, f"{WORK}.dead")) == 3
