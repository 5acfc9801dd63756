"""The dashboard's job lookup against the real broker: a job's recorded timeline and state,
hostile ids refused or shown as text, and a topology without history saying so."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from jobsys.dashboard.app import create_app
from jobsys.dashboard.config import DashboardConfig
from jobsys.errors import JobFailed
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.wire.envelope import new_job_id
from tests.apps import result_apps
from tests.apps.worker_apps import wait_until
from tests.harness.running import running_worker

pytestmark = pytest.mark.timeout(120)


@contextlib.contextmanager
def dashboard(settings: Settings, loaded: LoadedTopology) -> Iterator[TestClient]:
    app = create_app(DashboardConfig(), settings, loaded.topology)
    with TestClient(app, base_url="http://127.0.0.1:8080") as client:
        yield client


@pytest.fixture
async def loaded(vhost_settings: Settings, tmp_path: Path) -> LoadedTopology:
    topology = result_apps.loaded_topology(tmp_path, history=True)
    await result_apps.apply(vhost_settings, topology)
    result_apps.RELEASE = asyncio.Event()
    return topology


async def test_a_job_lookup_shows_its_timeline_and_where_it_stands(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    ok, failing = new_job_id(), new_job_id()
    async with (
        Producer(vhost_settings, loaded) as producer,
        running_worker(result_apps.app, loaded, vhost_settings),
    ):
        assert await producer.call("add", {"a": 1, "b": 2}, timeout_s=30, job_id=ok) == 3
        with pytest.raises(JobFailed):
            await producer.call("always_fails", {}, timeout_s=30, job_id=failing)
    with dashboard(vhost_settings, loaded) as client:
        assert "Jobs</a>" in client.get("/").text  # in the navigation

        def look(job_id: str) -> str:
            page = client.get("/jobs", params={"id": job_id, "since": "1h"})
            assert page.status_code == 200, page.text
            return page.text

        # Events are written in batches, off the hot path: wait for the last one.
        await wait_until(lambda: "succeeded at attempt 1" in look(ok), 20, "the success")
        await wait_until(lambda: "dead-lettered at attempt" in look(failing), 20, "the dead letter")
        done = look(ok)
        kinds = re.findall(r"<tr><td>[^<]*</td><td>(\w+)</td>", done)
        assert kinds == ["published", "started", "succeeded"], kinds
        assert "rs.work" in done or "queue" in done


async def test_hostile_job_ids_are_refused_or_shown_as_text(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    with dashboard(vhost_settings, loaded) as client:
        control = client.get("/jobs", params={"id": "evil\x1b[2J\nrow"})
        huge = client.get("/jobs", params={"id": "x" * 300})
        markup = client.get("/jobs", params={"id": "<script>alert(1)</script>", "since": "15m"})
        odd_since = client.get("/jobs", params={"id": "a-job", "since": "forever"})
    assert control.status_code == 400 and "\x1b" not in control.text
    assert huge.status_code == 400 and "255" in huge.text
    assert markup.status_code == 200
    assert "<script>alert(1)</script>" not in markup.text
    assert "&lt;script&gt;" in markup.text and "no events recorded" in markup.text
    assert odd_since.status_code == 200  # an unknown choice falls back to a day


async def test_without_history_the_page_says_how_to_turn_it_on(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    topology = result_apps.loaded_topology(tmp_path, history=False)
    with dashboard(vhost_settings, topology) as client:
        page = client.get("/jobs", params={"id": "some-job"})
    assert page.status_code == 200
    assert "Job history is off" in page.text
