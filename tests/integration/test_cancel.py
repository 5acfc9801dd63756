"""Cancelling jobs that have not run: ``Producer.cancel`` and ``jobsys jobs cancel`` reach every
worker through the cancellations stream; a cancelled job, waiting or delayed, is acked without
running and counted as cancelled."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from jobsys.cli import main
from jobsys.errors import PayloadTooLargeError, PayloadValidationError
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from tests.apps import worker_apps
from tests.apps.worker_apps import PROBE
from tests.harness.running import running_worker
from tests.harness.worker_subprocess import wait_until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def loaded(vhost_settings: Settings) -> LoadedTopology:
    topology = worker_apps.loaded_topology()
    await worker_apps.apply(vhost_settings, topology)
    PROBE.reset()
    return topology


async def test_a_job_cancelled_while_it_waits_in_its_queue_is_acked_without_running(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async with Producer(vhost_settings, loaded) as producer:
        await producer.publish("echo", {"n": 1}, job_id="keep")
        await producer.publish("echo", {"n": 2}, job_id="drop")
        await producer.cancel("drop")
    async with running_worker(worker_apps.app, loaded, vhost_settings) as worker:
        await wait_until(lambda: worker.stats.done + worker.stats.cancelled >= 2, 15, "2 jobs")

    assert PROBE.done == ["keep"]
    assert worker.stats.cancelled == 1
    assert worker.stats.done == 1


async def test_a_delayed_job_cancelled_while_a_worker_runs_never_runs(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async with running_worker(worker_apps.app, loaded, vhost_settings) as worker:
        async with Producer(vhost_settings, loaded) as producer:
            due = datetime.now(UTC) + timedelta(seconds=2)
            await producer.publish("echo", {}, job_id="later", run_at=due)
            await producer.publish("echo", {}, job_id="later-kept", run_at=due)
            await producer.cancel("later")
        await wait_until(lambda: worker.stats.cancelled == 1, 15, "the cancelled job to arrive")
        await wait_until(lambda: PROBE.done == ["later-kept"], 5, "the other job")
    # The kept job ran no earlier than the moment it was published for.
    assert PROBE.contexts[0].due_at is not None
    assert PROBE.contexts[0].due_at <= datetime.now(UTC)


async def test_every_worker_knows_a_cancellation_made_before_it_started(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async with Producer(vhost_settings, loaded) as producer:
        for i in range(200):
            await producer.cancel(f"old-{i}")
        await producer.publish("echo", {}, job_id="old-199")
    for _ in range(2):
        async with running_worker(worker_apps.app, loaded, vhost_settings) as worker:
            assert "old-0" in worker._runner.cancellations
            assert "old-199" in worker._runner.cancellations
    assert PROBE.done == []


@pytest.mark.parametrize(
    ("job_id", "error"),
    [
        ("a\nb", PayloadValidationError),
        ("", PayloadValidationError),
        ("x" * 10_000, PayloadTooLargeError),
        ("\udcff", PayloadValidationError),
    ],
)
async def test_a_malformed_or_huge_job_id_is_refused_before_anything_is_sent(
    vhost_settings: Settings, loaded: LoadedTopology, job_id: str, error: type[Exception]
) -> None:
    async with Producer(vhost_settings, loaded) as producer:
        with pytest.raises(error):
            await producer.cancel(job_id)


def test_jobs_cancel_records_an_unknown_id_and_refuses_a_bad_one(
    vhost_settings: Settings, loaded: LoadedTopology, tmp_path: Path
) -> None:
    file = tmp_path / "topology.yaml"
    file.write_text(yaml.safe_dump(yaml.safe_load(worker_apps.TOPOLOGY_YAML)), encoding="utf-8")

    def cancel(job_id: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(
            main, ["jobs", "cancel", job_id, "--topology", str(file), "--url", vhost_settings.url]
        )
        return result.exit_code, result.stdout, result.stderr

    code, out, _ = cancel("no-such-job")
    assert code == 0
    assert "cancellation of job no-such-job recorded" in out
    code, out, err = cancel("evil\x1b[2J\nforged line")
    assert code == 2
    assert "\x1b" not in out + err
    assert "control characters" in err
    code, _, err = cancel("y" * 100_000)
    assert code == 2
    assert "the limit is 255 bytes" in err


async def test_a_scheduled_slot_cancelled_ahead_is_dropped_when_it_fires(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    # The job id of a future slot is known: cancel it before it fires.
    async with Producer(vhost_settings, loaded) as producer:
        await producer.publish("echo", {}, job_id="nightly@2026-12-01T02:00:00Z")
        await producer.cancel("nightly@2026-12-01T02:00:00Z")
    async with running_worker(worker_apps.app, loaded, vhost_settings) as worker:
        await wait_until(lambda: worker.stats.cancelled == 1, 15, "the cancelled fire")
    await asyncio.sleep(0)
    assert PROBE.done == []
