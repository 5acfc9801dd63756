"""Commands and connections with no broker to reach: clear errors, exit codes and offline
output (nothing here needs RabbitMQ; port 1 and port 9 have no listener on these machines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobsys.errors import ConnectionFailed
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import load_topology_text
from tests.apps.publishing import TOPOLOGY as PUBLISHING

JOBSYS = str(Path(sys.executable).with_name("jobsys"))

TOPOLOGY = """
version: 1
exchanges:
  c.jobs: {type: topic}
queues:
  c.reports: {type: classic, message_ttl: 1h}
bindings:
  - {exchange: c.jobs, queue: c.reports, routing_key: "report.#"}
job_types:
  build_report: {exchange: c.jobs, routing_key: report.build}
"""


def jobsys(
    *args: str, url: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "JOBSYS_URL": url, **(env or {})}
    return subprocess.run(
        [JOBSYS, *args], capture_output=True, text=True, env=environ, timeout=60, check=False
    )


def write(tmp_path: Path, text: str, name: str = "topology.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def test_an_unreachable_broker_fails_clearly_once_the_connect_deadline_passes() -> None:
    settings = Settings(
        url="amqp://guest:secret@127.0.0.1:1/", connect_deadline_s=1.0, connect_timeout_s=1.0
    )
    topology = load_topology_text(yaml.safe_dump(PUBLISHING)).topology
    with pytest.raises(ConnectionFailed, match="cannot reach the broker") as info:
        await Producer(settings, topology).open()
    assert "secret" not in str(info.value)


def test_unreachable_broker_exits_4_and_says_how_to_start_one(tmp_path: Path) -> None:
    # Port 9 (discard) has no listener on these machines: the connection is refused at once.
    url = "amqp://guest:s3cret-pw@127.0.0.1:9/"

    result = jobsys(
        "topology",
        "plan",
        write(tmp_path, TOPOLOGY),
        url=url,
        env={"JOBSYS_CONNECT_DEADLINE_S": "1"},
    )

    assert result.returncode == 4
    assert "cannot reach the broker at amqp://guest:***@127.0.0.1:9/" in result.stderr
    assert "rabbitmq-server -detached" in result.stderr
    assert "Traceback" not in result.stderr and "s3cret-pw" not in result.stderr


def test_export_writes_definitions_to_stdout_and_to_a_file(tmp_path: Path) -> None:
    file = write(tmp_path, TOPOLOGY)
    out = tmp_path / "definitions.json"

    printed = jobsys("topology", "export", file, "--vhost", "jobs", url="amqp://unused/")
    written = jobsys("topology", "export", file, "-o", str(out), url="amqp://unused/")

    assert printed.returncode == 0 and written.returncode == 0, printed.stderr + written.stderr
    definitions = json.loads(printed.stdout)
    assert definitions["vhosts"] == [{"name": "jobs"}]
    assert {q["name"] for q in definitions["queues"]} >= {"c.reports", "c.reports.dead"}
    assert json.loads(out.read_text())["vhosts"] == [{"name": "/"}]
