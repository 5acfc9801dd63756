"""Faults are said and healed fast: a channel the broker closes is logged with its reason and
consumed on again; a partition that heals is followed by a reconnect within the backoff's cap;
closing a connection the broker blocked is bounded; and the worker's done count is the acks
the broker received, not the acks written into a socket.

Resume and close times are printed (``-s``), never asserted: they are the figures in
docs/operations.md. What is asserted is what the log and the counts say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import aio_pika
import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.consume.options import WorkerOptions
from jobsys.settings import Settings
from tests.apps import worker_apps
from tests.apps.worker_apps import PROBE, WORK, publish, queue_depth, wait_until
from tests.conftest import settings_for_vhost
from tests.harness.fault_proxy import FaultProxy
from tests.harness.fixtures import OWN_BROKER_N, node_settings
from tests.harness.rabbit_node import RabbitNode
from tests.harness.running import running_worker

pytestmark = pytest.mark.timeout(180)
HEARTBEAT_S = 2


def _through(proxy: FaultProxy, settings: Settings, **overrides: object) -> Settings:
    return settings.with_overrides(
        url=proxy.url(vhost=quote(settings.vhost, safe="")), heartbeat_s=HEARTBEAT_S, **overrides
    )


def _lines(caplog: pytest.LogCaptureFixture, pattern: str) -> list[re.Match[str]]:
    found = (re.search(pattern, r.getMessage()) for r in caplog.records)
    return [m for m in found if m is not None]


async def test_a_channel_the_broker_closes_is_logged_with_its_reason_and_consumed_on_again(
    vhost_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobsys")
    loaded = worker_apps.loaded_topology()
    await worker_apps.apply(vhost_settings, loaded)
    PROBE.reset()
    options = WorkerOptions(concurrency=1, prefetch=1)
    async with running_worker(worker_apps.app, loaded, vhost_settings, options) as worker:
        await publish(vhost_settings, loaded, "echo", [{"n": 1}])
        await wait_until(lambda: len(PROBE.payloads) == 1, what="the first job")
        [pool] = [p for p in worker.pools if p.queue == WORK]
        assert pool.channel is not None
        underlay = await pool.channel.get_underlay_channel()
        # A refused operation on the pool's own channel: the broker closes it with 406.
        await underlay.basic_ack(999_999)
        await wait_until(
            lambda: _lines(caplog, "the broker closed the channel consuming"),
            what="the warning",
        )
        await publish(vhost_settings, loaded, "echo", [{"n": 2}])
        await wait_until(lambda: len(PROBE.payloads) == 2, what="a job after the close")
        assert not worker.stopping
    [record] = [r for r in caplog.records if "closed the channel" in r.getMessage()]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "wt.work" in message
    assert "406 PRECONDITION_FAILED - unknown delivery tag 999999" in message
    assert await queue_depth(vhost_settings, WORK) == 0


async def test_after_a_partition_heals_consumption_resumes_after_a_capped_backoff(
    vhost_settings: Settings, fault_proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobsys")
    loaded = worker_apps.loaded_topology()
    await worker_apps.apply(vhost_settings, loaded)
    PROBE.reset()
    proxied = _through(fault_proxy, vhost_settings, connect_timeout_s=2.0)
    options = WorkerOptions(concurrency=2, prefetch=4)
    async with running_worker(worker_apps.app, loaded, proxied, options) as worker:
        await publish(vhost_settings, loaded, "echo", [{"n": 0}])
        await wait_until(lambda: len(PROBE.payloads) == 1, what="a job before the partition")
        fault_proxy.set_mode("blackhole")
        # Lost after missed heartbeats; then every attempt runs into the partition.
        await wait_until(
            lambda: len(_lines(caplog, r"reconnect attempt \d+ .* failed")) >= 5,
            timeout_s=60,
            what="five failed reconnect attempts",
        )
        during = await publish(vhost_settings, loaded, "echo", [{"n": i} for i in range(5)])
        healed = time.monotonic()
        fault_proxy.set_mode("pass")
        await wait_until(
            lambda: len(PROBE.payloads) == 1 + len(during), timeout_s=60, what="resumed"
        )
        resumed_after = time.monotonic() - healed
        # The line is logged once every channel and consumer is restored; the first restored
        # consumer may run all five jobs before the last one is back.
        await wait_until(
            lambda: _lines(caplog, r"reconnected to \S+ after \d+ failed attempts"),
            timeout_s=30,
            what="the reconnected line",
        )
        assert not worker.stopping
    print(f"\nconsumption resumed {resumed_after:.2f}s after the partition healed")
    assert _lines(caplog, r"connection to amqp://guest:\*\*\*@127\.0\.0\.1:\d+/\S+ lost \(")
    attempts = _lines(caplog, r"reconnect attempt (\d+) to (\S+) failed: (.+); next try in (\S+)s")
    numbers = [int(m.group(1)) for m in attempts]
    delays = [float(m.group(4)) for m in attempts]
    assert numbers[:5] == [1, 2, 3, 4, 5]
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 5.0]
    assert max(delays) == 5.0  # capped
    assert all(m.group(2).startswith("amqp://guest:***@") for m in attempts)
    assert _lines(caplog, r"reconnected to \S+ after \d+ failed attempts")


@pytest.fixture
def own_vhost(running_own_broker: RabbitNode) -> Iterator[Settings]:
    name = f"jobsys-test-{uuid.uuid4().hex[:8]}"
    running_own_broker.ctl("add_vhost", name)
    running_own_broker.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield settings_for_vhost(node_settings(running_own_broker), name)
    finally:
        if running_own_broker.is_running():
            with contextlib.suppress(Exception):
                running_own_broker.set_memory_alarm(False)
            running_own_broker.ctl("delete_vhost", name)


async def test_closing_a_connection_blocked_by_a_memory_alarm_drops_it_instead_of_waiting(
    own_vhost: Settings, running_own_broker: RabbitNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobsys")
    node = running_own_broker
    connection = await BrokerConnection(own_vhost).open()
    channel = await connection.channel(confirms=True)
    queue = await channel.declare_queue("blocked", durable=True)
    await asyncio.to_thread(node.set_memory_alarm, True)
    try:
        # RabbitMQ blocks a connection when it next publishes, and then stops reading it: the
        # rest of a large message fills the socket's buffers, so even the close frame cannot
        # be written (aiormq would wait three heartbeats for that, then two seconds more).
        publish = asyncio.ensure_future(
            channel.default_exchange.publish(
                aio_pika.Message(b"x" * 32 * 1024 * 1024), routing_key=queue.name
            )
        )
        await asyncio.wait({publish}, timeout=2)
        started = time.monotonic()
        await connection.close()
        took = time.monotonic() - started
        publish.cancel()
        await asyncio.gather(publish, return_exceptions=True)
    finally:
        await asyncio.to_thread(node.set_memory_alarm, False)
    print(f"\nclosing a connection blocked by the memory alarm took {took:.2f}s")
    assert _lines(caplog, r"did not answer the close within 2s .*dropped the connection")
    # The broker sees the socket go and drops the connection too.
    await wait_until(lambda: _no_connections(node), what="the connection gone on the broker")


def _no_connections(node: RabbitNode) -> bool:
    return node.ctl("list_connections", "name", "--quiet").strip() == ""


async def test_acks_written_into_a_dead_socket_are_not_counted_as_done(
    vhost_settings: Settings, fault_proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobsys")
    loaded = worker_apps.loaded_topology()
    await worker_apps.apply(vhost_settings, loaded)
    PROBE.reset()
    PROBE.release = asyncio.Event()
    proxied = _through(fault_proxy, vhost_settings, connect_timeout_s=2.0)
    options = WorkerOptions(concurrency=1, prefetch=1)
    async with running_worker(worker_apps.app, loaded, proxied, options) as worker:
        [job_id] = await publish(vhost_settings, loaded, "hold", [{}])
        await wait_until(lambda: PROBE.running == 1, what="the job running")
        # The partition starts; the job finishes and its ack is written into the silent
        # socket, without an error. The broker never gets it and redelivers the job.
        fault_proxy.set_mode("blackhole")
        PROBE.release.set()
        await wait_until(lambda: PROBE.done == [job_id], what="the first run finished")
        await wait_until(
            lambda: _lines(caplog, "connection to .* lost"),
            timeout_s=30,
            what="the loss noticed",
        )
        fault_proxy.set_mode("pass")
        await wait_until(lambda: PROBE.done == [job_id, job_id], timeout_s=60, what="the rerun")
        await wait_until(lambda: worker.stats.done == 1, what="the rerun acked")
        assert worker.stats.lost_acks == 1
    assert worker.stats.done == 1, "an ack the broker never received was counted as done"
    assert await queue_depth(vhost_settings, WORK) == 0


@pytest.fixture
def timeout_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A node of its own whose ``consumer_timeout`` is 1 s (the others keep the default)."""
    node = RabbitNode(
        OWN_BROKER_N + 4, tmp_path_factory.mktemp("timeout-node"), extra_config=TIMEOUT_CONFIG
    )
    try:
        node.start()
        yield node
    finally:
        node.close()


