"""What a command connects with: the environment, overridden by the command line, and checked
once, after the overrides (pure: nothing connects)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from jobsys.cli.common import build_settings

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
