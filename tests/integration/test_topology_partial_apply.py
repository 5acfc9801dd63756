"""When the broker stops ``apply`` half-way, the message says exactly what was created and what
was not declared; "nothing was changed" only when nothing was.

Two causes no check can rule out beforehand: a user who may not configure some of the names
(AMQP cannot ask for permissions without trying, and passive declares need none), and somebody
changing the broker between the plan and the declares. Both are produced for real here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.broker.management import ManagementClient, management_endpoint
from jobsys.errors import AccessRefused, TopologyChangedDuringApply, TopologyConflictError
from jobsys.ops.declare import apply_plan, apply_topology, plan_topology
from jobsys.settings import Settings
from jobsys.topology.entities import desired_entities
from jobsys.topology.loader import load_topology_text

JOBSYS = str(Path(sys.executable).with_name("jobsys"))

TOPOLOGY = """\
version: 1
exchanges:
  app.jobs: {type: direct}
queues:
  app.work: {type: classic, message_ttl: 1h}
bindings:
  - {exchange: app.jobs, queue: app.work, routing_key: work}
job_types:
  work: {exchange: app.jobs, routing_key: work}
"""


def management(settings: Settings, method: str, path: str, body: object | None = None) -> None:
    endpoint = management_endpoint(settings)
    token = base64.b64encode(f"{endpoint.username}:{endpoint.password}".encode()).decode()
    request = urllib.request.Request(
        endpoint.base_url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"authorization": f"Basic {token}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


async def broker_names(settings: Settings) -> set[str]:
    """Every exchange and queue the vhost holds, the broker's own exchanges aside."""
    snapshot = await ManagementClient(management_endpoint(settings)).snapshot(settings.vhost)
    names = {str(e["name"]) for e in snapshot.exchanges} | {str(q["name"]) for q in snapshot.queues}
    return {n for n in names if n and not n.startswith("amq.")}


def user_url(settings: Settings, configure: str) -> Iterator[str]:
    """A URL for a temporary user of the test vhost who may configure only ``configure``."""
    user, password = f"jobsys-test-{uuid.uuid4().hex[:8]}", "apply-pw"
    management(settings, "PUT", f"/api/users/{user}", {"password": password, "tags": ""})
    try:
        management(
            settings,
            "PUT",
            f"/api/permissions/{quote(settings.vhost, safe='')}/{user}",
            {"configure": configure, "write": ".*", "read": ".*"},
        )
        parts = urlsplit(settings.url)
        netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
        yield urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    finally:
        management(settings, "DELETE", f"/api/users/{user}")


@pytest.fixture
def app_only_url(vhost_settings: Settings) -> Iterator[str]:
    """A user who may configure the file's own names (``app.*``) but not jobsys's."""
    yield from user_url(vhost_settings, r"^app\..*$")


@pytest.fixture
def nothing_url(vhost_settings: Settings) -> Iterator[str]:
    """A user who may configure nothing at all."""
    yield from user_url(vhost_settings, "^$")


@pytest.mark.management
async def test_a_permission_refused_half_way_reports_exactly_what_was_created(
    vhost_settings: Settings, app_only_url: str
) -> None:
    loaded = load_topology_text(TOPOLOGY, "t.yaml")

    async with BrokerConnection(vhost_settings.with_overrides(url=app_only_url)) as conn:
        with pytest.raises(AccessRefused) as caught:
            await apply_topology(conn, loaded)

    message = str(caught.value)
    assert "ACCESS_REFUSED" in message and "jobsys.dead-letter" in message
    assert "apply stopped at exchange jobsys.dead-letter, after declaring 1 of " in message
    assert "\n  created exchange app.jobs\n" in message
    assert "not declared: exchange jobsys.dead-letter, exchange jobsys.due," in message
    assert "queue app.work, queue app.work.dead," in message
    assert "nothing was changed" not in message
    # What the message says is what the broker holds.
    assert await broker_names(vhost_settings) == {"app.jobs"}


@pytest.mark.management
async def test_a_refusal_of_the_first_declare_says_nothing_was_changed_and_it_is_true(
    vhost_settings: Settings, nothing_url: str
) -> None:
    async with BrokerConnection(vhost_settings.with_overrides(url=nothing_url)) as conn:
        with pytest.raises(AccessRefused) as caught:
            await apply_topology(conn, load_topology_text(TOPOLOGY, "t.yaml"))

    assert (
        "apply stopped at exchange app.jobs; nothing was declared before it, so nothing was "
        "changed" in str(caught.value)
    )
    assert await broker_names(vhost_settings) == set()


@pytest.mark.management
async def test_an_entity_changed_after_the_plan_stops_apply_with_what_it_had_created(
    vhost_settings: Settings,
) -> None:
    entities = desired_entities(load_topology_text(TOPOLOGY, "t.yaml").topology)
    async with BrokerConnection(vhost_settings) as conn:
        plan = await plan_topology(conn, entities)
        assert not plan.has_conflicts
        # Somebody else declares the work queue with another TTL after the plan was made.
        channel = await conn.plain_channel()
        await channel.queue_declare("app.work", durable=True, arguments={"x-message-ttl": 5})
        await channel.close()

        with pytest.raises(TopologyChangedDuringApply) as caught:
            await apply_plan(conn, plan)

    message = str(caught.value)
    assert isinstance(caught.value, TopologyConflictError)  # exit code 3, like any conflict
    assert "nothing was changed" not in message
    assert "x-message-ttl" in message and "app.work" in message
    assert "apply stopped at queue app.work, after declaring " in message
    assert "\n  created exchange app.jobs\n" in message
    assert "\n  created exchange jobsys.due\n" in message
    held = await broker_names(vhost_settings)
    created = {line.split()[-1] for line in message.splitlines() if "  created " in line}
    assert created == held - {"app.work"}


@pytest.mark.management
def test_apply_cli_exits_4_and_prints_what_it_created_before_the_refusal(
    vhost_settings: Settings, tmp_path: Path, app_only_url: str
) -> None:
    file = tmp_path / "topology.yaml"
    file.write_text(TOPOLOGY)

    result = subprocess.run(
        [JOBSYS, "topology", "apply", str(file)],
        capture_output=True,
        text=True,
        env={**os.environ, "JOBSYS_URL": app_only_url},
        timeout=60,
        check=False,
    )

    assert result.returncode == 4, result.stdout + result.stderr
    assert "created exchange app.jobs" in result.stderr
    assert "not declared: exchange jobsys.dead-letter" in result.stderr
    assert "Traceback" not in result.stderr and "apply-pw" not in result.stderr
    assert asyncio.run(broker_names(vhost_settings)) == {"app.jobs"}
