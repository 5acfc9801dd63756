"""rate_limit on a real broker: tokens in a bucket queue, refilled by one elected process, so
that the jobs of a type start at most at the rate across every worker; a job over the limit
waits without burning an attempt; a refiller killed with SIGKILL is replaced."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from jobsys.app import App, JobContext
from jobsys.broker.connection import BrokerConnection
from jobsys.consume.options import WorkerOptions
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text
from tests.apps.worker_apps import apply, publish
from tests.harness.running import running_worker
from tests.harness.worker_subprocess import WorkerSubprocess, wait_until

pytestmark = pytest.mark.timeout(120)

TOPOLOGY_YAML = """\
version: 1
exchanges:
  rl.jobs: {type: direct}
queues:
  rl.work: {type: classic, consumer: {concurrency: 10, prefetch: 20}}
bindings:
  - {exchange: rl.jobs, queue: rl.work, routing_key: render}
job_types:
  render: {exchange: rl.jobs, routing_key: render, rate_limit: 20/s, rate_burst: 1}
"""


@pytest.fixture
async def loaded(vhost_settings: Settings) -> LoadedTopology:
    topology = load_topology_text(TOPOLOGY_YAML, "rl.yaml")
    await apply(vhost_settings, topology)
    return topology


async def test_two_workers_together_start_jobs_at_the_rate_limit_and_burn_no_attempt(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    starts: list[float] = []
    attempts: list[int] = []
    app = App()

    @app.handler("render")
    async def render(payload: Any, ctx: JobContext) -> None:
        starts.append(time.monotonic())
        attempts.append(ctx.attempt)

    await publish(vhost_settings, loaded, "render", [{"i": i} for i in range(120)])
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            await stack.enter_async_context(
                running_worker(app, loaded, vhost_settings, WorkerOptions(grace_s=5))
            )
        await wait_until(lambda: len(starts) >= 100, 60, "100 renders started")
    # The bound the limit promises: over any span, at most rate x span + burst (+1 for the
    # token already due at its start); and the refiller keeps the rate up.
    first, last = starts[0], starts[99]
    assert 20 * (last - first) + 2 >= 99
    assert 0.8 * 20 * (last - first) <= 99
    assert set(attempts) == {1}


async def test_a_refiller_killed_with_sigkill_is_replaced(
    vhost_settings: Settings, loaded: LoadedTopology, tmp_path: Path
) -> None:
    topology = tmp_path / "rl.yaml"
    topology.write_text(TOPOLOGY_YAML, encoding="utf-8")
    record = tmp_path / "record.txt"
    await publish(vhost_settings, loaded, "render", [{"sleep_s": 0} for _ in range(400)])
    env = {"JOBSYS_URL": vhost_settings.url, "JOBSYS_TEST_RECORD": str(record)}

    def started() -> int:
        return len(record.read_text().splitlines()) if record.exists() else 0

    first = WorkerSubprocess("tests.apps.permit_apps:app", topology, tmp_path / "a.err", env, [])
    second: WorkerSubprocess | None = None
    try:
        await first.wait_for_output("rate-limit refiller elected")
        second = WorkerSubprocess(
            "tests.apps.permit_apps:app", topology, tmp_path / "b.err", env, []
        )
        await second.wait_for_output("worker ready")
        await wait_until(lambda: started() >= 20, 30, "renders under the first refiller")
        first.proc.send_signal(signal.SIGKILL)
        assert await first.wait_exit(10) == -signal.SIGKILL
        await second.wait_for_output("rate-limit refiller elected", 30)
        before = started()
        await wait_until(lambda: started() >= before + 20, 30, "renders under the new refiller")
    finally:
        first.kill()
        if second is not None:
            second.kill()


async def test_jobs_wait_unlost_while_the_bucket_is_deleted_and_run_once_it_is_back(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    done: list[int] = []
    app = App()

    @app.handler("render")
    async def render(payload: Any, ctx: JobContext) -> None:
        done.append(ctx.attempt)

    async with running_worker(app, loaded, vhost_settings, WorkerOptions(grace_s=5)):
        async with BrokerConnection(vhost_settings) as conn:
            channel = await conn.plain_channel()
            await channel.queue_delete("jobsys.tokens.render")
        await publish(vhost_settings, loaded, "render", [{"i": i} for i in range(3)])
        await asyncio.sleep(3)
        assert done == []
        await apply(vhost_settings, loaded)  # the bucket and its binding again
        await wait_until(lambda: len(done) == 3, 30, "the 3 renders done")
    assert done == [1, 1, 1]
