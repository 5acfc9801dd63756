"""What a command connects with: the environment, overridden by the command line, and checked
once, after the overrides (pure: nothing connects)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from jobsys.cli.common import build_settings, connection_options

INSECURE_URL = "amqps://user:s3cret@broker.example:5671/v?no_verify_ssl=1"


def test_insecure_on_the_command_line_applies_to_a_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBSYS_URL", INSECURE_URL)

    settings = build_settings(None, None, True)

    assert settings.url == INSECURE_URL
    assert settings.insecure_tls is True


def test_a_url_on_the_command_line_replaces_a_bad_one_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBSYS_URL", "amqp://guest:se#cret@127.0.0.1:5672/v")

    settings = build_settings("amqp://guest:guest@127.0.0.1:5672/w", None, False)

    assert settings.vhost == "w"


def test_a_ca_file_on_the_command_line_replaces_a_missing_one_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here", encoding="utf-8")
    monkeypatch.setenv("JOBSYS_URL", "amqps://broker.example/")
    monkeypatch.setenv("JOBSYS_CA_FILE", str(tmp_path / "gone.pem"))

    assert build_settings(None, str(ca), False).ca_file == str(ca)


def test_without_insecure_a_url_that_turns_tls_checks_off_is_still_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBSYS_URL", INSECURE_URL)

    with pytest.raises(click.exceptions.Exit) as caught:
        build_settings(None, None, False)

    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "0 is not in the range 1<=x<=600"),
        ("-5", "-5 is not in the range 1<=x<=600"),
        ("601", "601 is not in the range 1<=x<=600"),
        ("9" * 400, "is not in the range 1<=x<=600"),
        ("abc", "'abc' is not a valid integer"),
        ("1.5", "'1.5' is not a valid integer"),
        ("", "'' is not a valid integer"),
        ("20\x1b[31m", "is not a valid integer"),
        ("1e3", "'1e3' is not a valid integer"),
    ],
)
@pytest.mark.parametrize("command", [["worker", "x:app"], ["status"], ["dlq", "list", "q"]])
def test_a_heartbeat_that_cannot_work_is_a_usage_error_before_anything_connects(
    command: list[str], value: str, message: str, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from jobsys.cli import main

    topology = tmp_path / "t.yaml"
    topology.write_text("queues: {}\n")
    result = CliRunner().invoke(main, [*command, "--topology", str(topology), "--heartbeat", value])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "\x1b[31m" not in result.output
    assert "Traceback" not in result.output


def test_the_heartbeat_option_reaches_the_settings_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBSYS_HEARTBEAT_S", "60")
    seen: list[int] = []

    @click.command()
    @connection_options
    def command(url: str | None, ca_file: str | None, insecure: bool) -> None:
        seen.append(build_settings(url, ca_file, insecure).heartbeat_s)

    from click.testing import CliRunner

    assert CliRunner().invoke(command, ["--heartbeat", "7"]).exit_code == 0
    assert CliRunner().invoke(command, []).exit_code == 0
    assert seen == [7, 60]
