"""The dashboard's schedules page against the real broker: before any scheduler ran, while one
leads and fires, and for a topology without schedules."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from starlette.testclient import TestClient

from jobsys.dashboard.app import create_app
from jobsys.dashboard.config import DashboardConfig
from jobsys.schedule.scheduler import Scheduler
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from tests.apps.schedule_apps import apply, topology, write_topology
from tests.harness.worker_subprocess import wait_until


@contextlib.contextmanager
def dashboard(settings: Settings, loaded: LoadedTopology) -> Iterator[TestClient]:
    # refresh 1 s (the least): the page reads the state again soon after a fire
    app = create_app(DashboardConfig(refresh_s=1.0), settings, loaded.topology)
    with TestClient(app, base_url="http://127.0.0.1:8080") as client:
        yield client


async def test_the_schedules_page_shows_no_leader_then_the_leader_and_its_last_fire(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = write_topology(tmp_path, topology(every="1s"))
    await apply(vhost_settings, loaded)
    with dashboard(vhost_settings, loaded) as client:
        before = client.get("/schedules")
        assert before.status_code == 200
        assert "No scheduler has run yet" in before.text
        assert re.search(r"<td>tick</td><td>tick</td><td>every 1s</td>", before.text), before.text
        assert "Schedules</a>" in client.get("/").text  # in the navigation

        running = Scheduler(vhost_settings, loaded)
        task = asyncio.create_task(running.run())
        try:
            await wait_until(lambda: running.stats.fired >= 2, 15, "two fires")
            await asyncio.sleep(1.1)  # past the page's refresh interval
            during = client.get("/schedules")
            live = client.get("/schedules", headers={"HX-Request": "true"})
        finally:
            running.request_stop()
            await asyncio.wait_for(task, 15)
    assert during.status_code == 200
    assert f"Leader: <strong>{running.name}</strong>" in during.text
    assert re.search(r"<td>tick@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ</td>", during.text), during.text
    assert live.status_code == 200 and live.text.lstrip().startswith('<div id="live"')


async def test_a_topology_without_schedules_says_so(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    spec = topology()
    del spec["schedules"]
    loaded = write_topology(tmp_path, spec)
    with dashboard(vhost_settings, loaded) as client:
        page = client.get("/schedules")
    assert page.status_code == 200
    assert "This topology has no schedules." in page.text


async def test_a_missing_status_queue_is_a_message_on_the_page(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = write_topology(tmp_path)  # never applied: the scheduler's queues do not exist
    with dashboard(vhost_settings, loaded) as client:
        page = client.get("/schedules")
    assert page.status_code == 503
    assert "jobsys topology apply" in page.text
    assert "Traceback" not in page.text
