"""``jobsys dlq`` and ``jobsys delays status`` against a real broker, as a person runs them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from jobsys.broker.connection import BrokerConnection
from jobsys.cli import main
from jobsys.settings import Settings
from tests.apps.dead_letters import (
    DLQ,
    QUEUE,
    SECRET,
    TOPOLOGY,
    apply,
    drain,
    fill_dead_letter_queue,
    job_ids,
)


@pytest.fixture
def topology_file(tmp_path: Path) -> str:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY)
    return str(path)


def jobsys(settings: Settings, *args: str) -> Result:
    """Run ``jobsys ARGS`` against ``settings``' broker."""
    return CliRunner().invoke(main, [*args, "--url", settings.url], catch_exceptions=False)


def test_list_shows_the_failure_of_each_job_but_never_its_body(
    vhost_settings: Settings, topology_file: str
) -> None:
    asyncio.run(apply(vhost_settings))
    ids = asyncio.run(fill_dead_letter_queue(vhost_settings, 7))

    result = jobsys(vhost_settings, "dlq", "list", QUEUE, "--topology", topology_file)

    assert result.exit_code == 0, result.output
    for job_id in ids:
        assert job_id in result.stdout
    assert "demo_app.CardDeclined" in result.stdout
    assert "card declined" in result.stdout
    assert "2023-11-14 22:13:29" in result.stdout  # the failure time, in UTC
    assert "7 jobs shown; 7 in work.dead" in result.stdout
    assert SECRET not in result.output
    # Listing took nothing away.
    assert job_ids(asyncio.run(drain(vhost_settings, DLQ))) == ids


def test_list_honours_job_type_and_limit(vhost_settings: Settings) -> None:
    asyncio.run(apply(vhost_settings))
    ids = asyncio.run(
        fill_dead_letter_queue(vhost_settings, 20, lambda i: "charge_card" if i % 2 else "x")
    )

    result = jobsys(
        vhost_settings, "dlq", "list", QUEUE, "--job-type", "charge_card", "--limit", "3"
    )

    assert result.exit_code == 0, result.output
    assert [job_id for job_id in ids if job_id in result.stdout] == ids[1:7:2]
    assert "3 jobs of type 'charge_card' shown" in result.stdout


def test_show_prints_every_header_and_the_payload_size_but_not_the_body(
    vhost_settings: Settings,
) -> None:
    asyncio.run(apply(vhost_settings))
    ids = asyncio.run(fill_dead_letter_queue(vhost_settings, 3))

    result = jobsys(vhost_settings, "dlq", "show", QUEUE, ids[1])

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"job id:       {ids[1]}" in out
    assert "payload size: " in out and " bytes" in out
    for header in (
        "jobsys-error-type: demo_app.CardDeclined",
        "jobsys-error-message: card declined",
        "jobsys-traceback:",
        "    Traceback (most recent call last):",
        "jobsys-attempts: 3",
        "jobsys-failed-at-ms: 1700000009000 (2023-11-14 22:13:29 UTC)",
        "jobsys-first-failed-at-ms: 1700000001000",
        "jobsys-original-exchange: jobs",
        "jobsys-original-routing-key: work",
        "jobsys-original-queue: work",
        "jobsys-worker-host: worker-1",
        "x-first-death-reason: rejected",
    ):
        assert header in out
    assert SECRET not in result.output
    assert job_ids(asyncio.run(drain(vhost_settings, DLQ))) == ids


def test_show_of_a_job_that_is_not_there_fails_clearly(vhost_settings: Settings) -> None:
    asyncio.run(apply(vhost_settings))
    asyncio.run(fill_dead_letter_queue(vhost_settings, 2))
    result = jobsys(vhost_settings, "dlq", "show", QUEUE, "no-such-job")
    assert result.exit_code == 1
    assert "job no-such-job is not in work.dead (2 of 2 read)" in result.stderr


def test_replay_puts_jobs_back_with_a_progress_bar_and_a_summary(
    vhost_settings: Settings, topology_file: str
) -> None:
    asyncio.run(apply(vhost_settings))
    ids = asyncio.run(fill_dead_letter_queue(vhost_settings, 40))

    result = jobsys(
        vhost_settings, "dlq", "replay", QUEUE, "--topology", topology_file, "--limit", "15"
    )

    assert result.exit_code == 0, result.output
    assert "replayed 15 jobs to work; 0 did not match and stay; 25 not read" in result.stdout
    assert "replaying" in result.stderr
    assert SECRET not in result.output
    assert job_ids(asyncio.run(drain(vhost_settings, QUEUE))) == ids[:15]
    assert job_ids(asyncio.run(drain(vhost_settings, DLQ))) == ids[15:]


