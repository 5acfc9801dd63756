"""Job history through broker faults: the suite's own node restarted under a running worker, and
the node leading the replicated stream on the 3-node cluster killed. A timeline recorded before
is read whole afterwards, and a job run after the restart is recorded too (the writers
reconnect). Slow: nodes take 10-20 s to start, the cluster a minute to form."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.errors import BrokerError, JobsysError
from jobsys.ops.history import job_timeline
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.topology.own import OwnLayout
from jobsys.wire.envelope import new_job_id
from jobsys.wire.history import job_state
from tests.apps import result_apps
from tests.apps.worker_apps import wait_until
from tests.conftest import settings_for_vhost
from tests.harness.fixtures import node_settings
from tests.harness.rabbit_node import RabbitCluster, RabbitNode
from tests.harness.running import running_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RETRIED = ["published", "started", "retried", "started", "succeeded"]
SUCCEEDED = ["published", "started", "succeeded"]


def _vhost_on(node: RabbitNode) -> str:
    name = f"jobsys-history-{uuid.uuid4().hex[:8]}"
    node.ctl("add_vhost", name)
    node.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return name


@pytest.fixture
def own_vhost(running_own_broker: RabbitNode) -> Iterator[str]:
    name = _vhost_on(running_own_broker)
    try:
        yield name
    finally:
        running_own_broker.ensure_running().ctl("delete_vhost", name)


@pytest.fixture
def cluster_vhost(rabbit_cluster: RabbitCluster) -> Iterator[str]:
    name = _vhost_on(rabbit_cluster.seed)
    try:
        yield name
    finally:
        for node in rabbit_cluster:
            node.ensure_running()
        rabbit_cluster.seed.ctl("delete_vhost", name)


async def kinds_until(
    settings: Settings, loaded: LoadedTopology, job_id: str, last: str, timeout_s: float = 60
) -> list[str]:
    """The event kinds of ``job_id`` once its last event is ``last`` (events are batched).
    Just after a restart the stream refuses readers for a moment ("home node ... is down or
    inaccessible"): that is read as what it is, a broker to wait for, never as a missing stream."""
    seen: list[str] = []

    async def ended() -> bool:
        try:
            async with BrokerConnection(settings) as connection:
                events = await job_timeline(connection, loaded.topology, job_id, timeout_s=30)
        except BrokerError as exc:
            assert "try again in a few seconds" in str(exc), exc
            return False
        seen[:] = [event.kind for event in events]
        return bool(seen) and seen[-1] == last

    await wait_until(ended, timeout_s, what=f"job {job_id} recorded as {last}")
    return seen


async def test_the_history_survives_a_restart_and_the_writers_reconnect(
    running_own_broker: RabbitNode, own_vhost: str, tmp_path: Path
) -> None:
    settings = settings_for_vhost(node_settings(running_own_broker), own_vhost)
    loaded = result_apps.loaded_topology(tmp_path, history=True)
    await result_apps.apply(settings, loaded)
    before, after = new_job_id(), new_job_id()
    async with running_worker(result_apps.app, loaded, settings) as worker:
        async with Producer(settings, loaded) as producer:
            await producer.call("flaky", {"succeed_at": 2}, timeout_s=30, job_id=before)
        assert await kinds_until(settings, loaded, before, "succeeded") == RETRIED
        await asyncio.to_thread(running_own_broker.restart)
        # The worker reconnects on its own; a job run now is recorded by its history writer.
        async with Producer(settings, loaded) as producer:
            assert await producer.call("add", {"a": 2, "b": 3}, timeout_s=60, job_id=after) == 5
        assert await kinds_until(settings, loaded, after, "succeeded") == SUCCEEDED
    assert worker.stats.done == 2
    async with BrokerConnection(settings) as connection:
        events = await job_timeline(connection, loaded.topology, before, timeout_s=30)
    assert [e.kind for e in events] == RETRIED
    assert [e.attempt for e in events] == [1, 1, 1, 2, 2]
    assert job_state(events).state == "succeeded"


async def test_killing_the_streams_leader_keeps_the_timeline_readable_through_another_node(
    rabbit_cluster: RabbitCluster, cluster_vhost: str, tmp_path: Path
) -> None:
    nodes = list(rabbit_cluster)
    settings = [settings_for_vhost(node_settings(node), cluster_vhost) for node in nodes]
    loaded = result_apps.loaded_topology(tmp_path, history=True)
    await result_apps.apply(settings[0], loaded)
    stream = OwnLayout(loaded.topology.namespace).history
    job_id = new_job_id()
    leader_name = rabbit_cluster.quorum_leader(stream, cluster_vhost)
    leader = next(node for node in nodes if node.name == leader_name)
    writer = settings[nodes.index(leader)]
    async with running_worker(result_apps.app, loaded, writer):
        async with Producer(writer, loaded) as producer:
            await producer.call("flaky", {"succeed_at": 2}, timeout_s=30, job_id=job_id)
        assert await kinds_until(writer, loaded, job_id, "succeeded") == RETRIED
    await asyncio.to_thread(leader.kill)
    for node, reader in zip(nodes, settings, strict=True):
        if node is leader:
            continue
        assert await read_through_failover(reader, loaded, job_id) == RETRIED


async def read_through_failover(
    settings: Settings, loaded: LoadedTopology, job_id: str
) -> list[str]:
    """The kinds of ``job_id``'s events, read once the stream has a leader again: until then
    3.10 closes the connection of a reader (``RESOURCE_ERROR``, or ``INTERNAL_ERROR`` with
    ``nodedown`` in the node's log), which ``job_timeline`` reports as a node down."""
    errors: list[str] = []
    seen: list[str] = []
    started = time.monotonic()

    async def read() -> bool:
        try:
            async with BrokerConnection(settings) as connection:
                events = await job_timeline(connection, loaded.topology, job_id, timeout_s=30)
        except JobsysError as exc:
            errors.append(f"{time.monotonic() - started:.1f}s {type(exc).__name__}: {exc}")
            return False
        seen[:] = [event.kind for event in events]
        return True

    await wait_until(read, 120, what="the history read through a surviving node")
    print(f"read after {time.monotonic() - started:.1f}s; refused before: {errors}")
    # Refused, if at all, as what it is: never as a broker out of reach to go and start.
    assert all("try again in a few seconds" in error for error in errors), errors
    return seen
