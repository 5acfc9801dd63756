"""``jobsys worker`` refuses bad arguments before it connects (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from jobsys.cli import main
from tests.apps import worker_apps


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "expected MODULE:OBJECT"),
        ("tests.integration.no_such_module:app", "cannot import"),
        ("tests.apps.worker_apps:PROBE", "is not a jobsys App"),
        ("tests.apps.worker_apps:nothere", "module 'tests.apps.worker_apps' has no"),
    ],
)
def test_worker_command_refuses_a_bad_app_target_with_exit_2(
    tmp_path: Path, target: str, message: str
) -> None:
    worker_apps.loaded_topology(tmp_path)
    result = CliRunner().invoke(
        main, ["worker", target, "--topology", str(tmp_path / "topology.yaml")]
    )
    assert result.exit_code == 2
    assert message in result.output


def test_worker_command_refuses_a_queue_that_is_not_in_the_topology(tmp_path: Path) -> None:
    worker_apps.loaded_topology(tmp_path)
    result = CliRunner().invoke(
        main,
        [
            "worker",
            "tests.apps.worker_apps:app",
            "--topology",
            str(tmp_path / "topology.yaml"),
            "--queue",
            "nope",
        ],
    )
    assert result.exit_code == 2
    assert "queue(s) not in the topology: nope" in result.output
