"""The commands the deployment files run, run here against the broker: the Kubernetes Job's
``topology apply``, then the worker command of the Deployment and of docker-compose.yml, exactly
as written (only the metrics port is swapped for a free one, as other tests run beside), from
the repository root, which holds ``topology/`` as the image's working directory does.

Ready through the probe the manifest uses, a job done, and on SIGTERM a drain that exits 0
well within the time the orchestrator gives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobsys.duration import parse_duration_s
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import load_topology
from tests.harness.worker_subprocess import wait_until
from tests.integration.test_worker_metrics import _free_ports, sample, scrape
from tests.integration.test_worker_probes import probe
from tests.unit.test_deploy_files import ROOT, compose, k8s, worker_args, worker_container


def _jobsys(args: list[str], settings: Settings, stderr: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "JOBSYS_URL": settings.url}
    env.pop("JOBSYS_TOPOLOGY", None)
    with open(stderr, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "jobsys", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _with_port(args: list[str], port: int) -> list[str]:
    swapped = list(args)
    swapped[swapped.index("--metrics-port") + 1] = str(port)
    return swapped


def _deployments() -> list[tuple[str, list[str], float]]:
    pod = k8s("Deployment", "jobsys-worker")["spec"]["template"]["spec"]
    service = compose()["services"]["worker"]
    return [
        ("kubernetes", worker_container()["args"], float(pod["terminationGracePeriodSeconds"])),
        ("compose", list(service["command"]), parse_duration_s(service["stop_grace_period"])),
    ]


@pytest.mark.parametrize(("where", "args", "stop_within_s"), _deployments(), ids=lambda v: str(v))
async def test_the_deployed_worker_command_gets_ready_works_and_drains_on_sigterm(
    vhost_settings: Settings, tmp_path: Path, where: str, args: list[str], stop_within_s: float
) -> None:
    [job] = k8s("Job", "jobsys-topology-apply")["spec"]["template"]["spec"]["containers"]
    applied = _jobsys(job["args"], vhost_settings, tmp_path / "apply.txt")
    assert applied.wait(120) == 0, (tmp_path / "apply.txt").read_text()

    params = worker_args(args)
    port = _free_ports(1)
    stderr = tmp_path / "worker.txt"
    worker = _jobsys(_with_port(args, port), vhost_settings, stderr)
    try:

        async def ready() -> bool:
            if worker.poll() is not None:
                raise AssertionError(f"worker exited {worker.returncode}: {stderr.read_text()}")
            try:
                return (await probe(port, "/readyz"))[0] == 200
            except OSError:
                return False

        await wait_until(ready, 30, "the readiness probe to pass")
        assert (await probe(port, "/livez"))[0] == 200

        topology = load_topology(ROOT / params["topology_file"]).topology
        async with Producer(vhost_settings, topology) as producer:
            await producer.publish("send_email", {"to": "ada@example.com"})

        async def done() -> bool:
            counts = await scrape(port)
            succeeded = "jobsys_jobs_succeeded_total"
            return sample(counts, succeeded, job_type="send_email", queue="demo.emails") == 1

        await wait_until(done, 20, "the job done")
        signalled = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(stop_within_s)
        took = time.monotonic() - signalled
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    log = stderr.read_text()
    assert code == 0, log
    assert "worker stopped: 1 done, 0 dead-lettered, 0 requeued, 0 unfinished" in log
    assert took < stop_within_s
    assert "guest:guest" not in log
