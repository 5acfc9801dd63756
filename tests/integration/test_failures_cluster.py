"""A 3-node cluster with quorum queues everywhere (the work queue, its dead-letter queue, the
delay levels): the node leading the work queue is killed with -9 in the middle of a stream of
jobs. Producer and worker are connected to a node that survives; publishing and consuming
carry on, and the ledger finds nothing lost. Slow: the cluster alone takes a minute to form.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from jobsys.consume.options import WorkerOptions
from jobsys.consume.worker import Worker
from jobsys.publish.producer import JobRequest, Producer
from jobsys.wire.headers import HEADER_ERROR_TYPE, HEADER_JOB_ID
from tests.apps import failure_apps
from tests.apps.failure_apps import (
    WORK,
    WORK_DEAD,
    drain,
    handler_lines,
    publish_into,
    publish_raw,
    wait_until,
)
from tests.conftest import settings_for_vhost
from tests.harness.fixtures import node_settings
from tests.harness.ledger import Ledger
from tests.harness.rabbit_node import RabbitCluster, RabbitNode

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
PREFETCH = 16
BATCHES = 40
BATCH = 50
KILL_AT_BATCH = 12
DELAYED = 50


def _node_named(cluster: RabbitCluster, name: str) -> RabbitNode:
    return next(node for node in cluster if node.name == name)


async def test_killing_the_quorum_leader_mid_stream_loses_nothing_and_work_carries_on(
    rabbit_cluster: RabbitCluster,
    cluster_vhost: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = rabbit_cluster
    spec = failure_apps.topology("quorum", delays_type="quorum", prefetch=PREFETCH)
    loaded = failure_apps.write_topology(tmp_path, spec)
    await failure_apps.apply(settings_for_vhost(node_settings(cluster.seed), cluster_vhost), loaded)
    leader = _node_named(cluster, cluster.quorum_leader(WORK, cluster_vhost))
    survivor = next(node for node in cluster if node is not leader)
    settings = settings_for_vhost(node_settings(survivor), cluster_vhost).with_overrides(
        publish_timeout_s=60.0
    )
    record = tmp_path / "w.record"
    for name, value in failure_apps.record_env(record).items():
        monkeypatch.setenv(name, value)
    ledger = Ledger()
    options = WorkerOptions(concurrency=8, prefetch=PREFETCH)
    worker = Worker(failure_apps.app, loaded, settings, options)
    task = asyncio.create_task(worker.run())
    kill_now = asyncio.Event()
    killed = asyncio.Event()
    confirmed_after_kill = 0
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        async with Producer(settings, loaded.topology) as producer:

            async def stream() -> None:
                nonlocal confirmed_after_kill
                for batch in range(BATCHES):
                    if batch == KILL_AT_BATCH:
                        # Delayed jobs wait in the quorum delay levels while the node dies.
                        ids = [f"delayed-{i:03d}" for i in range(DELAYED)]
                        requests = [JobRequest("task", {}, delay_s=3, job_id=i) for i in ids]
                        ledger.record_many(ids, await producer.publish_many(requests))
                        kill_now.set()
                    payloads = [{"sleep_s": 0.01}] * BATCH
                    before = len(ledger.confirmed)
                    await publish_into(ledger, producer, "task", payloads, prefix=f"b{batch:02d}")
                    if killed.is_set():
                        confirmed_after_kill += len(ledger.confirmed) - before

            publishing = asyncio.create_task(stream())
            await kill_now.wait()
            started_before = set(handler_lines(record, "start"))
            await asyncio.to_thread(leader.kill)
            killed.set()
            new_leader = await asyncio.to_thread(cluster.quorum_leader, WORK, cluster_vhost)
            assert new_leader != leader.name
            # Everything the old leader had handed out has started by now (jobs take 10 ms,
            # finding the new leader takes a second); only those may come back.
            started_at_kill = set(handler_lines(record, "start"))
            await asyncio.wait_for(publishing, 300)
        # Poison after the kill: the quorum dead-letter queue takes it on the surviving nodes.
        for i in range(5):
            await publish_raw(settings, b"{not json", job_id=f"poison-{i}", type="task")
            ledger.mark(f"poison-{i}", "confirmed")
        good = ledger.confirmed - {f"poison-{i}" for i in range(5)}
        await wait_until(
            lambda: set(handler_lines(record, "done")) >= good,
            timeout_s=180,
            what="every confirmed job done",
        )
        await wait_until(lambda: worker.stats.dead_lettered == 5, what="the poison dead-lettered")
        assert not task.done(), "the worker stopped"
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 60)

    ledger.read_runs(record)
    await ledger.read_queue(settings.url, WORK)
    dead = await drain(settings, WORK_DEAD)
    ledger.dead.update(str((m.headers or {}).get(HEADER_JOB_ID)) for m in dead)
    result = ledger.check()
    print(
        f"cluster leader kill: {result.summary()} confirmed_after_kill={confirmed_after_kill} "
        f"leader={leader.name} -> {new_leader}"
    )
    # Deliveries the old leader had handed out unacked may run again: at most a prefetch.
    result.assert_ok(allowed_duplicates=started_at_kill)
    assert len(result.duplicated) <= PREFETCH
    assert confirmed_after_kill > 0, "publishing did not carry on after the kill"
    assert set(handler_lines(record, "done")) - started_before, "consuming did not carry on"
    assert {f"delayed-{i:03d}" for i in range(DELAYED)} <= result.ok | result.recovered
    assert ledger.dead == {f"poison-{i}": 1 for i in range(5)}
    assert all(str((m.headers or {})[HEADER_ERROR_TYPE]).endswith("DecodeError") for m in dead)
