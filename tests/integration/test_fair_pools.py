"""Weighted pools on a real broker: one worker serves several queues and starts their jobs in
proportion to the weights while every queue has a backlog; a weight-1 queue keeps moving beside a
flooded weight-100 queue; an empty queue's share goes to the others.

Each test fills the queues first, then starts an in-process worker with ``--pool`` and counts
which queue each of the first jobs came from, while every queue still has jobs waiting.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from jobsys.app import App, JobContext
from jobsys.consume.options import WorkerOptions
from jobsys.errors import ConfigError
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text
from tests.apps.worker_apps import apply, publish, queue_depth
from tests.harness.running import running_worker
from tests.harness.worker_subprocess import WorkerSubprocess

pytestmark = pytest.mark.timeout(120)

TOPOLOGY_YAML = """\
version: 1
exchanges:
  fp.jobs: {type: direct}
queues:
  fp.urgent: {type: classic}
  fp.normal: {type: classic}
  fp.bulk: {type: classic}
bindings:
  - {exchange: fp.jobs, queue: fp.urgent, routing_key: urgent}
  - {exchange: fp.jobs, queue: fp.normal, routing_key: normal}
  - {exchange: fp.jobs, queue: fp.bulk, routing_key: bulk}
job_types:
  urgent: {exchange: fp.jobs, routing_key: urgent}
  normal: {exchange: fp.jobs, routing_key: normal}
  bulk: {exchange: fp.jobs, routing_key: bulk}
pools:
  mixed:
    concurrency: 4
    queues: {fp.urgent: 6, fp.normal: 3, fp.bulk: 1}
  flooded:
    concurrency: 4
    queues: {fp.urgent: 100, fp.bulk: 1}
