"""`jobsys topology plan / apply / export`, run as users run them: the installed command in a
subprocess, against a private vhost of the real broker."""

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

import aio_pika
import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.broker.management import ManagementClient, management_endpoint
from jobsys.settings import Settings

JOBSYS = str(Path(sys.executable).with_name("jobsys"))

TOPOLOGY = """
version: 1
exchanges:
  c.jobs: {type: topic}
queues:
  c.reports: {type: classic, message_ttl: 1h}
bindings:
  - {exchange: c.jobs, queue: c.reports, routing_key: "report.#"}
job_types:
  build_report: {exchange: c.jobs, routing_key: report.build}
"""

PROBE = pytest.mark.parametrize("flags", [[], ["--no-management"]], ids=["management", "probe"])


def jobsys(
    *args: str, url: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "JOBSYS_URL": url, **(env or {})}
    return subprocess.run(
        [JOBSYS, *args], capture_output=True, text=True, env=environ, timeout=60, check=False
    )


def write(tmp_path: Path, text: str, name: str = "topology.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def queue_names(settings: Settings) -> set[str]:
    client = ManagementClient(management_endpoint(settings))
    return {q["name"] for q in asyncio.run(client.queues(settings.vhost))}


def publish_and_count(settings: Settings, queue: str, count: int) -> int:
    """Publish ``count`` persistent messages to ``queue`` (0: none) and return its depth."""

    async def go() -> int:
        async with BrokerConnection(settings) as conn:
            channel = await conn.channel()
            for i in range(count):
                message = aio_pika.Message(f"{i}".encode(), delivery_mode=2)
                await channel.default_exchange.publish(message, routing_key=queue)
            declared = await channel.declare_queue(queue, passive=True)
            depth = declared.declaration_result.message_count
            assert depth is not None
            return depth

    return asyncio.run(go())


def with_credentials(url: str, password: str, username: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = f"{username or parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


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


@pytest.fixture
def no_configure_url(vhost_settings: Settings) -> Iterator[str]:
    """A URL for a user who may read and write in the test vhost but not declare anything."""
    user, password = f"jobsys-test-{uuid.uuid4().hex[:8]}", "reader-pw"
    management(vhost_settings, "PUT", f"/api/users/{user}", {"password": password, "tags": ""})
    try:
        management(
            vhost_settings,
            "PUT",
            f"/api/permissions/{quote(vhost_settings.vhost, safe='')}/{user}",
            {"configure": "^$", "write": ".*", "read": ".*"},
        )
        yield with_credentials(vhost_settings.url, password, username=user)
    finally:
        management(vhost_settings, "DELETE", f"/api/users/{user}")


@PROBE
@pytest.mark.management
def test_plan_on_an_empty_vhost_announces_every_entity_as_created(
    vhost_settings: Settings, tmp_path: Path, flags: list[str]
) -> None:
    result = jobsys("topology", "plan", write(tmp_path, TOPOLOGY), *flags, url=vhost_settings.url)

    assert result.returncode == 0, result.stderr
    assert "+ create exchange c.jobs (topic)" in result.stdout
    assert "+ create queue c.reports (x-queue-type='classic'" in result.stdout
    assert "x-message-ttl=3600000" in result.stdout
    assert "0 conflicting, 0 matching" in result.stdout
    method = "probing over AMQP" if flags else "the management API"
    assert f"via {method}" in result.stdout
    assert ("extras not checked" in result.stdout) == bool(flags)
    assert queue_names(vhost_settings) == set()
    assert "guest:guest" not in result.stdout


@PROBE
@pytest.mark.management
def test_apply_twice_creates_once_then_plan_shows_everything_matching(
    vhost_settings: Settings, tmp_path: Path, flags: list[str]
) -> None:
    file = write(tmp_path, TOPOLOGY)

    first = jobsys("topology", "apply", file, *flags, url=vhost_settings.url)
    second = jobsys("topology", "apply", file, *flags, url=vhost_settings.url)
    plan = jobsys("topology", "plan", file, "--all", *flags, url=vhost_settings.url)
    folded = jobsys("topology", "plan", file, *flags, url=vhost_settings.url)

    assert first.returncode == 0, first.stderr
    assert "created queue c.reports" in first.stdout
    assert "created exchange c.jobs" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "nothing to change" in second.stdout and "created" not in second.stdout
    assert plan.returncode == 0, plan.stderr
    assert "= queue c.reports matches" in plan.stdout
    assert "+ " not in plan.stdout and "~ " not in plan.stdout
    assert "0 to create, 0 conflicting" in plan.stdout
    assert {"c.reports", "c.reports.dead", "jobsys.wait.00"} <= queue_names(vhost_settings)
    # Without --all, what matches is counted, not listed; the note on bindings comes once.
    assert folded.returncode == 0, folded.stderr
    assert "= " not in folded.stdout and "+ " not in folded.stdout
    assert "exchanges" in folded.stdout.split("unchanged: ")[1]
    assert folded.stdout.count("checked only through the management API") <= 1


@PROBE
@pytest.mark.management
def test_apply_with_a_changed_ttl_exits_3_with_the_diff_and_keeps_queue_and_messages(
    vhost_settings: Settings, tmp_path: Path, flags: list[str]
) -> None:
    url = vhost_settings.url
    assert jobsys("topology", "apply", write(tmp_path, TOPOLOGY), url=url).returncode == 0
    assert publish_and_count(vhost_settings, "c.reports", 5) == 5
    changed = TOPOLOGY.replace("message_ttl: 1h", "message_ttl: 2h").replace(
        "queues:\n", "queues:\n  c.other: {type: classic}\n"
    )
    file = write(tmp_path, changed, "changed.yaml")

    plan = jobsys("topology", "plan", file, *flags, url=url)
    apply = jobsys("topology", "apply", file, *flags, url=url)

    diff = "~ queue c.reports: x-message-ttl is 3600000, file wants 7200000"
    assert plan.returncode == 3 and diff in plan.stdout
    assert "+ create queue c.other" in plan.stdout
    assert apply.returncode == 3, apply.stderr
    assert diff in apply.stderr and "nothing was changed" in apply.stderr
    assert "Traceback" not in apply.stderr + apply.stdout
    assert publish_and_count(vhost_settings, "c.reports", 0) == 5
    assert "c.other" not in queue_names(vhost_settings)


@pytest.mark.management
def test_apply_of_an_invalid_file_exits_2_and_declares_nothing(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    broken = TOPOLOGY.replace("queue: c.reports", "queue: c.missing")
    file = write(tmp_path, broken)

    result = jobsys("topology", "apply", file, url=vhost_settings.url)

    assert result.returncode == 2
    assert f"{file}:8:" in result.stderr and "c.missing" in result.stderr
    assert "Traceback" not in result.stderr
    assert queue_names(vhost_settings) == set()


@pytest.mark.management
def test_wrong_password_exits_4_with_one_clear_message_and_no_password(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    url = with_credentials(vhost_settings.url, "not-the-s3cret")

    result = jobsys("topology", "apply", write(tmp_path, TOPOLOGY), url=url)

    assert result.returncode == 4
    assert "refused the login" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "not-the-s3cret" not in result.stderr + result.stdout
    assert queue_names(vhost_settings) == set()


@pytest.mark.management
def test_apply_without_configure_permission_exits_4_with_the_brokers_refusal(
    vhost_settings: Settings, tmp_path: Path, no_configure_url: str
) -> None:
    result = jobsys("topology", "apply", write(tmp_path, TOPOLOGY), url=no_configure_url)

    assert result.returncode == 4, result.stdout + result.stderr
    assert "refused an operation: ACCESS_REFUSED" in result.stderr
    assert "Traceback" not in result.stderr and "reader-pw" not in result.stderr
    assert queue_names(vhost_settings) == set()


@pytest.mark.management
def test_plan_json_lists_every_item_with_its_action(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    result = jobsys("topology", "plan", write(tmp_path, TOPOLOGY), "--json", url=vhost_settings.url)

    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["method"] == "management" and plan["extras_checked"] is True
    assert plan["counts"]["create"] == len(plan["items"]) and plan["counts"]["conflict"] == 0
    reports = next(i for i in plan["items"] if i["kind"] == "queue" and i["name"] == "c.reports")
    assert reports["desired"]["arguments"]["x-message-ttl"] == 3600000


@PROBE
def test_plan_shows_changes_first_with_the_delay_levels_as_one_line(
    vhost_settings: Settings, tmp_path: Path, flags: list[str]
) -> None:
    file = write(tmp_path, TOPOLOGY)

    fresh = jobsys("topology", "plan", file, *flags, url=vhost_settings.url)
    assert jobsys("topology", "apply", file, url=vhost_settings.url).returncode == 0
    with_new_queue = TOPOLOGY.replace("queues:\n", "queues:\n  c.new: {type: classic}\n")
    changed = write(tmp_path, with_new_queue, "2.yaml")
    only = jobsys("topology", "plan", changed, "--changes-only", *flags, url=vhost_settings.url)

    assert fresh.returncode == 0, fresh.stderr
    lines = fresh.stdout.splitlines()
    assert lines[1] == "changes:"
    assert "  + create the delay levels of 'jobsys' (30 exchanges, 29 queues" in fresh.stdout
    assert "jobsys.wait.0" not in fresh.stdout
    assert only.returncode == 0, only.stderr
    assert "+ create queue c.new" in only.stdout
    assert "unchanged" not in only.stdout and "= " not in only.stdout
