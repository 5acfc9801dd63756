"""A failed connect says so: each retry is one line with the password masked, and what waiting
cannot heal (a host name that does not resolve) fails at once with its own error, for a
producer, a worker and the commands alike. No broker is needed: nothing answers here."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jobsys.errors import ConnectionFailed, HostNotFound
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from tests.apps import worker_apps

UNRESOLVABLE = "amqp://app:pa%23ss%2Fw0rd@no-such-host.invalid:5672/v"
SECRETS = ("pa%23ss%2Fw0rd", "pa#ss/w0rd")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _jobsys(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    worker_apps.loaded_topology(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "jobsys", *args, "--topology", str(tmp_path / "topology.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "JOBSYS_CONNECT_DEADLINE_S": "5", **env},
    )


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["dlq", "list", "wt.work"],
        ["publish", "echo", "{}"],
        ["worker", "tests.apps.worker_apps:app"],
    ],
)
def test_a_host_name_that_does_not_resolve_fails_at_once_with_exit_4(
    tmp_path: Path, command: list[str]
) -> None:
    result = _jobsys(tmp_path, *command, JOBSYS_URL=UNRESOLVABLE)
    assert result.returncode == 4, result.stderr
    assert "host name 'no-such-host.invalid' does not resolve" in result.stderr
    assert "connect attempt" not in result.stderr  # not retried
    assert not any(secret in result.stderr + result.stdout for secret in SECRETS)


def test_each_connect_retry_is_one_line_with_the_reason_and_the_password_masked(
    tmp_path: Path,
) -> None:
    url = f"amqp://app:pa%23ss%2Fw0rd@127.0.0.1:{_closed_port()}/v"
    result = _jobsys(tmp_path, "status", JOBSYS_URL=url, JOBSYS_CONNECT_DEADLINE_S="2")
    assert result.returncode == 4, result.stderr
    lines = [line for line in result.stderr.splitlines() if "connect attempt" in line]
    assert len(lines) >= 3
    assert "connect attempt 1 to amqp://app:***@127.0.0.1:" in lines[0]
    assert "Connect call failed" in lines[0]
    assert "next try in 0.5s (giving up after 2s)" in lines[0]
    assert "next try in 1.0s" in lines[1]
    assert not any(secret in result.stderr + result.stdout for secret in SECRETS)


async def test_a_producer_and_a_worker_raise_host_not_found_at_once(tmp_path: Path) -> None:
    from jobsys.consume.worker import Worker

    settings = Settings(url=UNRESOLVABLE, connect_deadline_s=30)
    loaded = worker_apps.loaded_topology(tmp_path)
    with pytest.raises(HostNotFound):
        await Producer(settings, loaded.topology).open()
    with pytest.raises(HostNotFound) as info:
        await Worker(worker_apps.app, loaded, settings).run()
    assert isinstance(info.value, ConnectionFailed)  # still a connection failure for callers
