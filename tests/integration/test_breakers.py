"""Circuit breakers on a real broker: after N failures the job type pauses; its jobs are not
attempted meanwhile and burn no attempt (they wait in the delay levels); after the cool-down one
trial runs and its success closes the breaker; the state shows in the logs and in
``jobsys status``."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobsys.app import App, JobContext
from jobsys.broker.connection import BrokerConnection
from jobsys.consume.options import WorkerOptions
from jobsys.ops.status import read_breakers
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text
from tests.apps.worker_apps import apply, publish
from tests.harness.running import running_worker
from tests.harness.worker_subprocess import wait_until

pytestmark = pytest.mark.timeout(120)

TOPOLOGY_YAML = """\
version: 1
exchanges:
  cb.jobs: {type: direct}
queues:
  cb.work: {type: classic, consumer: {concurrency: 1, prefetch: 1}}
bindings:
  - {exchange: cb.jobs, queue: cb.work, routing_key: charge}
job_types:
  charge:
    exchange: cb.jobs
    routing_key: charge
    retry: {max_attempts: 5, delays: [1s]}
    breaker: {failures: 3, window: 60s, cool_down: 3s}
"""


class PaymentApi:
    """Down until told otherwise; records every call: (job id, attempt, up)."""

    def __init__(self) -> None:
        self.up = False
        self.calls: list[tuple[str, int, bool]] = []
        self.done: set[str] = set()

    def app(self) -> App:
        app = App()

        @app.handler("charge")
        async def charge(payload: Any, ctx: JobContext) -> None:
            self.calls.append((ctx.job_id, ctx.attempt, self.up))
            if not self.up:
                raise ConnectionError("payment API is down")
            self.done.add(ctx.job_id)

        return app


@pytest.fixture
async def loaded(vhost_settings: Settings) -> LoadedTopology:
    topology = load_topology_text(TOPOLOGY_YAML, "cb.yaml")
    await apply(vhost_settings, topology)
    return topology


async def breaker_state(settings: Settings, loaded: LoadedTopology) -> str | None:
    async with BrokerConnection(settings) as conn:
        state = (await read_breakers(conn, loaded.topology))["charge"]
    return None if state is None else str(state["state"])


async def test_an_open_breaker_pauses_the_type_without_burning_attempts_then_a_trial_closes_it(
    vhost_settings: Settings, loaded: LoadedTopology, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobsys.consume.breakers")
    api = PaymentApi()
    ids = await publish(vhost_settings, loaded, "charge", [{"i": i} for i in range(8)])
    assert await breaker_state(vhost_settings, loaded) is None
    async with running_worker(api.app(), loaded, vhost_settings, WorkerOptions(grace_s=5)):
        await wait_until(lambda: len(api.calls) == 3, 30, "three failed calls")
        await wait_until(
            lambda: breaker_state(vhost_settings, loaded), 10, "the breaker state published"
        )
        assert await breaker_state(vhost_settings, loaded) == "open"
        opened = len(api.calls)
        api.up = True
        await wait_until(lambda: api.done == set(ids), 60, "every charge done")
    # While open (3 s), no call was made: the first call after the three failures is the trial,
    # made with the API up, and it and every later one succeeded.
    assert opened == 3
    assert all(up for _, _, up in api.calls[3:])
    # The jobs held back ran as their first attempt; the three that failed, as their second.
    attempts = {job_id: attempt for job_id, attempt, up in api.calls if up}
    failed_first = {job_id for job_id, _, up in api.calls if not up}
    assert len(failed_first) == 3
    assert all(attempts[j] == (2 if j in failed_first else 1) for j in ids)
    assert await breaker_state(vhost_settings, loaded) == "closed"
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "circuit breaker of job type charge opened (3 failures in 60s)" in m for m in messages
    )
    assert any("half-open: one trial runs" in m for m in messages)
    assert any("closed: the trial succeeded" in m for m in messages)


async def test_a_failed_trial_opens_the_breaker_again_and_status_shows_it_open(
    vhost_settings: Settings, loaded: LoadedTopology, tmp_path: Path
) -> None:
    api = PaymentApi()
    await publish(vhost_settings, loaded, "charge", [{"i": i} for i in range(3)])
    file = tmp_path / "cb.yaml"
    file.write_text(TOPOLOGY_YAML, encoding="utf-8")
    async with running_worker(api.app(), loaded, vhost_settings, WorkerOptions(grace_s=5)):
        await wait_until(lambda: len(api.calls) == 4, 30, "three failures and a failed trial")
        status = await asyncio.to_thread(
            subprocess.run,
            [str(Path(sys.executable).with_name("jobsys")), "status", "--topology", str(file)],
            capture_output=True,
            text=True,
            env={**os.environ, "JOBSYS_URL": vhost_settings.url},
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert "circuit breaker charge: open until " in status.stdout
        assert "(3 failures in 60s; last change by " in status.stdout
        await wait_until(lambda: len(api.calls) == 5, 30, "the next trial")
        api.up = True
        await wait_until(lambda: len(api.done) == 3, 60, "every charge done")
    assert [up for _, _, up in api.calls[:5]] == [False] * 5


async def test_a_breaker_one_worker_opens_pauses_the_type_in_another_worker_too(
    vhost_settings: Settings,
) -> None:
    loaded = load_topology_text(TOPOLOGY_YAML.replace("cool_down: 3s", "cool_down: 8s"), "cb.yaml")
    await apply(vhost_settings, loaded)
    api = PaymentApi()
    await publish(vhost_settings, loaded, "charge", [{"i": i} for i in range(3)])
    async with running_worker(api.app(), loaded, vhost_settings, WorkerOptions(grace_s=5)):
        await wait_until(lambda: len(api.calls) == 3, 30, "three failures: the breaker opens")
        # A second worker, started after the breaker opened, knows it is open from the stream.
        async with running_worker(api.app(), loaded, vhost_settings, WorkerOptions(grace_s=5)):
            await publish(vhost_settings, loaded, "charge", [{"i": i} for i in range(6)])
            await asyncio.sleep(2)
            assert len(api.calls) == 3  # nobody called the API during the cool-down
            api.up = True
            await wait_until(lambda: len(api.done) == 9, 60, "every charge done")
    assert all(up for _, _, up in api.calls[3:])
