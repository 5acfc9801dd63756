"""max_running on a real broker: permits in a queue, held unacked while a job runs, so that at
most N jobs of a type run across every worker, a job without a permit waits without burning an
attempt, and a worker killed with SIGKILL leaks none of them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jobsys.app import App, JobContext
from jobsys.broker.connection import BrokerConnection
from jobsys.consume.options import WorkerOptions
from jobsys.errors import TopologyError
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text
from tests.apps.worker_apps import apply, drain_dead, publish, queue_depth
from tests.harness.running import running_worker
from tests.harness.worker_subprocess import WorkerSubprocess, wait_until

pytestmark = pytest.mark.timeout(120)

PERMITS = "jobsys.permits.render.3"
TOPOLOGY_YAML = """\
version: 1
exchanges:
  mr.jobs: {type: direct}
queues:
  mr.work: {type: classic, consumer: {concurrency: 10, prefetch: 20}}
bindings:
  - {exchange: mr.jobs, queue: mr.work, routing_key: render}
  - {exchange: mr.jobs, queue: mr.work, routing_key: other}
job_types:
  render:
    exchange: mr.jobs
    routing_key: render
    timeout: 2s
    max_running: 3
    retry: {max_attempts: 1}
  other: {exchange: mr.jobs, routing_key: other}
"""


@pytest.fixture
async def loaded(vhost_settings: Settings) -> LoadedTopology:
    topology = load_topology_text(TOPOLOGY_YAML, "mr.yaml")
    await apply(vhost_settings, topology)
    return topology


class Running:
    """How many ``render`` jobs run at once, at most, across every worker of the test."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.attempts: list[int] = []
        self.done = 0

    def app(self, behaviour: str = "sleep") -> App:
        app = App()

        @app.handler("render")
        async def render(payload: dict[str, Any], ctx: JobContext) -> None:
            self.now += 1
            self.most = max(self.most, self.now)
            self.attempts.append(ctx.attempt)
            try:
                if behaviour == "raise":
                    raise RuntimeError("render failed")
                await asyncio.sleep(30 if behaviour == "block" else 0.05)
            finally:
                self.now -= 1
                self.done += 1

        @app.handler("other")
        async def other(payload: Any) -> None:
            return None

        return app


async def permits_ready(settings: Settings) -> int:
    return await queue_depth(settings, PERMITS)


@contextlib.asynccontextmanager
async def workers(
    app: App, loaded: LoadedTopology, settings: Settings, count: int
) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(count):
            await stack.enter_async_context(
                running_worker(app, loaded, settings, WorkerOptions(grace_s=5))
            )
        yield


async def test_apply_fills_the_permits_queue_once_and_never_again(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    assert await permits_ready(vhost_settings) == 3
    await apply(vhost_settings, loaded)
    assert await permits_ready(vhost_settings) == 3


async def test_three_workers_never_run_more_jobs_of_the_type_than_max_running(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    running = Running()
    await publish(vhost_settings, loaded, "render", [{"i": i} for i in range(30)])
    async with workers(running.app(), loaded, vhost_settings, 3):
        await wait_until(lambda: running.done == 30, 60, "30 renders done")
    assert running.most == 3
    # A job that found no permit waited and came back: it ran once, as its first attempt.
    assert running.attempts == [1] * 30
    assert await queue_depth(vhost_settings, "mr.work") == 0
    assert await permits_ready(vhost_settings) == 3


@pytest.mark.parametrize("behaviour", ["raise", "block"])
async def test_a_handler_that_raises_or_overruns_gives_its_permit_back(
    vhost_settings: Settings, loaded: LoadedTopology, behaviour: str
) -> None:
    running = Running()
    await publish(vhost_settings, loaded, "render", [{"i": i} for i in range(5)])
    async with workers(running.app(behaviour), loaded, vhost_settings, 1):
        await wait_until(lambda: running.done == 5, 60, "5 renders ended")
        await wait_until(lambda: permits_ready(vhost_settings), 10, "permits back")
        assert await permits_ready(vhost_settings) == 3
    assert running.most <= 3
    assert len(await drain_dead(vhost_settings, "mr.work.dead")) == 5


async def test_a_worker_refuses_to_start_when_the_permits_queue_is_missing(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async with BrokerConnection(vhost_settings) as conn:
        channel = await conn.plain_channel()
        await channel.queue_delete(PERMITS)
    with pytest.raises(TopologyError, match=r"permits queue jobsys\.permits\.render\.3 .* missing"):
        async with running_worker(Running().app(), loaded, vhost_settings):
            pass


async def test_a_worker_killed_with_sigkill_leaks_no_permit(
    vhost_settings: Settings, loaded: LoadedTopology, tmp_path: Path
) -> None:
    topology = tmp_path / "mr.yaml"
    topology.write_text(TOPOLOGY_YAML, encoding="utf-8")
    record = tmp_path / "record.txt"
    await publish(vhost_settings, loaded, "render", [{"sleep_s": 60} for _ in range(5)])
    env = {"JOBSYS_URL": vhost_settings.url, "JOBSYS_TEST_RECORD": str(record)}
    doomed = WorkerSubprocess(
        "tests.apps.permit_apps:app", topology, tmp_path / "doomed.stderr", env, []
    )
    try:
        await wait_until(
            lambda: record.exists() and len(record.read_text().splitlines()) == 3,
            30,
            "three renders holding the three permits",
        )
        assert await permits_ready(vhost_settings) == 0
        doomed.proc.send_signal(signal.SIGKILL)
        assert await doomed.wait_exit(10) == -signal.SIGKILL
        # The broker took the dead worker's permits back by itself.
        await wait_until(lambda: permits_ready(vhost_settings), 10, "permits returned")
        assert await permits_ready(vhost_settings) == 3
    finally:
        doomed.kill()
    running = Running()
    async with workers(running.app(), loaded, vhost_settings, 1):
        await wait_until(lambda: running.done == 5, 60, "the 5 renders done by another worker")
    assert running.most <= 3
    assert await permits_ready(vhost_settings) == 3


async def test_jobs_wait_unlost_while_the_permits_queue_is_deleted_and_run_once_it_is_back(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    running = Running()
    async with workers(running.app(), loaded, vhost_settings, 1):
        async with BrokerConnection(vhost_settings) as conn:
            channel = await conn.plain_channel()
            await channel.queue_delete(PERMITS)
        ids = await publish(vhost_settings, loaded, "render", [{"i": i} for i in range(3)])
        # Held back, again and again (each try logs the missing queue): never run, never lost.
        await asyncio.sleep(3)
        assert running.done == 0
        await apply(vhost_settings, loaded)  # declares the permits queue again, and fills it
        await wait_until(lambda: running.done == 3, 30, "the 3 renders done")
    assert len(ids) == 3 and running.attempts == [1, 1, 1]
