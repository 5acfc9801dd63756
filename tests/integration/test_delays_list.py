"""``jobsys delays list``: the jobs waiting in the delay levels with their due times, read
without taking them: they stay, in their order, and arrive as if never read."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import yaml
from click.testing import CliRunner

from jobsys.broker.connection import BrokerConnection
from jobsys.cli import main
from jobsys.ops.delays import peek_levels
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.wire.headers import now_ms
from tests.apps.publishing import TOPOLOGY, declare, wait_for_messages


def run_list(settings: Settings, topology_file: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        main,
        ["delays", "list", "--topology", str(topology_file), "--url", settings.url, *args],
    )
    return result.exit_code, result.stdout, result.stderr


def topology_file(tmp_path: Path) -> Path:
    file = tmp_path / "topology.yaml"
    file.write_text(yaml.safe_dump(TOPOLOGY), encoding="utf-8")
    return file


async def publish_waiting(settings: Settings, moment: datetime) -> LoadedTopology:
    loaded = await declare(settings)
    async with Producer(settings, loaded) as producer:
        await producer.publish("send_email", {}, job_id="in-2s", delay_s=2)
        await producer.publish("send_email", {}, job_id="in-an-hour", delay_s=3600)
        await producer.publish("send_email", {}, job_id="at-five", run_at=moment)
    # A message published past jobsys, with a job id made to forge terminal output.
    route = loaded.topology.delay_layout.route("emails", 600)
    connection = await aio_pika.connect(settings.url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(route.exchange, ensure=False)
        headers = {"jobsys-job-id": "evil\u202e\x1b[2J", "jobsys-due-at-ms": now_ms() + 600_000}
        await exchange.publish(
            aio_pika.Message(b"{}", headers=headers, type="send_email"), route.routing_key
        )
    return loaded


async def peek_then_receive(settings: Settings, loaded: LoadedTopology) -> None:
    async with BrokerConnection(settings) as connection:
        first, more, unreachable = await peek_levels(connection, loaded.topology.delay_layout, 1)
    assert more == {}  # one job per level: none left unread
    assert unreachable == []
    assert {job.job_id for job in first} == {"in-2s", "in-an-hour", "at-five", "evil\u202e\x1b[2J"}
    # Read twice, the job due first still arrives on time, once, not marked redelivered.
    arrived = await wait_for_messages(settings, "emails", 1, timeout_s=10)
    assert [m.headers["jobsys-job-id"] for m in arrived] == ["in-2s"]
    assert not arrived[0].redelivered


def test_waiting_jobs_are_listed_soonest_first_and_still_arrive_unchanged(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    moment = datetime.now(UTC) + timedelta(hours=5)
    loaded = asyncio.run(publish_waiting(vhost_settings, moment))
    file = topology_file(tmp_path)

    code, out, err = run_list(vhost_settings, file, "--json")
    assert code == 0, err
    listed = json.loads(out)["jobs"]
    assert [job["job_id"] for job in listed] == [
        "in-2s",
        "evil\u202e\x1b[2J",
        "in-an-hour",
        "at-five",
    ]
    assert listed[3]["due_at_ms"] == math.ceil(moment.timestamp() * 1000)
    assert {job["queue"] for job in listed} == {"emails"}
    assert "\x1b" not in out  # JSON escapes it
    code, out, _ = run_list(vhost_settings, file)
    assert code == 0
    assert "\x1b" not in out and "\u202e" not in out
    assert "4 jobs waiting" in out
    asyncio.run(peek_then_receive(vhost_settings, loaded))


def test_an_empty_vhost_lists_nothing_and_a_bad_limit_is_a_usage_error(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    asyncio.run(declare(vhost_settings))
    file = topology_file(tmp_path)

    assert run_list(vhost_settings, file)[1].endswith("0 jobs waiting\n")
    assert run_list(vhost_settings, file, "--limit", "0")[0] == 2
