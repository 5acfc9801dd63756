"""``max_running`` on a 3-node cluster while the node holding its permits queue is down.

The permits of ``max_running`` live in a classic queue (``topology plan`` notes it on a
cluster): on the node the topology was applied through. That node is killed with -9 while a
worker on another node serves the job type. The jobs published meanwhile are held back, not
run, not lost (they wait in the quorum delay levels and come back), the worker keeps serving,
and once the node is back every job runs. Slow: the cluster alone takes a minute to form.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.consume.options import WorkerOptions
from jobsys.consume.permits import Permits
from jobsys.consume.worker import Worker
from jobsys.errors import BrokerError, TopologyError
from jobsys.ops.declare import plan_for_broker
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from tests.apps import failure_apps
from tests.apps.failure_apps import handler_lines, publish_into, wait_until
from tests.conftest import settings_for_vhost
from tests.harness.fixtures import node_settings
from tests.harness.ledger import Ledger
from tests.harness.rabbit_node import RabbitCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


async def test_jobs_wait_while_the_permits_node_is_down_and_all_run_once_it_is_back(
    rabbit_cluster: RabbitCluster,
    cluster_vhost: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = rabbit_cluster
    spec = failure_apps.topology("quorum", delays_type="quorum")
    spec["job_types"]["task"]["max_running"] = 2
    loaded = failure_apps.write_topology(tmp_path, spec)
    # Applied through the seed: the classic permits queue lives there.
    await failure_apps.apply(settings_for_vhost(node_settings(cluster.seed), cluster_vhost), loaded)
    worker_node, producer_node = [node for node in cluster if node is not cluster.seed]
    settings = settings_for_vhost(node_settings(worker_node), cluster_vhost)
    producing = settings_for_vhost(node_settings(producer_node), cluster_vhost).with_overrides(
        publish_timeout_s=60.0
    )
    record = tmp_path / "w.record"
    for name, value in failure_apps.record_env(record).items():
        monkeypatch.setenv(name, value)
    ledger = Ledger()
    worker = Worker(failure_apps.app, loaded, settings, WorkerOptions(concurrency=4, prefetch=8))
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        async with Producer(producing, loaded.topology) as producer:
            before = await publish_into(ledger, producer, "task", [{}] * 5, prefix="before")
            await wait_until(
                lambda: set(handler_lines(record, "done")) >= set(before),
                timeout_s=60,
                what="the jobs before the kill done",
            )
            await asyncio.to_thread(cluster.seed.kill)
            with caplog.at_level(logging.ERROR, logger="jobsys.consume.basic_get"):
                during = await publish_into(ledger, producer, "task", [{}] * 10, prefix="during")
                assert set(during) <= ledger.confirmed
                await asyncio.sleep(8)  # several rounds of taking a permit and waiting
                await _the_permits_queue_reads_as_unreachable_not_missing(settings, loaded)
            started = set(handler_lines(record, "start"))
            assert not started & set(during), "a job ran without a permit"
            said = [r for r in caplog.records if "cannot take a permit from" in r.getMessage()]
            # Ten jobs failed to take one about once a second each: said once, not each time.
            assert len(said) == 1, [r.getMessage() for r in said]
            assert not task.done(), "the worker stopped"
            await asyncio.to_thread(cluster.seed.restart)
            await wait_until(
                lambda: set(handler_lines(record, "done")) >= set(during),
                timeout_s=180,
                what="every job held back done once the permits are back",
            )
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 60)

    ledger.read_runs(record)
    result = ledger.check()
    print(f"permits node down: {result.summary()}")
    result.assert_ok()


async def _the_permits_queue_reads_as_unreachable_not_missing(
    settings: Settings, loaded: LoadedTopology
) -> None:
    """The broker answers NOT_FOUND for a queue whose node is down: a worker starting now must
    wait for it (BrokerError), not exit as if `apply` had not run (TopologyError), and `plan`
    must not propose to create what exists."""
    async with BrokerConnection(settings) as connection:
        with pytest.raises(BrokerError, match="cannot be reached right now") as caught:
            await Permits(connection, loaded.topology).check()
        assert not isinstance(caught.value, TopologyError)
        assert "down or inaccessible" in str(caught.value)
        with pytest.raises(BrokerError, match="cannot be reached right now"):
            await plan_for_broker(connection, loaded, use_management=False)
