"""``jobsys status`` against the real broker, with and without the management API."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from click.testing import CliRunner

from jobsys.broker.connection import BrokerConnection
from jobsys.cli import main
from jobsys.ops.declare import apply_topology
from jobsys.ops.status import QueueStatus, StatusReader, StatusReport
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text
from jobsys.topology.model import DEAD_LETTER_EXCHANGE

TOPOLOGY = """\
version: 1
exchanges:
  jobs: {type: direct}
queues:
  work: {type: classic}
  idle: {type: classic}
bindings:
  - {exchange: jobs, queue: work, routing_key: job}
  - {exchange: jobs, queue: idle, routing_key: idle}
job_types:
  job: {exchange: jobs, routing_key: job}
  nothing: {exchange: jobs, routing_key: idle}
"""


@pytest.fixture
async def broker(vhost_settings: Settings) -> AsyncIterator[tuple[Settings, LoadedTopology]]:
    """A private vhost holding the topology with: 5 jobs in ``work``, 1 in ``work.dead``, 3 in
    the delay levels (two in level 11, one in level 6)."""
    loaded = load_topology_text(TOPOLOGY)
    async with BrokerConnection(vhost_settings) as conn:
        await apply_topology(conn, loaded, use_management=False)
        channel = await conn.channel()
        jobs = await channel.get_exchange("jobs", ensure=False)
        dead = await channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
        for i in range(5):
            await jobs.publish(aio_pika.Message(b"{}", message_id=f"m{i}"), routing_key="job")
        await dead.publish(aio_pika.Message(b"{}", message_id="d"), routing_key="work.dead")
        for i, delay_s in enumerate((3000.0, 3000.0, 100.0)):
            route = loaded.topology.delay_layout.route("work", delay_s)
            exchange = await channel.get_exchange(route.exchange, ensure=False)
            await exchange.publish(
                aio_pika.Message(b"{}", message_id=f"late{i}"), routing_key=route.routing_key
            )
        await channel.close()
    yield vhost_settings, loaded


async def _hold_two(settings: Settings) -> tuple[BrokerConnection, asyncio.Event]:
    """A consumer on ``work`` that holds two deliveries without acking them."""
    conn = await BrokerConnection(settings).open()
    channel = await conn.channel(confirms=False, prefetch=2)
    queue = await channel.get_queue("work", ensure=False)
    held = asyncio.Event()
    seen: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        seen.append(message)
        if len(seen) == 2:
            held.set()

    await queue.consume(hold)
    await asyncio.wait_for(held.wait(), timeout=10)
    return conn, held


def _work(report: StatusReport) -> QueueStatus:
    return next(q for q in report.queues if q.name == "work")


async def test_status_without_management_shows_ready_consumers_dead_letters_and_delays(
    broker: tuple[Settings, LoadedTopology],
) -> None:
    settings, loaded = broker
    holder, _ = await _hold_two(settings)
    reader = StatusReader(settings, loaded.topology, use_management=False)
    try:
        report = await reader.read()
    finally:
        await reader.close()
        await holder.close()
    work = _work(report)
    assert report.source == "amqp"
    assert (work.counts.ready, work.counts.unacked, work.counts.consumers) == (3, None, 1)
    assert work.dead_letter.total == 1
    waiting = {level.name: level.waiting for level in report.delay_levels if level.waiting}
    layout = loaded.topology.delay_layout
    assert waiting == {layout.level_name(11): 2, layout.level_name(6): 1}
    assert report.delayed_total == 3


@pytest.mark.management
async def test_status_with_management_shows_unacked_and_rates(
    broker: tuple[Settings, LoadedTopology],
) -> None:
    settings, loaded = broker
    holder, _ = await _hold_two(settings)
    reader = StatusReader(settings, loaded.topology, use_management=True)
    try:
        # The management API refreshes its statistics every few seconds: wait for the counts.
        deadline = time.monotonic() + 30
        while True:
            report = await reader.read()
            work = _work(report)
            counts = (work.counts.ready, work.counts.unacked, work.counts.consumers)
            if (counts == (3, 2, 1) and report.delayed_total == 3) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        await reader.close()
        await holder.close()
    assert report.source == "management"
    assert counts == (3, 2, 1)
    assert work.dead_letter.total == 1
    assert report.delayed_total == 3
    assert work.counts.rates is not None


async def test_unreachable_management_api_falls_back_to_amqp_and_says_so(
    broker: tuple[Settings, LoadedTopology],
) -> None:
    settings, loaded = broker
    settings = settings.with_overrides(management_url="http://127.0.0.1:1")
    reader = StatusReader(settings, loaded.topology, use_management=True)
    try:
        report = await reader.read()
    finally:
        await reader.close()
    assert report.source == "amqp"
    assert "unreachable" in report.note
    assert _work(report).counts.ready == 5


def test_status_command_prints_the_numbers_and_never_the_password(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    topology_file = tmp_path / "topology.yaml"
    topology_file.write_text(TOPOLOGY)
    loaded = load_topology_text(TOPOLOGY)

    async def fill() -> None:
        async with BrokerConnection(vhost_settings) as conn:
            await apply_topology(conn, loaded, use_management=False)
            channel = await conn.channel()
            jobs = await channel.get_exchange("jobs", ensure=False)
            for i in range(4):
                await jobs.publish(aio_pika.Message(b"{}", message_id=f"m{i}"), routing_key="job")

    asyncio.run(fill())
    result = CliRunner().invoke(
        main,
        [
            "status",
            "--topology",
            str(topology_file),
            "--no-management",
            "--url",
            vhost_settings.url,
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["QUEUE", "READY", "UNACKED", "CONSUMERS", "DEAD-LETTER"]
    assert ["work", "4", "-", "0", "0"] in [line.split() for line in lines]
    assert ["idle", "0", "-", "0", "0"] in [line.split() for line in lines]
    assert "waiting in delay levels: 0 jobs" in result.output
    assert re.search(r"^as of \d\d:\d\d:\d\d UTC$", result.output, re.MULTILINE)
    assert "guest:guest" not in result.output


def test_status_command_names_missing_queues(vhost_settings: Settings, tmp_path: Path) -> None:
    topology_file = tmp_path / "topology.yaml"
    topology_file.write_text(TOPOLOGY)
    result = CliRunner().invoke(
        main, ["status", "--topology", str(topology_file), "--url", vhost_settings.url]
    )
    assert result.exit_code == 0, result.output
    assert "work (missing)" in result.output
    assert "jobsys topology apply" in result.output


def test_status_watch_refreshes_until_ctrl_c_and_exits_cleanly(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    topology_file = tmp_path / "topology.yaml"
    topology_file.write_text(TOPOLOGY)
    command = [
        sys.executable,
        "-m",
        "jobsys",
        "status",
        "--topology",
        str(topology_file),
        "--watch",
        "0.2",
        "--no-management",
        "--url",
        vhost_settings.url,
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        refreshes = 0
        for line in process.stdout:
            refreshes += "; refreshing every 0.2s; Ctrl-C to stop" in line
            if refreshes == 2:
                break
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    assert refreshes == 2


def test_status_watch_json_prints_one_line_per_read_with_the_ready_change(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    topology_file = tmp_path / "topology.yaml"
    topology_file.write_text(TOPOLOGY)
    loaded = load_topology_text(TOPOLOGY)

    async def declare() -> None:
        async with BrokerConnection(vhost_settings) as conn:
            await apply_topology(conn, loaded, use_management=False)

    asyncio.run(declare())
    command = [sys.executable, "-m", "jobsys", "status", "--topology", str(topology_file)]
    command += ["--watch", "0.2", "--json", "--no-management", "--url", vhost_settings.url]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        frames = [json.loads(process.stdout.readline()) for _ in range(3)]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0

    work = [next(q for q in frame["queues"] if q["name"] == "work") for frame in frames]
    assert [frame["source"] for frame in frames] == ["amqp"] * 3
    assert work[0]["ready_change_per_s"] is None  # nothing to compare with yet
    assert work[2]["ready_change_per_s"] == 0.0
    assert work[0]["dead_letter"]["name"] == "work.dead"
    assert len(frames[0]["delay_levels"]) == 29
    assert all(frame["at"].endswith("Z") for frame in frames)
    assert "guest:guest" not in json.dumps(frames)


def test_status_json_and_no_colour_codes_when_not_a_terminal(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    topology_file = tmp_path / "topology.yaml"
    topology_file.write_text(TOPOLOGY)
    args = ["status", "--topology", str(topology_file), "--url", vhost_settings.url]

    table = CliRunner().invoke(main, args, color=False)
    as_json = CliRunner().invoke(main, [*args, "--json"])

    assert table.exit_code == 0 and as_json.exit_code == 0, table.output + as_json.output
    assert "\x1b" not in table.output
    report = json.loads(as_json.output)
    assert {q["name"] for q in report["queues"]} == {"work", "idle"}
    assert report["queues"][0]["exists"] is False  # never applied in this vhost