"""


class Starts:
    """The job type of every job started, in order; ``enough`` is set at ``wanted`` starts."""

    def __init__(self, wanted: int) -> None:
        self.order: list[str] = []
        self.wanted = wanted
        self.enough = asyncio.Event()

    def app(self) -> App:
        app = App()
        for job_type in ("urgent", "normal", "bulk"):
            app.handler(job_type)(self._handler(job_type))
        return app

    def _handler(self, job_type: str) -> Any:
        async def run(payload: Any, ctx: JobContext) -> None:
            self.order.append(job_type)
            if len(self.order) >= self.wanted:
                self.enough.set()
            await asyncio.sleep(0.001)

        return run

    def shares(self) -> dict[str, float]:
        counted = Counter(self.order[: self.wanted])
        return {job_type: n / self.wanted for job_type, n in counted.items()}


@pytest.fixture
async def loaded(vhost_settings: Settings) -> LoadedTopology:
    topology = load_topology_text(TOPOLOGY_YAML, "fair.yaml")
    await apply(vhost_settings, topology)
    return topology


async def _fill(settings: Settings, loaded: LoadedTopology, counts: dict[str, int]) -> None:
    for job_type, n in counts.items():
        await publish(settings, loaded, job_type, [{"i": i} for i in range(n)])


async def _first_starts(
    settings: Settings, loaded: LoadedTopology, pool: str, wanted: int
) -> dict[str, float]:
    starts = Starts(wanted)
    async with running_worker(starts.app(), loaded, settings, WorkerOptions(pool=pool)):
        await asyncio.wait_for(starts.enough.wait(), 60)
    return starts.shares()


async def test_a_weighted_pool_starts_jobs_in_proportion_to_the_weights_under_backlog(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    await _fill(vhost_settings, loaded, {"urgent": 700, "normal": 400, "bulk": 200})
    shares = await _first_starts(vhost_settings, loaded, "mixed", 1000)
    # Every queue still had a backlog at the 1000th start (at most 600, 300 and 100 taken).
    assert shares["urgent"] == pytest.approx(0.6, abs=0.03), shares
    assert shares["normal"] == pytest.approx(0.3, abs=0.03), shares
    assert shares["bulk"] == pytest.approx(0.1, abs=0.02), shares


async def test_a_weight_1_queue_keeps_moving_while_a_weight_100_queue_is_flooded(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    await _fill(vhost_settings, loaded, {"urgent": 1500, "bulk": 50})
    shares = await _first_starts(vhost_settings, loaded, "flooded", 1010)
    # 1 in 101 jobs started: about 10 of the first 1010, never none.
    assert 7 <= round(shares.get("bulk", 0) * 1010) <= 13, shares


async def test_an_idle_queue_share_goes_to_the_queues_with_a_backlog(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    await _fill(vhost_settings, loaded, {"urgent": 500, "bulk": 200})
    shares = await _first_starts(vhost_settings, loaded, "mixed", 560)
    # normal (weight 3) has nothing: urgent and bulk share 6:1.
    assert "normal" not in shares
    assert shares["urgent"] == pytest.approx(6 / 7, abs=0.03), shares
    assert shares["bulk"] == pytest.approx(1 / 7, abs=0.03), shares


async def test_a_weighted_pool_runs_at_most_its_concurrency_across_its_queues(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    await _fill(vhost_settings, loaded, {"urgent": 20, "normal": 20, "bulk": 20})
    running = 0
    most = 0
    done = asyncio.Event()
    finished = 0

    async def hold(payload: Any) -> None:
        nonlocal running, most, finished
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        finished += 1
        if finished == 60:
            done.set()

    app = App()
    for job_type in ("urgent", "normal", "bulk"):
        app.handler(job_type)(hold)
    async with running_worker(app, loaded, vhost_settings, WorkerOptions(pool="mixed")):
        await asyncio.wait_for(done.wait(), 60)
    assert most == 4
    for queue in ("fp.urgent", "fp.normal", "fp.bulk"):
        assert await queue_depth(vhost_settings, queue) == 0


async def test_a_pool_the_topology_does_not_declare_is_refused_before_consuming(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    with pytest.raises(ConfigError, match=r"pool 'mixd' is not in the topology \(pools: "):
        async with running_worker(App(), loaded, vhost_settings, WorkerOptions(pool="mixd")):
            pass


async def test_jobsys_worker_pool_serves_the_pool_in_a_process_of_its_own(
    vhost_settings: Settings, loaded: LoadedTopology, tmp_path: Path
) -> None:
    await _fill(vhost_settings, loaded, {"urgent": 400, "normal": 400, "bulk": 400})
    topology = tmp_path / "fair.yaml"
    topology.write_text(TOPOLOGY_YAML, encoding="utf-8")
    record = tmp_path / "record.txt"
    worker = WorkerSubprocess(
        "tests.apps.fair_apps:app",
        topology,
        tmp_path / "w.stderr",
        {"JOBSYS_URL": vhost_settings.url, "JOBSYS_TEST_RECORD": str(record)},
        ["--pool", "mixed", "--max-jobs", "500"],
    )
    try:
        assert await worker.wait_exit(60) == 0, worker.stderr
    finally:
        worker.kill()
    assert "pool mixed (concurrency 4): fp.urgent 6 (prefetch 32)" in worker.stderr
    started = Counter(record.read_text(encoding="utf-8").split()[:500])
    assert started["urgent"] == pytest.approx(300, abs=25), started
    assert started["bulk"] == pytest.approx(50, abs=15), started


def test_topology_plan_lists_the_weighted_pools_with_their_shares(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    file = tmp_path / "fair.yaml"
    file.write_text(TOPOLOGY_YAML, encoding="utf-8")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("jobsys")), "topology", "plan", str(file)],
        capture_output=True,
        text=True,
        env={**os.environ, "JOBSYS_URL": vhost_settings.url},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "  pool mixed (concurrency 4): fp.urgent weight 6 = 60.0% (prefetch 32), "
        "fp.normal weight 3 = 30.0% (prefetch 16), fp.bulk weight 1 = 10.0% (prefetch 6)"
    ) in result.stdout.splitlines()
    assert "pool flooded (concurrency 4): fp.urgent weight 100 = 99.0%" in result.stdout
