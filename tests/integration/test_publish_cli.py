"""``jobsys publish`` against the real broker: job ids out, problems by line number, exit 0
only when every job was confirmed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from jobsys.cli import main
from jobsys.settings import Settings
from jobsys.wire.headers import HEADER_JOB_ID
from tests.apps.publishing import TOPOLOGY, declare, drain


@pytest.fixture
def topology_file(vhost_settings: Settings, tmp_path: Path) -> str:
    asyncio.run(declare(vhost_settings))
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(TOPOLOGY), encoding="utf-8")
    return str(path)


def run_cli(settings: Settings, topology_file: str, *args: str, stdin: str | None = None) -> Result:
    # Click >= 8.2 keeps stdout and stderr apart on the result.
    return CliRunner().invoke(
        main,
        ["publish", "--url", settings.url, *args],
        env={"JOBSYS_TOPOLOGY": topology_file},
        input=stdin,
        catch_exceptions=False,
    )


def queued(settings: Settings, queue: str) -> list[tuple[str, dict[str, object], int | None]]:
    messages = asyncio.run(drain(settings, queue))
    return [(str(m.headers[HEADER_JOB_ID]), json.loads(m.body), m.priority) for m in messages]


def test_publishing_one_job_prints_its_id_and_never_the_payload(
    vhost_settings: Settings, topology_file: str
) -> None:
    result = run_cli(
        vhost_settings,
        topology_file,
        "send_email",
        '{"to": "secret@example.com"}',
        "--priority",
        "7",
        "--job-id",
        "cli-1",
        "--header",
        "tenant=acme",
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "cli-1\n"
    assert "secret@example.com" not in result.stdout + result.stderr
    assert queued(vhost_settings, "emails") == [("cli-1", {"to": "secret@example.com"}, 7)]


def test_a_delayed_job_from_the_command_line_goes_through_the_delay_levels(
    vhost_settings: Settings, topology_file: str
) -> None:
    result = run_cli(vhost_settings, topology_file, "send_email", "{}", "--delay", "90s")
    assert result.exit_code == 0, result.stderr
    assert queued(vhost_settings, "emails") == []  # waiting in a delay level


def test_an_unknown_job_type_exits_2_naming_the_known_ones(
    vhost_settings: Settings, topology_file: str
) -> None:
    result = run_cli(vhost_settings, topology_file, "send_fax", "{}")
    assert result.exit_code == 2
    assert "audit_event, send_email, squeeze" in result.stderr


def test_bad_json_and_a_bad_delay_are_usage_errors(
    vhost_settings: Settings, topology_file: str
) -> None:
    assert run_cli(vhost_settings, topology_file, "send_email", "{nope").exit_code == 2
    result = run_cli(vhost_settings, topology_file, "send_email", "{}", "--delay", "soon")
    assert result.exit_code == 2
    assert "not a duration" in result.stderr


def test_a_missing_payload_says_how_to_give_one(
    vhost_settings: Settings, topology_file: str
) -> None:
    result = run_cli(vhost_settings, topology_file, "send_email")
    assert result.exit_code == 2
    assert "give the payload as PAYLOAD_JSON" in result.stderr


def test_a_full_queue_exits_1_with_the_reason(vhost_settings: Settings, topology_file: str) -> None:
    for _ in range(2):
        assert run_cli(vhost_settings, topology_file, "squeeze", "{}").exit_code == 0
    result = run_cli(vhost_settings, topology_file, "squeeze", "{}")
    assert result.exit_code == 1
    assert "queue tiny is full" in result.stderr


def test_a_file_reports_each_failure_by_line_and_exits_1(
    vhost_settings: Settings, topology_file: str, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        '{"to": "a"}\n\n{broken\n{"to": "b"}\n{"to": "c", "x": NaN}\n{"to": "d"}\n',
        encoding="utf-8",
    )
    result = run_cli(vhost_settings, topology_file, "send_email", "--file", str(jobs))
    assert result.exit_code == 1
    assert "line 3: not JSON" in result.stderr
    assert "line 5:" in result.stderr
    assert "3 confirmed, 2 failed" in result.stderr
    printed = result.stdout.split()
    assert len(printed) == 3
    assert sorted(job_id for job_id, _, _ in queued(vhost_settings, "emails")) == sorted(printed)


def test_a_file_where_every_job_is_confirmed_exits_0(
    vhost_settings: Settings, topology_file: str
) -> None:
    lines = "".join(json.dumps({"i": i}) + "\n" for i in range(1200))
    result = run_cli(vhost_settings, topology_file, "audit_event", "--file", "-", stdin=lines)
    assert result.exit_code == 0, result.stderr
    assert "1200 confirmed, 0 failed" in result.stderr
    assert len(result.stdout.split()) == 1200
    assert len(queued(vhost_settings, "audit")) == 1200


def test_wrong_credentials_exit_4_without_showing_the_password(
    vhost_settings: Settings, topology_file: str
) -> None:
    wrong = vhost_settings.with_overrides(
        url=vhost_settings.url.replace("guest:guest", "guest:hunter2")
    )
    result = run_cli(wrong, topology_file, "audit_event", "{}")
    assert result.exit_code == 4
    assert "wrong username or password" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_a_priority_the_queues_cannot_honour_exits_2_and_publishes_nothing(
    vhost_settings: Settings, topology_file: str
) -> None:
    result = run_cli(vhost_settings, topology_file, "squeeze", "{}", "--priority", "5")
    assert result.exit_code == 2
    assert "priority 5 has no effect: queue 'tiny' has no max_priority" in result.stderr
    result = run_cli(vhost_settings, topology_file, "send_email", "{}", "--priority", "255")
    assert result.exit_code == 2
    assert "priority 255 is above max_priority 10 of queue 'emails'" in result.stderr
    assert queued(vhost_settings, "tiny") == [] and queued(vhost_settings, "emails") == []
