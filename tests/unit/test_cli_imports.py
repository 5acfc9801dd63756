"""What `jobsys worker` loads at start-up: the commands' modules are imported on use, so a worker
carries neither the planner, the dashboard, the DLQ browser nor the OpenTelemetry SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click
from click.testing import CliRunner

from jobsys.cli import main

_NOT_FOR_A_WORKER = [
    "jobsys.cli.topology",
    "jobsys.cli.plan_view",
    "jobsys.cli.dashboard",
    "jobsys.cli.dlq",
    "jobsys.cli.demo",
    "jobsys.ops.declare",
    "jobsys.ops.dlq",
    "jobsys.ops.status",
    "opentelemetry.sdk.trace",
    "opentelemetry.sdk.metrics",
]


def _loaded_after(code: str) -> set[str]:
    program = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_the_worker_command_loads_none_of_the_other_commands() -> None:
    loaded = _loaded_after(
        "import click\n"
        "from jobsys.cli import main\n"
        "command = main.get_command(click.Context(main), 'worker')\n"
        "assert command is not None and command.name == 'worker'"
    )
    assert "jobsys.consume.worker" in loaded
    assert sorted(loaded & set(_NOT_FOR_A_WORKER)) == []


def test_every_command_is_listed_and_found() -> None:
    ctx = click.Context(main)
    names = main.list_commands(ctx)
    assert names == sorted(names)
    assert {"topology", "publish", "worker", "dlq", "status", "dashboard"} <= set(names)
    for name in names:
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
    assert main.get_command(ctx, "no-such-command") is None


def test_topology_delete_joins_its_group_and_every_command_takes_v_after_it() -> None:
    topology = main.get_command(click.Context(main), "topology")
    assert isinstance(topology, click.Group)
    assert "delete" in topology.commands
    for name in ("delete", "validate", "apply"):
        options = {opt for param in topology.commands[name].params for opt in param.opts}
        assert "-v" in options, name
    result = CliRunner().invoke(main, ["worker", "--help"])
    assert result.exit_code == 0 and "-v, --verbose" in result.output


def test_an_unknown_command_is_a_usage_error_naming_it() -> None:
    result = CliRunner().invoke(main, ["wrker"])
    assert result.exit_code == 2
    assert "No such command 'wrker'" in result.output