TIMEOUT_CONFIG = "consumer_timeout = 1000"


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_a_consumer_timeout_is_logged_with_its_reason_and_the_pool_consumes_again(
    timeout_node: RabbitNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobsys")
    settings = node_settings(timeout_node)
    loaded = worker_apps.loaded_topology()
    await worker_apps.apply(settings, loaded)
    PROBE.reset()
    PROBE.release = asyncio.Event()
    options = WorkerOptions(concurrency=1, prefetch=1)
    async with running_worker(worker_apps.app, loaded, settings, options) as worker:
        [job_id] = await publish(settings, loaded, "hold", [{}])
        # The broker checks consumer timeouts about once a minute.
        await wait_until(
            lambda: _lines(caplog, "the broker closed the channel consuming wt.work"),
            timeout_s=150,
            what="the consumer timeout",
        )
        PROBE.release.set()
        # The broker checks timeouts on its own timer, and a loaded machine may let it time
        # the rerun out too: what must hold is that the job ends acked, that an ack into a
        # closed channel is never counted as done, and that the worker never stops.
        await wait_until(lambda: worker.stats.done == 1, timeout_s=150, what="the job acked")
        # How the held attempt ends on its closed channel (finished, or settled as failed and
        # retried) depends on the broker's and the loop's timing; either way its ack is lost,
        # never counted as done, and the job ends acked exactly once.
        assert PROBE.done and set(PROBE.done) == {job_id}
        assert worker.stats.lost_acks >= 1
        assert not worker.stopping
    [line] = [m.string for m in _lines(caplog, "the broker closed the channel")]
    print(f"\n{line}")
    assert ": 406 PRECONDITION_FAILED - " in line and "timed out" in line
    assert await queue_depth(settings, WORK) == 0
