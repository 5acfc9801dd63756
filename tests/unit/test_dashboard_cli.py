"""``jobsys dashboard``: what it refuses before serving (exit 2, one clear line)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobsys.cli import main

TOPOLOGY = str(Path(__file__).resolve().parents[2] / "topology" / "example.yaml")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--bind", "0.0.0.0:8080"], {}, "give a token"),
        (["--bind", "nonsense"], {}, "--bind must be HOST:PORT"),
        (["--token", "short"], {}, "16 to 512 characters"),
        ([], {"JOBSYS_DASHBOARD_TOKEN": "bad token with spaces"}, "printable ASCII"),
        ([], {"JOBSYS_DASHBOARD_TOKEN": ""}, "token is empty"),
    ],
)
def test_an_unsafe_or_bad_start_is_refused(args: list[str], env: dict[str, str], message: str):
    result = CliRunner().invoke(main, ["dashboard", "--topology", TOPOLOGY, *args], env=env)

    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main, ["dashboard", "--topology", TOPOLOGY, "--bind", f"127.0.0.1:{port}"]
        )

    assert result.exit_code == 2, result.output
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in result.output


def test_metrics_ports_past_the_last_port_are_refused() -> None:
    result = CliRunner().invoke(
        main,
        ["worker", "x:app", "--topology", TOPOLOGY, "--processes", "3", "--metrics-port", "65534"],
    )

    assert result.exit_code == 2
    assert "65534..65536 are needed" in result.output
