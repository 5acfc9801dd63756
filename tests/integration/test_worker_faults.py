"""Faults: transient connection loss is survived; drift, wrong credentials and refused access
end the worker with one clear message and a non-zero exit, never a reconnect loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.consume.options import WorkerOptions
from jobsys.settings import Settings
from tests.apps import worker_apps
from tests.apps.worker_apps import (
    PROBE,
    WORK,
    WorkerProcess,
    publish,
    queue_depth,
    read_records,
    wait_until,
)
from tests.conftest import _management, settings_for_vhost
from tests.harness.fault_proxy import FaultProxy
from tests.harness.fixtures import node_settings
from tests.harness.rabbit_node import RabbitNode
from tests.harness.running import running_worker

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


async def _delete_queue(settings: Settings, name: str) -> None:
    async with BrokerConnection(settings) as conn:
        channel = await conn.channel(confirms=False)
        await channel.queue_delete(name)


async def test_missing_queue_at_start_exits_non_zero_with_one_drift_message(
    vhost_settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    await worker_apps.apply(vhost_settings, worker_apps.loaded_topology(tmp_path))
    await _delete_queue(vhost_settings, WORK)
    worker = WorkerProcess(tmp_path, vhost_settings)
    workers.append(worker)
    assert await worker.wait_exit(20) == 1
    assert worker.stderr.count("topology drift: queue 'wt.work' does not exist") == 1
    assert "jobsys topology apply" in worker.stderr
    assert "Traceback" not in worker.stderr


async def test_topology_never_applied_exits_non_zero_with_a_drift_message(
    vhost_settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    worker_apps.loaded_topology(tmp_path)
    worker = WorkerProcess(tmp_path, vhost_settings)
    workers.append(worker)
    assert await worker.wait_exit(20) == 1
    assert "topology drift:" in worker.stderr and "does not exist" in worker.stderr


async def test_wrong_password_exits_4_at_once_with_a_clear_message(
    vhost_settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    worker_apps.loaded_topology(tmp_path)
    bad = vhost_settings.with_overrides(
        url=vhost_settings.url.replace("guest:guest@", "guest:wrong-password@")
    )
    worker = WorkerProcess(tmp_path, bad)
    workers.append(worker)
    assert await worker.wait_exit(20) == 4
    assert "refused the login" in worker.stderr
    assert "wrong-password" not in worker.stderr


async def test_missing_vhost_exits_4_with_a_clear_message(
    broker_settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    worker_apps.loaded_topology(tmp_path)
    nowhere = settings_for_vhost(broker_settings, f"jobsys-missing-{uuid.uuid4().hex[:8]}")
    worker = WorkerProcess(tmp_path, nowhere)
    workers.append(worker)
    assert await worker.wait_exit(20) == 4
    assert "refused virtual host" in worker.stderr


async def test_queue_deleted_while_consuming_stops_the_worker_with_a_drift_message(
    vhost_settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    await worker_apps.apply(vhost_settings, worker_apps.loaded_topology(tmp_path))
    worker = WorkerProcess(tmp_path, vhost_settings)
    workers.append(worker)
    await worker.wait_for_output("consuming wt.work")
    await _delete_queue(vhost_settings, WORK)
    assert await worker.wait_exit(30) == 1, worker.stderr
    assert "topology drift: queue 'wt.work' does not exist" in worker.stderr


@contextlib.contextmanager
def _temporary_user(settings: Settings, *, read: str = ".*") -> Iterator[Settings]:
    """A user with full configure and write and ``read`` permissions on the test's vhost,
    deleted when the block ends (which closes its connections); yields its settings."""
    user = f"jobsys-test-{uuid.uuid4().hex[:8]}"
    _management("PUT", f"/api/users/{user}", {"password": "pw", "tags": ""})
    try:
        _management(
            "PUT",
            f"/api/permissions/{quote(settings.vhost, safe='')}/{user}",
            {"configure": ".*", "write": ".*", "read": read},
        )
        yield settings.with_overrides(url=settings.url.replace("guest:guest@", f"{user}:pw@"))
    finally:
        _management("DELETE", f"/api/users/{user}")


@pytest.mark.management
async def test_user_deleted_while_consuming_stops_the_worker_with_exit_4(
    vhost_settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    await worker_apps.apply(vhost_settings, worker_apps.loaded_topology(tmp_path))
    with _temporary_user(vhost_settings) as as_user:
        worker = WorkerProcess(tmp_path, as_user)
        workers.append(worker)
        # Both pools started: a connection lost while the worker is still starting is a start
        # failure ("cannot reach the broker"), not the refused reconnect this test is about.
        await worker.wait_for_output("consuming wt.work")
        await worker.wait_for_output("consuming wt.other")
    # Deleting the user closed its connections; the reconnect is then refused.
    assert await worker.wait_exit(30) == 4, worker.stderr
    assert "refused the login" in worker.stderr


@pytest.mark.management
async def test_user_without_read_permission_exits_4_with_a_clear_message(
    vhost_settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    await worker_apps.apply(vhost_settings, worker_apps.loaded_topology(tmp_path))
    with _temporary_user(vhost_settings, read="^$") as as_user:
        worker = WorkerProcess(tmp_path, as_user)
        workers.append(worker)
        assert await worker.wait_exit(20) == 4, worker.stderr
    assert "refused" in worker.stderr and "ACCESS_REFUSED" in worker.stderr
    assert "Traceback" not in worker.stderr


async def test_worker_reconnects_through_connection_resets_and_finishes_every_job(
    vhost_settings: Settings, fault_proxy: FaultProxy
) -> None:
    loaded = worker_apps.loaded_topology()
    await worker_apps.apply(vhost_settings, loaded)
    PROBE.reset()
    via_proxy = vhost_settings.with_overrides(
        url=fault_proxy.url(vhost=quote(vhost_settings.vhost, safe="")), heartbeat_s=2
    )
    async with running_worker(
        worker_apps.app, loaded, via_proxy, WorkerOptions(concurrency=4, prefetch=8)
    ) as worker:
        first = await publish(vhost_settings, loaded, "echo", [{"n": i} for i in range(50)])
        await wait_until(lambda: set(PROBE.done) >= set(first), what="first batch done")
        fault_proxy.set_mode("reset")
        await asyncio.sleep(0.5)  # let the worker notice the loss (what it waits for is absent)
        fault_proxy.set_mode("pass")
        second = await publish(vhost_settings, loaded, "echo", [{"n": i} for i in range(50)])
        fault_proxy.reset_connections()
        third = await publish(vhost_settings, loaded, "echo", [{"n": i} for i in range(50)])
        await wait_until(
            lambda: set(PROBE.done) >= set(first + second + third),
            timeout_s=60,
            what="every job done after the resets",
        )
        assert not worker.stopping
        assert fault_proxy.connection_count >= 3
    assert await queue_depth(vhost_settings, WORK) == 0


async def test_ack_after_the_channel_reopened_is_logged_and_the_job_is_redelivered(
    vhost_settings: Settings, fault_proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = worker_apps.loaded_topology()
    await worker_apps.apply(vhost_settings, loaded)
    PROBE.reset()
    PROBE.release = asyncio.Event()
    via_proxy = vhost_settings.with_overrides(
        url=fault_proxy.url(vhost=quote(vhost_settings.vhost, safe="")), heartbeat_s=2
    )
    async with running_worker(
        worker_apps.app, loaded, via_proxy, WorkerOptions(concurrency=1, prefetch=1)
    ) as worker:
        [job_id] = await publish(vhost_settings, loaded, "hold", [{}])
        await wait_until(lambda: PROBE.running == 1, what="the job running")
        connections = fault_proxy.connection_count
        fault_proxy.reset_connections()
        # The broker requeues the job and delivers it again on the new channel, where it
        # waits behind the first run (concurrency 1); then the first run finishes.
        await wait_until(
            lambda: fault_proxy.connection_count > connections, what="a new connection"
        )
        PROBE.release.set()
        await wait_until(lambda: worker.stats.lost_acks == 1, what="the lost ack")
        await wait_until(lambda: PROBE.done == [job_id, job_id], what="the redelivered run")
        await wait_until(lambda: worker.stats.done == 1, what="the second run acked")
    assert "the broker requeued the job" in caplog.text
    assert await queue_depth(vhost_settings, WORK) == 0


@pytest.mark.slow
async def test_worker_resumes_after_a_restart_of_its_broker_node(
    running_own_broker: RabbitNode, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    node = running_own_broker
    vhost = f"jobsys-test-{uuid.uuid4().hex[:8]}"
    node.ctl("add_vhost", vhost)
    node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    settings = settings_for_vhost(node_settings(node), vhost)
    loaded = worker_apps.loaded_topology(tmp_path)
    try:
        await worker_apps.apply(settings, loaded)
        worker = WorkerProcess(tmp_path, settings)
        workers.append(worker)
        await worker.wait_for_output("consuming wt.work")
        await worker.wait_for_output("consuming wt.other")  # started, before the restart
        before = await publish(settings, loaded, "record", [{} for _ in range(20)])
        await wait_until(lambda: _done(worker) >= set(before), what="jobs before the restart")
        await asyncio.to_thread(node.restart)
        after = await publish(settings, loaded, "record", [{} for _ in range(20)])
        await wait_until(
            lambda: _done(worker) >= set(after), timeout_s=90, what="jobs after the restart"
        )
        worker.signal(signal.SIGTERM)
        assert await worker.wait_exit(30) == 0, worker.stderr
    finally:
        node.ensure_running()
        node.ctl("delete_vhost", vhost)


def _done(worker: WorkerProcess) -> set[str]:
    return {job_id for kind, job_id in read_records(worker.record) if kind == "done"}
