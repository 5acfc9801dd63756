"""Network faults between jobsys and the broker, through the TCP fault proxy, checked with
the ledger: a connection blackholed for longer than the heartbeat, and connections reset in
the middle of a window of publishes. The shared broker is never touched; each test has its
own vhost and only the proxied connections suffer.

(A reset of a 50-job window, checking the error text, is
``test_producer.py::test_connection_lost_before_the_confirm_is_outcome_unknown_and_it_reconnects``;
a worker reconnecting through resets is in ``test_worker_faults.py``.)
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from urllib.parse import quote

import pytest

from jobsys.consume.options import WorkerOptions
from jobsys.consume.worker import Worker
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from tests.apps import failure_apps
from tests.apps.failure_apps import (
    WORK,
    WORK_DEAD,
    handler_lines,
    publish_into,
    wait_until,
)
from tests.harness.fault_proxy import FaultProxy
from tests.harness.ledger import Ledger

pytestmark = pytest.mark.timeout(120)
PREFETCH = 8
HEARTBEAT_S = 2


def _through(proxy: FaultProxy, settings: Settings, **overrides: object) -> Settings:
    return settings.with_overrides(
        url=proxy.url(vhost=quote(settings.vhost, safe="")), heartbeat_s=HEARTBEAT_S, **overrides
    )


async def test_a_blackhole_longer_than_the_heartbeat_loses_nothing_for_producer_or_worker(
    vhost_settings: Settings,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="jobsys")
    loaded = failure_apps.write_topology(tmp_path)
    await failure_apps.apply(vhost_settings, loaded)
    record = tmp_path / "w.record"
    for name, value in failure_apps.record_env(record).items():
        monkeypatch.setenv(name, value)
    proxied = _through(fault_proxy, vhost_settings, publish_timeout_s=30.0)
    ledger = Ledger()
    options = WorkerOptions(concurrency=4, prefetch=PREFETCH)
    worker = Worker(failure_apps.app, loaded, proxied, options)
    task = asyncio.create_task(worker.run())
    blackholed = asyncio.Event()
    try:
        await asyncio.wait_for(worker.ready.wait(), 15)
        async with Producer(proxied, loaded.topology) as producer:

            async def stream() -> None:
                # Batches one after the other, so publishing goes on before, during and after.
                for batch in range(15):
                    if batch == 3:
                        blackholed.set()
                    payloads = [{"sleep_s": 0.02}] * 20
                    await publish_into(ledger, producer, "task", payloads, prefix=f"b{batch:02d}")

            publishing = asyncio.create_task(stream())
            await blackholed.wait()
            fault_proxy.set_mode("blackhole")
            # Both sides give up on the silent connection only after missed heartbeats.
            await wait_until(
                lambda: "connection to the broker lost" in caplog.text,
                timeout_s=10 * HEARTBEAT_S,
                what="the worker noticing the dead connection",
            )
            started_before = set(handler_lines(record, "start"))
            fault_proxy.set_mode("pass")
            await asyncio.wait_for(publishing, 90)
        await wait_until(
            lambda: set(handler_lines(record, "done")) >= ledger.confirmed,
            timeout_s=60,
            what="every confirmed job done",
        )
        assert not task.done(), "the worker gave up instead of reconnecting"
    finally:
        fault_proxy.set_mode("pass")
        worker.request_stop()
        await asyncio.wait_for(task, 30)

    ledger.read_runs(record)
    await ledger.read_queue(vhost_settings.url, WORK)
    await ledger.read_queue(vhost_settings.url, WORK_DEAD, dead=True)
    result = ledger.check()
    print(f"blackhole: {result.summary()} connections={fault_proxy.connection_count}")
    # Only deliveries held on the dead connection may run again: at most one prefetch.
    result.assert_ok(allowed_duplicates=started_before)
    assert len(result.duplicated) <= PREFETCH
    assert len(ledger.confirmed) > 200, "publishing did not carry on after the blackhole"


async def test_connections_reset_mid_publish_window_confirm_nothing_that_is_not_queued(
    vhost_settings: Settings, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    loaded = failure_apps.write_topology(tmp_path)
    await failure_apps.apply(vhost_settings, loaded)
    proxied = _through(fault_proxy, vhost_settings, publish_timeout_s=30.0)
    ledger = Ledger()
    jobs = 2500
    async with Producer(proxied, loaded.topology) as producer:
        # Connected first, so the byte counts below are publishes only.
        first = await producer.publish("task", {}, job_id="first")
        ledger.record_publish(first.job_id, first)
        start = fault_proxy.bytes_upstream
        # Roughly a third of the way in, then again: the window is full of unconfirmed jobs.
        fault_proxy.cut_after(100_000)
        publishing = asyncio.create_task(
            publish_into(ledger, producer, "task", [{}] * jobs, prefix="job", window=256)
        )
        await wait_until(
            lambda: fault_proxy.connection_count >= 2, what="the reconnect after the first cut"
        )
        await wait_until(
            lambda: fault_proxy.bytes_upstream - start > 200_000, what="publishing again"
        )
        fault_proxy.cut_after(60_000)
        await asyncio.wait_for(publishing, 90)
    await ledger.read_queue(vhost_settings.url, WORK)
    result = ledger.check()
    print(f"reset mid-window: {result.summary()} connections={fault_proxy.connection_count}")
    result.assert_ok()  # nothing published twice either: no job was resubmitted
    assert fault_proxy.connection_count >= 3
    assert ledger.unknown, "the cuts should have caught jobs between publish and confirm"
    assert len(ledger.publish_state) == jobs + 1
