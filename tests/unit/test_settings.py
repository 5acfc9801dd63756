"""Settings: a password never shows, TLS checks are never silently off, the environment is
read only when asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobsys.errors import ConfigError
from jobsys.settings import DEFAULT_URL, Settings, mask_url

SECRET_URL = "amqp://user:s3cret@broker.example:5672/prod"


def test_the_defaults_point_at_a_local_broker() -> None:
    settings = Settings()

    assert settings.url == DEFAULT_URL == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.vhost == "/"
    assert settings.insecure_tls is False


def test_repr_str_and_masked_url_never_show_the_password() -> None:
    settings = Settings(url=SECRET_URL)

    for shown in (repr(settings), str(settings), settings.masked_url, f"{settings}"):
        assert "s3cret" not in shown
    assert settings.masked_url == "amqp://user:***@broker.example:5672/prod"
    assert repr(settings).startswith("Settings(url='amqp://user:***@broker.example:5672/prod'")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://user:s3cret@host/", "amqp://user:***@host/"),
        ("amqps://user:s3cret@host:5671/v?heartbeat=5", "amqps://user:***@host:5671/v?heartbeat=5"),
        ("amqp://user:s3cret@[::1]:5672/", "amqp://user:***@[::1]:5672/"),
        ("amqp://us%40er:p%3Ass@host/", "amqp://us%40er:***@host/"),
        ("amqp://host/", "amqp://host/"),
        ("amqp://user@host/", "amqp://user@host/"),
        ("amqp://user:s3cret@host:notaport/", "amqp://user:***@host:notaport/"),
        ("amqp://user:s3c@ret@host/", "amqp://user:***@host/"),
        # Malformed (an unbalanced bracket) and still masked, with the rest shown.
        ("amqp://user:s3cret@[::1/", "amqp://user:***@[::1/"),
    ],
)
def test_mask_url_replaces_only_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://host/", "broker URL must start with amqp:// or amqps://, got http://host/"),
        ("amqp:///vhost", "broker URL has no host: amqp:///vhost"),
        (
            "amqp://u:s3cret@host:99999/",
            "broker URL is not valid (Port out of range 0-65535): amqp://u:***@host:99999/",
        ),
        (
            "ftp://u:s3cret@host/",
            "broker URL must start with amqp:// or amqps://, got ftp://u:***@host/",
        ),
    ],
)
def test_a_url_that_cannot_work_is_refused_without_showing_its_password(
    url: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(url=url)

    assert str(caught.value) == message


def test_no_verify_ssl_in_the_url_is_refused_unless_insecure_tls_is_asked_for() -> None:
    url = "amqps://user:s3cret@host/?no_verify_ssl=1"

    with pytest.raises(ConfigError) as caught:
        Settings(url=url)

    assert "no_verify_ssl" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert Settings(url=url, insecure_tls=True).insecure_tls is True


def test_a_ca_file_needs_amqps_and_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here", encoding="utf-8")

    with pytest.raises(ConfigError, match="not amqps://"):
        Settings(url="amqp://host/", ca_file=str(ca))
    with pytest.raises(ConfigError, match="CA file not found"):
        Settings(url="amqps://host/", ca_file=str(tmp_path / "missing.pem"))
    assert Settings(url="amqps://host/", ca_file=str(ca)).ca_file == str(ca)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"connect_timeout_s": 0}, "connect_timeout_s must be a positive number of seconds"),
        ({"publish_timeout_s": -1}, "publish_timeout_s must be a positive number of seconds"),
        ({"connect_deadline_s": float("nan")}, "connect_deadline_s must be a positive number"),
        ({"publish_timeout_s": float("inf")}, "publish_timeout_s must be a positive number"),
        ({"max_payload_bytes": 0}, "max_payload_bytes must be positive"),
        ({"heartbeat_s": 601}, "heartbeat_s must be between 0 and 600"),
        ({"heartbeat_s": -1}, "heartbeat_s must be between 0 and 600"),
    ],
)
def test_limits_that_cannot_work_are_refused(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://host", "/"),
        ("amqp://host/", "/"),
        ("amqp://host/%2F", "/"),
        ("amqp://host/prod", "prod"),
        ("amqp://host/team%2Fa", "team/a"),
    ],
)
def test_the_vhost_is_read_from_the_url_path(url: str, vhost: str) -> None:
    assert Settings(url=url).vhost == vhost


def test_with_overrides_ignores_none_and_still_validates() -> None:
    base = Settings(url=SECRET_URL)

    assert base.with_overrides(url=None, ca_file=None) == base
    assert base.with_overrides(heartbeat_s=5).heartbeat_s == 5
    with pytest.raises(ConfigError):
        base.with_overrides(heartbeat_s=1000)


def test_from_env_reads_only_the_mapping_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSYS_URL", "amqp://from-process-env/")

    settings = Settings.from_env({})

    assert settings.url == DEFAULT_URL


def test_from_env_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBSYS_URL", "amqp://from-process-env/")

    assert Settings.from_env().url == "amqp://from-process-env/"


def test_from_env_parses_every_jobsys_variable(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x", encoding="utf-8")

    settings = Settings.from_env(
        {
            "JOBSYS_URL": "amqps://u:p@host/v?no_verify_ssl=1",
            "JOBSYS_CA_FILE": str(ca),
            "JOBSYS_INSECURE_TLS": "yes",
            "JOBSYS_MANAGEMENT_URL": "http://host:15672",
            "JOBSYS_CONNECT_TIMEOUT_S": "2.5",
            "JOBSYS_PUBLISH_TIMEOUT_S": "7",
            "JOBSYS_HEARTBEAT_S": "15",
            "JOBSYS_MAX_PAYLOAD_BYTES": "2048",
            "UNRELATED": "ignored",
        }
    )

    assert settings.url == "amqps://u:p@host/v?no_verify_ssl=1"
    assert settings.ca_file == str(ca)
    assert settings.insecure_tls is True
    assert settings.management_url == "http://host:15672"
    assert settings.connect_timeout_s == 2.5
    assert settings.publish_timeout_s == 7.0
    assert settings.heartbeat_s == 15
    assert settings.max_payload_bytes == 2048


@pytest.mark.parametrize("value", ["0", "no", "false", ""])
def test_insecure_tls_is_off_unless_clearly_asked_for(value: str) -> None:
    assert Settings.from_env({"JOBSYS_INSECURE_TLS": value}).insecure_tls is False


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("JOBSYS_CONNECT_TIMEOUT_S", "soon"),
        ("JOBSYS_HEARTBEAT_S", "1.5"),
        ("JOBSYS_MAX_PAYLOAD_BYTES", "1MB"),
    ],
)
def test_a_variable_that_is_not_a_number_is_a_config_error_naming_it(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({key: value})

    assert str(caught.value) == f"{key} must be a number, got {value!r}"


def test_a_bad_url_in_the_environment_is_refused_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"JOBSYS_URL": "https://user:s3cret@host/"})

    assert "s3cret" not in str(caught.value)
