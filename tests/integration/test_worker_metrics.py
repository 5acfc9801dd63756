"""``jobsys worker --metrics-port``: Prometheus metrics from a real worker process, alone and
under ``--processes`` (one port per process slot), and a taken port as a clear error."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from jobsys.settings import Settings
from tests.apps.worker_apps import WORK, apply, loaded_topology, publish
from tests.harness.worker_subprocess import WorkerSubprocess, wait_until


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count > 65535:
            continue
        socks = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no run of free ports")


async def scrape(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    return await asyncio.to_thread(get)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels`` (0 when absent)."""
    shown = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(shown)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def _scrapes(port: int) -> str | None:
    try:
        return await scrape(port)
    except OSError:
        return None


def _worker(tmp_path: Path, settings: Settings, *args: str) -> WorkerSubprocess:
    return WorkerSubprocess(
        "tests.apps.worker_apps:app",
        tmp_path / "topology.yaml",
        tmp_path / "stderr.txt",
        {"JOBSYS_URL": settings.url},
        list(args),
    )


async def test_a_worker_serves_its_job_metrics_to_prometheus(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = loaded_topology(tmp_path)
    await apply(vhost_settings, loaded)
    port = _free_ports(1)
    worker = _worker(tmp_path, vhost_settings, "--metrics-port", str(port))
    try:
        await worker.wait_for_output(f"consuming {WORK}")
        await publish(vhost_settings, loaded, "echo", [{}] * 5)
        await publish(vhost_settings, loaded, "boom", [{}])

        async def settled() -> bool:
            text = await scrape(port)
            q = {"queue": WORK}
            return (
                sample(text, "jobsys_jobs_succeeded_total", job_type="echo", **q) == 5
                and sample(text, "jobsys_jobs_dead_lettered_total", job_type="boom", **q) == 1
            )

        await wait_until(settled, 20, "the metrics to count every job")
        text = await scrape(port)
    finally:
        worker.signal(signal.SIGTERM)
        await worker.wait_exit()
        worker.kill()
    q = {"queue": WORK}
    assert sample(text, "jobsys_jobs_started_total", job_type="echo", **q) == 5
    assert sample(text, "jobsys_jobs_in_flight", job_type="echo", **q) == 0
    assert sample(text, "jobsys_jobs_retried_total", job_type="boom", **q) == 0
    assert (
        sample(text, "jobsys_handler_duration_seconds_count", job_type="echo", outcome="ok", **q)
        == 5
    )
    assert sample(text, "jobsys_queue_latency_seconds_count", job_type="echo", **q) == 5
    assert (
        sample(
            text,
            "jobsys_jobs_published_total",
            job_type="boom",
            exchange="jobsys.dead-letter",
            kind="dead_letter",
        )
        == 1
    )


async def test_each_supervised_worker_process_serves_metrics_on_its_own_port(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = loaded_topology(tmp_path)
    await apply(vhost_settings, loaded)
    port = _free_ports(2)
    worker = _worker(tmp_path, vhost_settings, "--processes", "2", "--metrics-port", str(port))
    try:
        await wait_until(
            lambda: worker.stderr.count(f"consuming {WORK}") >= 2, 30, "both processes"
        )
        await publish(vhost_settings, loaded, "echo", [{}] * 40)

        async def all_counted() -> bool:
            texts = [await _scrapes(p) for p in (port, port + 1)]
            return (
                all(texts)
                and sum(
                    sample(t or "", "jobsys_jobs_succeeded_total", job_type="echo", queue=WORK)
                    for t in texts
                )
                == 40
            )

        await wait_until(all_counted, 30, "both ports to count the jobs between them")
        texts = [await scrape(p) for p in (port, port + 1)]
    finally:
        worker.signal(signal.SIGTERM)
        code = await worker.wait_exit(60)
        worker.kill()
    assert code == 0, worker.stderr
    started = [sample(t, "jobsys_jobs_started_total", job_type="echo", queue=WORK) for t in texts]
    assert sum(started) == 40


@pytest.mark.parametrize("supervised", [False, True])
async def test_a_taken_metrics_port_is_a_clear_error(
    vhost_settings: Settings, tmp_path: Path, supervised: bool
) -> None:
    loaded = loaded_topology(tmp_path)
    await apply(vhost_settings, loaded)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        extra = ["--processes", "1"] if supervised else []
        worker = _worker(tmp_path, vhost_settings, *extra, "--metrics-port", str(port))
        try:
            code = await worker.wait_exit(60)
        finally:
            worker.kill()
    assert code == 2, worker.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}: the port is taken" in worker.stderr
    assert "Traceback" not in worker.stderr
