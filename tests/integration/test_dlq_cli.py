"""``jobsys dlq`` and ``jobsys delays status`` against a real broker, as a person runs them."""

from __future__ import annotations

import asyncio
import json
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
    topology_path,
)


@pytest.fixture
def topology_file(tmp_path: Path) -> str:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY)
    return str(path)


def jobsys(settings: Settings, *args: str) -> Result:
    """Run ``jobsys ARGS`` against ``settings``' broker."""
    env = {"JOBSYS_TOPOLOGY": topology_path()}
    return CliRunner(env=env).invoke(main, [*args, "--url", settings.url], catch_exceptions=False)


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
    assert (
        "job no-such-job is not in work.dead (no id is or starts with it; 2 of 2 read)"
        in result.stderr
    )


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


@pytest.mark.parametrize("command", ["list", "show", "replay", "purge"])
def test_every_dlq_command_needs_a_topology(vhost_settings: Settings, command: str) -> None:
    args = ["dlq", command, QUEUE, *(["some-id"] if command == "show" else [])]
    result = CliRunner(env={"JOBSYS_TOPOLOGY": None}).invoke(
        main, [*args, "--url", vhost_settings.url]
    )
    assert result.exit_code == 2
    assert "--topology" in result.stderr


def test_an_unknown_queue_is_a_clear_error(vhost_settings: Settings, topology_file: str) -> None:
    result = jobsys(vhost_settings, "dlq", "list", "work.dead", "--topology", topology_file)
    assert result.exit_code == 2
    assert "unknown queue 'work.dead'" in result.stderr
    assert "name the work queue, 'work'" in result.stderr

    result = jobsys(vhost_settings, "dlq", "list", QUEUE)  # not applied: the broker says
    assert result.exit_code == 1
    assert "'work.dead' does not exist on the broker" in result.stderr


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
    first_level = missing.stdout.splitlines()[2].split(maxsplit=2)
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


def test_list_and_show_print_json_with_the_payload_only_when_asked(
    vhost_settings: Settings,
) -> None:
    asyncio.run(apply(vhost_settings))
    ids = asyncio.run(fill_dead_letter_queue(vhost_settings, 3))

    listed = jobsys(vhost_settings, "dlq", "list", QUEUE, "--json")
    shown = jobsys(vhost_settings, "dlq", "show", QUEUE, ids[1], "--json")
    with_payload = jobsys(vhost_settings, "dlq", "show", QUEUE, ids[1], "--json", "--payload")

    assert listed.exit_code == shown.exit_code == with_payload.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [row["job_id"] for row in rows] == ids
    assert rows[0]["job_type"] == "send_email" and rows[0]["attempts"] == 3
    assert rows[0]["failed_at"].endswith("Z")
    assert SECRET not in listed.output and SECRET not in shown.output
    assert "payload" not in json.loads(shown.stdout)
    job = json.loads(with_payload.stdout)
    assert json.loads(job["payload"]) == {"secret": SECRET, "n": 1}
    assert job["payload_complete"] is True
    assert job_ids(asyncio.run(drain(vhost_settings, DLQ))) == ids  # nothing moved


def test_show_payload_is_capped_and_escaped(vhost_settings: Settings) -> None:
    asyncio.run(apply(vhost_settings))
    [job_id] = asyncio.run(fill_dead_letter_queue(vhost_settings, 1))

    capped = jobsys(
        vhost_settings, "dlq", "show", QUEUE, job_id, "--payload", "--payload-limit", "10"
    )
    too_big = jobsys(vhost_settings, "dlq", "show", QUEUE, job_id, "--payload-limit", "0")

    assert capped.exit_code == 0, capped.output
    size = len(f'{{"secret": "{SECRET}", "n": 0}}')
    assert f'payload (first 10 of {size} bytes):\n  {{"secret":\n' in capped.stdout
    assert SECRET not in capped.stdout
    assert too_big.exit_code == 2


def test_a_job_id_prefix_picks_one_job_and_an_ambiguous_one_is_refused(
    vhost_settings: Settings,
) -> None:
    asyncio.run(apply(vhost_settings))
    ids = asyncio.run(fill_dead_letter_queue(vhost_settings, 3))

    shown = jobsys(vhost_settings, "dlq", "show", QUEUE, ids[2][:13])
    ambiguous = jobsys(vhost_settings, "dlq", "replay", QUEUE, "--job-id", "")
    replayed = jobsys(vhost_settings, "dlq", "replay", QUEUE, "--job-id", ids[0][:13])

    assert shown.exit_code == 0, shown.output
    assert f"job id:       {ids[2]}" in shown.stdout
    assert ambiguous.exit_code == 2
    assert "starts more than one job id" in ambiguous.stderr
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 job to work" in replayed.stdout
    assert job_ids(asyncio.run(drain(vhost_settings, QUEUE))) == ids[:1]
    assert job_ids(asyncio.run(drain(vhost_settings, DLQ))) == ids[1:]


def test_purge_with_filters_says_how_many_then_deletes_only_those_keeping_order(
    vhost_settings: Settings,
) -> None:
    asyncio.run(apply(vhost_settings))
    ids = asyncio.run(
        fill_dead_letter_queue(
            vhost_settings, 6, lambda i: "charge_card" if i % 2 else "send_email"
        )
    )

    refused = jobsys(vhost_settings, "dlq", "purge", QUEUE, "--job-type", "charge_card")
    purged = jobsys(
        vhost_settings, "dlq", "purge", QUEUE, "--job-type", "charge_card", "--yes", "--json"
    )

    assert refused.exit_code == 2
    assert "refusing to purge 3 matching jobs from work.dead without --yes" in refused.stderr
    assert purged.exit_code == 0, purged.output
    assert json.loads(purged.stdout) == {"queue": QUEUE, "purged": 3}
    assert job_ids(asyncio.run(drain(vhost_settings, DLQ))) == ids[0::2]
