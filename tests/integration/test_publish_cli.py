"""``jobsys publish`` against the real broker: job ids out, problems by line number, exit 0
only when every job was confirmed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
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


def run_cli(
    settings: Settings, topology_file: str, *args: str, stdin: str | bytes | None = None
) -> Result:
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
    assert "line 3: refused: not JSON" in result.stderr
    assert "line 5:" in result.stderr
    assert "3 confirmed, 2 refused, 0 unknown" in result.stderr
    printed = dict(line.split("\t") for line in result.stdout.splitlines())
    assert sorted(printed) == ["1", "4", "6"]  # each job id with the line it came from
    queued_ids = sorted(job_id for job_id, _, _ in queued(vhost_settings, "emails"))
    assert queued_ids == sorted(printed.values())


def test_a_file_where_every_job_is_confirmed_exits_0(
    vhost_settings: Settings, topology_file: str
) -> None:
    lines = "".join(json.dumps({"i": i}) + "\n" for i in range(1200))
    result = run_cli(vhost_settings, topology_file, "audit_event", "--file", "-", stdin=lines)
    assert result.exit_code == 0, result.stderr
    assert "1200 confirmed, 0 refused, 0 unknown" in result.stderr
    assert sorted(int(line.split("\t")[0]) for line in result.stdout.splitlines()) == list(
        range(1, 1201)
    )
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


def test_a_file_with_a_deeply_nested_line_reports_it_and_still_publishes_the_valid_lines(
    vhost_settings: Settings, topology_file: str, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    deep = "[" * 4000 + "]" * 4000
    deeper = '{"a":' * 100_000 + "1" + "}" * 100_000
    jobs.write_text(f'{{"i": 1}}\n{deep}\n{{"i": 3}}\n{deeper}\n{{"i": 5}}\n', encoding="utf-8")
    result = run_cli(vhost_settings, topology_file, "audit_event", "--file", str(jobs))
    assert result.exit_code == 1, result.stderr
    assert "line 2: refused: not JSON: nested too deeply" in result.stderr
    assert "line 4: refused: not JSON: nested too deeply" in result.stderr
    assert "Traceback" not in result.stderr
    assert "3 confirmed, 2 refused, 0 unknown" in result.stderr
    assert sorted(payload["i"] for _, payload, _ in queued(vhost_settings, "audit")) == [1, 3, 5]


def test_a_file_that_is_not_utf8_reports_the_bad_lines_and_publishes_the_rest(
    vhost_settings: Settings, topology_file: str, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"i": 1}\n{"i": "\xff\xfe"}\n{"i": 3}\r\n{"text": "a\xe2\x80\xa8b"}\n')
    result = run_cli(vhost_settings, topology_file, "audit_event", "--file", str(jobs))
    assert result.exit_code == 1, result.stderr
    assert "line 2: refused: not UTF-8 (byte 7)" in result.stderr
    assert "3 confirmed, 1 refused, 0 unknown" in result.stderr
    payloads = [payload for _, payload, _ in queued(vhost_settings, "audit")]
    # A line separator inside a JSON string (U+2028) does not split the line.
    assert sorted(map(str, payloads)) == sorted(
        map(str, [{"i": 1}, {"i": 3}, {"text": "a\u2028b"}])
    )


def test_stdin_that_is_not_utf8_reports_the_bad_line_by_number(
    vhost_settings: Settings, topology_file: str
) -> None:
    result = run_cli(
        vhost_settings,
        topology_file,
        "audit_event",
        "--file",
        "-",
        stdin=b'{"i": 1}\n\xc3\x28\n',
    )
    assert result.exit_code == 1, result.stderr
    assert "line 2: refused: not UTF-8 (byte 0)" in result.stderr
    assert "1 confirmed, 1 refused, 0 unknown" in result.stderr


def test_a_payload_argument_nested_too_deeply_is_a_usage_error_not_a_traceback(
    vhost_settings: Settings, topology_file: str
) -> None:
    result = run_cli(vhost_settings, topology_file, "audit_event", "[" * 5000 + "]" * 5000)
    assert result.exit_code == 2
    assert "not JSON: nested too deeply" in result.stderr
    assert "Traceback" not in result.stderr
    # Deep but within what JSON readers take: published.
    result = run_cli(vhost_settings, topology_file, "audit_event", "[" * 900 + "]" * 900)
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("CC=other.queue", "'CC' is reserved: RabbitMQ would send a copy"),
        ("bcc=other.queue", "'bcc' is reserved: RabbitMQ would send a copy"),
        ("x-death=1", "'x-death' is reserved"),
        ("jobsys-attempt=9", "'jobsys-attempt' is reserved"),
        ("n" * 200 + "=v", "at most 128 bytes"),
        ("bad\x1bname=v", "control characters"),
    ],
)
def test_a_reserved_or_too_long_header_name_exits_2_with_the_reason(
    vhost_settings: Settings, topology_file: str, header: str, reason: str
) -> None:
    result = run_cli(vhost_settings, topology_file, "audit_event", "{}", "--header", header)
    assert result.exit_code == 2
    assert reason in result.stderr
    assert queued(vhost_settings, "audit") == []


def test_a_header_that_would_fill_a_frame_exits_2_naming_the_limit_and_publishes_nothing(
    vhost_settings: Settings, topology_file: str
) -> None:
    # F1's reproduction: a 130,300-byte header value was confirmed, then looped forever when
    # its job failed, because no retry or dead-letter copy fit one frame.
    result = run_cli(
        vhost_settings, topology_file, "audit_event", "{}", "--header", "big=" + "v" * 130_300
    )
    assert result.exit_code == 2, result.stderr
    assert "the limit is 16384 bytes" in result.stderr
    assert "v" * 100 not in result.stderr
    assert queued(vhost_settings, "audit") == []


@pytest.mark.parametrize("job_id", ["", "two\nlines", "x" * 300])
def test_a_job_id_that_cannot_be_used_exits_2_with_the_reason(
    vhost_settings: Settings, topology_file: str, job_id: str
) -> None:
    result = run_cli(vhost_settings, topology_file, "audit_event", "{}", "--job-id", job_id)
    assert result.exit_code == 2
    assert "job id" in result.stderr
    assert queued(vhost_settings, "audit") == []


@pytest.mark.parametrize(
    "option",
    [
        ("--job-id", "job\x1b]0;owned\x07\r\nforged line"),
        ("--header", "x\x1b[2J\u202e=1"),
    ],
)
def test_a_refused_job_id_or_header_is_shown_escaped_on_one_line(
    vhost_settings: Settings, topology_file: str, option: tuple[str, str]
) -> None:
    result = run_cli(vhost_settings, topology_file, "audit_event", "{}", *option)
    assert result.exit_code == 2, result.stderr
    assert not any(char in result.stderr for char in "\x1b\x07\r\u202e")
    # Each line is jobsys's or click's own: nothing from the value starts a line.
    starts = ("error: ", "Error: ", "Usage: ", "Try ", " ")
    assert all(line.startswith(starts) for line in result.stderr.splitlines() if line)
    assert queued(vhost_settings, "audit") == []


def test_job_lines_carry_their_own_id_priority_delay_and_headers(
    vhost_settings: Settings, topology_file: str, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    lines = [
        {"payload": {"to": "a"}, "job_id": "mine-1", "priority": 9, "headers": {"tenant": "x"}},
        {"payload": {"to": "b"}},
        {"payload": {"to": "c"}, "priority": "high"},
        {"payload": {"to": "d"}, "headers": {"x-death": "1"}},
        {"to": "e"},
        {"payload": {}, "delay": "5 minutes"},
        {"payload": {}, "colour": "red"},
        [1, 2],
        {"payload": {"to": "f"}, "job_id": "mine-2", "delay": "1s"},
    ]
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")

    result = run_cli(
        vhost_settings,
        topology_file,
        "send_email",
        "--file",
        str(jobs),
        "--lines",
        "jobs",
        "--header",
        "source=cli",
    )

    assert result.exit_code == 1
    printed = dict(line.split("\t") for line in result.stdout.splitlines())
    assert sorted(printed) == ["1", "2", "9"]
    assert printed["1"] == "mine-1" and printed["9"] == "mine-2"
    errors = result.stderr
    assert "line 3: refused: 'priority' must be an integer, not a string" in errors
    assert "line 4: refused: header 'x-death' is reserved" in errors
    assert "line 5: refused: a job line needs 'payload'" in errors
    assert "line 6: refused: '5 minutes' is not a duration" in errors
    assert "line 7: refused: unknown key 'colour'" in errors
    assert "line 8: refused: a job line is a JSON object with 'payload', not an array" in errors
    assert "3 confirmed, 6 refused, 0 unknown" in errors
    messages = {
        str(m.headers[HEADER_JOB_ID]): m for m in asyncio.run(drain(vhost_settings, "emails"))
    }
    first = messages["mine-1"]
    assert (json.loads(first.body), first.priority) == ({"to": "a"}, 9)
    assert first.headers["tenant"] == "x" and first.headers["source"] == "cli"
    assert messages[printed["2"]].priority == 3  # the job type's priority
    assert "mine-2" not in messages  # delayed: in the delay levels for a second


def test_publish_json_prints_one_object_per_job(
    vhost_settings: Settings, topology_file: str
) -> None:
    one = run_cli(vhost_settings, topology_file, "send_email", '{"to": "a"}', "--json")
    delayed = run_cli(
        vhost_settings, topology_file, "send_email", "{}", "--delay", "1h30m", "--json"
    )
    many = run_cli(
        vhost_settings,
        topology_file,
        "audit_event",
        "--file",
        "-",
        "--json",
        stdin='{"i": 1}\nnot json\n',
    )

    assert one.exit_code == 0 and delayed.exit_code == 0, one.output + delayed.output
    receipt = json.loads(one.stdout)
    assert receipt["status"] == "confirmed" and receipt["delay_s"] is None
    later = json.loads(delayed.stdout)
    assert later["delay_s"] == 5400 and later["due_at"].endswith("Z")
    assert many.exit_code == 1
    results = sorted(
        (json.loads(line) for line in many.stdout.splitlines()), key=lambda r: r["line"]
    )
    assert [(r["line"], r["status"]) for r in results] == [(1, "confirmed"), (2, "refused")]
    assert results[1]["error"].startswith("not JSON")


def test_a_delayed_job_says_when_it_is_due_on_stderr_and_only_its_id_on_stdout(
    vhost_settings: Settings, topology_file: str
) -> None:
    result = run_cli(vhost_settings, topology_file, "send_email", "{}", "--delay", "90s")

    assert result.exit_code == 0, result.output
    assert len(result.stdout.split()) == 1
    assert result.stderr.startswith("delayed 90s: due about ")
    assert result.stderr.rstrip().endswith(" UTC")


@pytest.mark.parametrize(
    ("option", "value"),
    [("--publish-timeout", "0s"), ("--publish-timeout", "soon"), ("--max-payload-bytes", "0")],
)
def test_publish_limits_from_the_command_line_are_checked(
    vhost_settings: Settings, topology_file: str, option: str, value: str
) -> None:
    result = run_cli(vhost_settings, topology_file, "send_email", "{}", option, value)

    assert result.exit_code == 2, result.output
    assert queued(vhost_settings, "emails") == []


def test_a_payload_over_the_command_line_limit_is_refused(
    vhost_settings: Settings, topology_file: str
) -> None:
    payload = json.dumps({"to": "x" * 100})
    result = run_cli(
        vhost_settings, topology_file, "send_email", payload, "--max-payload-bytes", "50"
    )

    assert result.exit_code == 2
    assert "the limit is 50 bytes" in result.stderr


def test_console_spans_go_to_stderr_so_stdout_stays_the_job_id(
    vhost_settings: Settings, topology_file: str
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobsys",
            "publish",
            "send_email",
            "{}",
            "--url",
            vhost_settings.url,
        ],
        env={**os.environ, "JOBSYS_TOPOLOGY": topology_file, "OTEL_TRACES_EXPORTER": "console"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    [job_id] = done.stdout.split()
    assert '"jobsys.job.id"' in done.stderr and job_id in done.stderr


def test_at_a_moment_ahead_waits_in_the_delay_levels_and_in_the_past_runs_now(
    vhost_settings: Settings, topology_file: str
) -> None:
    ahead = run_cli(
        vhost_settings, topology_file, "send_email", "{}", "--at", "2099-01-01T00:00:00+01:00"
    )
    assert ahead.exit_code == 2  # beyond delays.max_delay: refused, not published
    assert "further off than delays.max_delay" in ahead.stderr
    soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    result = run_cli(vhost_settings, topology_file, "send_email", "{}", "--at", soon)
    assert result.exit_code == 0, result.stderr
    assert queued(vhost_settings, "emails") == []  # waiting in a delay level
    past = run_cli(
        vhost_settings,
        topology_file,
        "send_email",
        "{}",
        "--at",
        "2020-01-01T00:00:00Z",
        "--job-id",
        "late",
    )
    assert past.exit_code == 0, past.stderr
    assert [job_id for job_id, _, _ in queued(vhost_settings, "emails")] == ["late"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2030-01-01T09:00:00", "has no UTC offset"),
        ("tomorrow", "is not an ISO 8601 moment"),
        ("2030-13-01T00:00:00Z", "is not an ISO 8601 moment"),
        ("2030-01-01T00:00:00Z\x1b[2J", "\\x1b"),
    ],
)
def test_at_without_an_offset_or_not_a_moment_is_a_usage_error(
    vhost_settings: Settings, topology_file: str, value: str, expected: str
) -> None:
    result = run_cli(vhost_settings, topology_file, "send_email", "{}", "--at", value)
    assert result.exit_code == 2
    assert expected in result.stderr
    assert "\x1b" not in result.stderr


def test_at_and_delay_together_are_a_usage_error(
    vhost_settings: Settings, topology_file: str
) -> None:
    result = run_cli(
        vhost_settings,
        topology_file,
        "send_email",
        "{}",
        "--at",
        "2030-01-01T00:00:00Z",
        "--delay",
        "5s",
    )
    assert result.exit_code == 2
    assert "either --delay or --at" in result.stderr
