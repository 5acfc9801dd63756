"""TLS failures say they are TLS failures, and what to do, with exit 4: an untrusted
certificate, a certificate for another host, and ``amqps://`` to a port that does not speak TLS.
The same endpoint with the right CA (or ``--insecure``) connects, so each failure is the one
named and not a broken endpoint.

The endpoint terminates TLS with a certificate made for the test and relays to the shared
broker (``tests/harness/tls_endpoint.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner, Result

from jobsys.broker.connection import START_HINT, BrokerConnection
from jobsys.cli import main
from jobsys.errors import TLSHandshakeFailed
from jobsys.settings import Settings
from tests.harness.tls_endpoint import Certificate, TlsEndpoint, make_certificate

pytestmark = pytest.mark.timeout(120)

TOPOLOGY = """\
version: 1
exchanges: {jobs: {type: direct}}
queues: {work: {type: classic}}
bindings: [{exchange: jobs, queue: work, routing_key: work}]
job_types: {job: {exchange: jobs, routing_key: work}}
"""


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Certificate]:
    directory = tmp_path_factory.mktemp("tls")
    return {
        "local": make_certificate(directory, "local", "DNS:localhost", "IP:127.0.0.1"),
        "other": make_certificate(directory, "other", "DNS:other.example"),
        "name-only": make_certificate(directory, "name-only", "DNS:localhost"),
    }


@pytest.fixture
def endpoint(certificates: dict[str, Certificate]) -> Iterator[dict[str, TlsEndpoint]]:
    """One TLS endpoint per certificate, each relaying to the shared broker."""
    port = urlsplit(Settings.from_env().url).port or 5672
    endpoints = {name: TlsEndpoint(cert, port).start() for name, cert in certificates.items()}
    yield endpoints
    for started in endpoints.values():
        started.stop()


@pytest.fixture
def topology_file(tmp_path: Path) -> str:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY)
    return str(path)


def delays_status(topology_file: str, url: str, *options: str, **env: str) -> Result:
    """``jobsys delays status`` (it connects and reads passively) against ``url``."""
    runner = CliRunner(env={"JOBSYS_CONNECT_DEADLINE_S": "1", **env})
    return runner.invoke(
        main, ["delays", "status", "--topology", topology_file, "--url", url, *options]
    )


def _url(host: str, port: int, vhost_settings: Settings) -> str:
    return f"amqps://guest:guest@{host}:{port}/{urlsplit(vhost_settings.url).path[1:]}"


def _assert_tls_failure(result: Result, *expected: str) -> None:
    assert result.exit_code == 4, result.output
    message = result.stderr
    assert message.startswith("error: TLS handshake with amqps://guest:***@"), message
    for text in expected:
        assert text in message, message
    assert START_HINT not in message and "cannot reach the broker" not in message
    assert "guest:guest" not in result.output


def test_the_endpoint_works_with_the_right_ca(
    endpoint: dict[str, TlsEndpoint],
    certificates: dict[str, Certificate],
    topology_file: str,
    vhost_settings: Settings,
) -> None:
    url = _url("localhost", endpoint["local"].port, vhost_settings)

    result = delays_status(topology_file, url, "--ca-file", str(certificates["local"].cert))

    assert result.exit_code == 0, result.output
    assert "total: 0 jobs waiting" in result.stdout


def test_a_self_signed_certificate_without_its_ca_is_not_trusted_and_says_pass_a_ca_file(
    endpoint: dict[str, TlsEndpoint], topology_file: str, vhost_settings: Settings
) -> None:
    url = _url("localhost", endpoint["local"].port, vhost_settings)

    result = delays_status(topology_file, url)

    _assert_tls_failure(
        result, "certificate is not trusted", "self-signed certificate", "--ca-file"
    )


def test_a_certificate_signed_by_another_ca_is_not_trusted_and_names_the_ca_file_given(
    endpoint: dict[str, TlsEndpoint],
    certificates: dict[str, Certificate],
    topology_file: str,
    vhost_settings: Settings,
) -> None:
    url = _url("localhost", endpoint["local"].port, vhost_settings)
    wrong_ca = str(certificates["other"].cert)

    result = delays_status(topology_file, url, "--ca-file", wrong_ca)

    _assert_tls_failure(result, "certificate is not trusted", f"CA file {wrong_ca}")


@pytest.mark.parametrize(
    ("certificate", "host"),
    [("other", "localhost"), ("name-only", "127.0.0.1")],
    ids=["host-name", "ip-address"],
)
def test_a_certificate_for_another_host_says_the_host_does_not_match(
    endpoint: dict[str, TlsEndpoint],
    certificates: dict[str, Certificate],
    topology_file: str,
    vhost_settings: Settings,
    certificate: str,
    host: str,
) -> None:
    url = _url(host, endpoint[certificate].port, vhost_settings)
    ca = str(certificates[certificate].cert)

    result = delays_status(topology_file, url, "--ca-file", ca)

    _assert_tls_failure(
        result, f"certificate is not valid for {host!r}", "a host name the certificate names"
    )


def test_amqps_to_a_plain_amqp_port_says_the_port_does_not_speak_tls(
    topology_file: str, vhost_settings: Settings
) -> None:
    port = urlsplit(vhost_settings.url).port or 5672
    url = _url("127.0.0.1", port, vhost_settings)

    result = delays_status(topology_file, url)

    _assert_tls_failure(result, f"port {port} does not speak TLS", "usually 5671")


def test_insecure_on_the_command_line_applies_to_no_verify_ssl_in_jobsys_url(
    endpoint: dict[str, TlsEndpoint], topology_file: str, vhost_settings: Settings
) -> None:
    url = _url("localhost", endpoint["local"].port, vhost_settings) + "?no_verify_ssl=1"
    runner = CliRunner(env={"JOBSYS_URL": url, "JOBSYS_CONNECT_DEADLINE_S": "1"})

    refused = runner.invoke(main, ["delays", "status", "--topology", topology_file])
    allowed = runner.invoke(main, ["delays", "status", "--topology", topology_file, "--insecure"])

    assert refused.exit_code == 2 and "--insecure" in refused.stderr, refused.output
    assert allowed.exit_code == 0, allowed.output
    assert "total: 0 jobs waiting" in allowed.stdout


async def test_a_tls_failure_is_not_retried_until_the_connect_deadline(
    endpoint: dict[str, TlsEndpoint], vhost_settings: Settings
) -> None:
    url = _url("localhost", endpoint["local"].port, vhost_settings)  # untrusted: no CA given
    started = time.monotonic()
    with pytest.raises(TLSHandshakeFailed, match="certificate is not trusted"):
        await BrokerConnection(Settings(url=url, connect_deadline_s=20.0)).open()
    # One handshake, not twenty seconds of them: retrying cannot fix a certificate.
    assert time.monotonic() - started < 10
