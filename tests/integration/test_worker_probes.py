"""``/livez`` and ``/readyz`` on ``jobsys worker --metrics-port``: what a Kubernetes probe (or any
orchestrator) reads from a real worker process, while it consumes, drains, and while an async
handler freezes its event loop."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

from jobsys.observe.health import Health
from jobsys.settings import Settings
from tests.apps import hostile_apps, worker_apps
from tests.apps.worker_apps import WORK, apply, loaded_topology, publish
from tests.harness.fault_proxy import FaultProxy
from tests.harness.running import running_worker
from tests.harness.worker_subprocess import WorkerSubprocess, wait_until
from tests.integration.test_worker_metrics import _free_ports, sample, scrape


async def probe(port: int, path: str) -> tuple[int, str]:
    """The status and body of ``GET path`` (a 503 is an answer, not an error)."""

    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    return await asyncio.to_thread(get)


async def test_a_consuming_worker_is_live_and_ready_and_a_draining_one_is_live_but_not_ready(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = loaded_topology(tmp_path)
    await apply(vhost_settings, loaded)
    port = _free_ports(1)
    worker = WorkerSubprocess(
        "tests.apps.worker_apps:app",
        tmp_path / "topology.yaml",
        tmp_path / "stderr.txt",
        {"JOBSYS_URL": vhost_settings.url},
        ["--metrics-port", str(port), "--grace", "60s"],
    )
    try:
        await worker.wait_for_output(f"consuming {WORK}")
        await wait_until(lambda: worker.stderr.count("worker ready") == 1, 10, "the banner")
        assert await probe(port, "/livez") == (200, "ok: consuming\n")
        assert await probe(port, "/readyz") == (200, "ok: consuming\n")
        assert "jobsys_jobs_started_total" in await scrape(port)  # the metrics are still there

        await publish(vhost_settings, loaded, "slow", [{}])  # runs 30 s: the drain waits for it
        await wait_until(_in_flight(port), 10, "the slow job running")
        worker.signal(signal.SIGTERM)
        await worker.wait_for_output("stopping: no new jobs")
        assert await probe(port, "/readyz") == (503, "not ready: draining: taking no new jobs\n")
        assert await probe(port, "/livez") == (200, "ok: draining: taking no new jobs\n")
        assert worker.proc.poll() is None, "the worker left before its job finished"
    finally:
        worker.signal(signal.SIGTERM)  # a second signal: stop now
        await worker.wait_exit(30)
        worker.kill()


async def test_an_event_loop_frozen_past_twice_the_heartbeat_is_not_live_and_is_again_after(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = hostile_apps.loaded_topology()
    await hostile_apps.apply(vhost_settings, loaded)
    topology = tmp_path / "topology.yaml"
    topology.write_text(hostile_apps.TOPOLOGY_YAML, encoding="utf-8")
    port = _free_ports(1)
    # Heartbeat 1 s: the live limit is its floor, 10 s; the handler blocks the loop for 16 s.
    worker = WorkerSubprocess(
        "tests.apps.hostile_apps:app",
        topology,
        tmp_path / "stderr.txt",
        {"JOBSYS_URL": vhost_settings.url},
        ["--metrics-port", str(port), "--heartbeat", "1", "--queue", hostile_apps.WORK],
    )
    try:
        await worker.wait_for_output("worker ready")
        assert (await probe(port, "/livez"))[0] == 200
        await publish(vhost_settings, loaded, "blocks", [{"block_s": 16}])
        await worker.wait_for_output("the event loop has been blocked")
        seen: list[tuple[int, str]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen.append(await probe(port, "/livez"))
            if seen[-1][0] == 503:
                break
            await asyncio.sleep(0.5)
        assert seen[-1][0] == 503, seen
        assert seen[-1][1].startswith("not live: the event loop has not turned for "), seen
        assert seen[-1][1].endswith("s (limit 10s)\n"), seen
        assert (await probe(port, "/readyz"))[0] == 503
        # The loop turns again once the handler returns: live, and ready once reconnected.
        await wait_until(_answers(port, "/readyz", 200), 60, "ready again after the block")
        assert (await probe(port, "/livez"))[0] == 200
    finally:
        worker.signal(signal.SIGTERM)
        await worker.wait_exit(30)
        worker.kill()


def _answers(port: int, path: str, status: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await probe(port, path))[0] == status

    return check


def _in_flight(port: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return sample(await scrape(port), "jobsys_jobs_in_flight", job_type="slow", queue=WORK) == 1

    return check


async def test_a_worker_that_lost_its_connection_is_live_but_not_ready_until_it_reconnects(
    vhost_settings: Settings, fault_proxy: FaultProxy
) -> None:
    loaded = loaded_topology()
    await apply(vhost_settings, loaded)
    settings = vhost_settings.with_overrides(
        url=fault_proxy.url(vhost=quote(vhost_settings.vhost, safe="")), heartbeat_s=2
    )
    async with running_worker(worker_apps.app, loaded, settings) as worker:
        assert worker.health() == Health(live=True, ready=True, detail="consuming")
        fault_proxy.set_mode("reset")  # drops the connection and refuses new ones
        await wait_until(lambda: not worker.health().ready, 10, "not ready")
        assert worker.health() == Health(
            live=True, ready=False, detail="reconnecting to the broker"
        )
        fault_proxy.set_mode("pass")
        await wait_until(lambda: worker.health().ready, 30, "ready again after reconnecting")
        worker.request_stop()
        assert worker.health() == Health(
            live=True, ready=False, detail="draining: taking no new jobs"
        )