def test_replay_needs_a_topology(vhost_settings: Settings) -> None:
    result = CliRunner(env={"JOBSYS_TOPOLOGY": None}).invoke(
        main, ["dlq", "replay", QUEUE, "--url", vhost_settings.url]
    )
    assert result.exit_code == 2
    assert "--topology" in result.stderr


def test_an_unknown_queue_is_a_clear_error(vhost_settings: Settings, topology_file: str) -> None:
    result = jobsys(vhost_settings, "dlq", "list", "work.dead", "--topology", topology_file)
    assert result.exit_code == 2
    assert "unknown queue 'work.dead'" in result.stderr
    assert "name the work queue, 'work'" in result.stderr

    result = jobsys(vhost_settings, "dlq", "list", "emails")  # no topology: the broker says
    assert result.exit_code == 1
    assert "'emails.dead' does not exist on the broker" in result.stderr


def test_purge_refuses_without_yes_and_deletes_nothing(vhost_settings: Settings) -> None:
    asyncio.run(apply(vhost_settings))
    ids = asyncio.run(fill_dead_letter_queue(vhost_settings, 5))

    refused = jobsys(vhost_settings, "dlq", "purge", QUEUE)
    assert refused.exit_code == 2
    assert "without --yes" in refused.stderr
    assert job_ids(asyncio.run(drain(vhost_settings, DLQ))) == ids

    asyncio.run(fill_dead_letter_queue(vhost_settings, 5))
    purged = jobsys(vhost_settings, "dlq", "purge", QUEUE, "--yes")
    assert purged.exit_code == 0, purged.output
    assert "purged 5 jobs from work.dead" in purged.stdout


def test_delays_status_counts_jobs_per_level_and_flags_missing_levels(
    vhost_settings: Settings, topology_file: str
) -> None:
    missing = jobsys(vhost_settings, "delays", "status", "--topology", topology_file)
    assert missing.exit_code == 0, missing.output
    first_level = missing.stdout.splitlines()[1].split(maxsplit=2)
    assert first_level == ["jobsys.wait.00", "1s", "not declared - run `jobsys topology apply`"]

    asyncio.run(apply(vhost_settings))

    async def publish_delayed() -> None:
        from jobsys.publish.producer import Producer
        from tests.apps.dead_letters import loaded_topology

        async with Producer(vhost_settings, loaded_topology().topology) as producer:
            for delay_s in (100, 100, 300):
                await producer.publish("send_email", {}, delay_s=delay_s)

    asyncio.run(publish_delayed())
    status = jobsys(vhost_settings, "delays", "status", "--topology", topology_file)
    assert status.exit_code == 0, status.output
    lines = {line.split()[0]: line.split()[-1] for line in status.stdout.splitlines()[1:-1]}
    # 100 s = 64 + 32 + 4 and 300 s = 256 + 32 + 8 + 4: each job waits in its highest bit first.
    assert lines["jobsys.wait.06"] == "2"
    assert lines["jobsys.wait.08"] == "1"
    assert "total: 3 jobs waiting in 29 levels" in status.stdout


def test_a_replay_killed_half_way_loses_nothing_and_doubles_at_most_one_batch(
    vhost_settings: Settings, topology_file: str
) -> None:
    asyncio.run(apply(vhost_settings))
    ids = asyncio.run(fill_dead_letter_queue(vhost_settings, 400))
    env = {**os.environ, "JOBSYS_URL": vhost_settings.url, "JOBSYS_TOPOLOGY": topology_file}
    command = [sys.executable, "-m", "jobsys", "dlq", "replay", QUEUE, "--rate", "100"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while asyncio.run(_count(vhost_settings, QUEUE)) < 100:
            assert time.monotonic() < deadline, "the replay did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    # The broker hands back what the killed client held once it notices the closed socket.
    rest = jobsys(vhost_settings, "dlq", "replay", QUEUE, "--topology", topology_file)
    assert rest.exit_code == 0, rest.output

    counts = Counter(job_ids(asyncio.run(drain(vhost_settings, QUEUE))))
    assert set(counts) == set(ids)  # nothing lost
    doubled = [job_id for job_id, n in counts.items() if n > 1]
    assert len(doubled) <= 100  # only jobs caught between confirm and ack (one paced batch)
    assert max(counts.values()) <= 2
    assert asyncio.run(drain(vhost_settings, DLQ)) == []


async def _count(settings: Settings, queue: str) -> int:
    async with BrokerConnection(settings) as connection:
        channel = await connection.channel(confirms=False)
        declared = await channel.declare_queue(queue, passive=True)
        await channel.close()
        return int(declared.declaration_result.message_count or 0)
