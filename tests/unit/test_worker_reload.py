"""``jobsys worker --reload`` without a broker: the child's command, what is watched, and the
errors (no watchfiles, combined with --processes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobsys.cli import main
from jobsys.cli.reload import child_command, run_reloading, watched_paths
from jobsys.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_the_child_runs_the_same_command_without_reload() -> None:
    argv = ["worker", "app:app", "--topology", "t.yaml", "--reload", "--grace", "5s"]
    assert child_command(argv) == [
        sys.executable,
        *("-m", "jobsys", "worker", "app:app", "--topology", "t.yaml", "--grace", "5s"),
    ]


def test_the_topology_directory_is_watched_only_when_it_lies_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "topo").mkdir()
    monkeypatch.chdir(tmp_path / "code")
    assert watched_paths("t.yaml") == [(tmp_path / "code").resolve()]
    assert watched_paths("../topo/t.yaml") == [
        (tmp_path / "code").resolve(),
        (tmp_path / "topo").resolve(),
    ]


def test_without_watchfiles_reload_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'jobsys\[reload\]'"):
        run_reloading(["worker"], "t.yaml", 1.0, print)


def test_reload_with_processes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(
        main,
        [
            *("worker", "jobsys.cli.demo_app:app", "--topology", "topology/example.yaml"),
            *("--reload", "--processes", "2"),
        ],
    )
    assert result.exit_code == 2
    assert "--reload runs one worker process" in result.output


@pytest.mark.parametrize(
    "given",
    [
        ["--url", "amqp://u:s3cret@h:5672/v"],
        ["--url=amqp://u:s3cret@h:5672/v"],
    ],
)
def test_the_childs_command_line_never_carries_the_url(given: list[str]) -> None:
    # A command line is readable by every user of the machine (`ps`); the URL goes through
    # the environment, as it does for the supervisor's children.
    argv = ["worker", "app:app", "--topology", "t.yaml", *given, "--reload", "-v"]
    command = child_command(argv)
    assert command == [
        sys.executable,
        "-m",
        "jobsys",
        "worker",
        "app:app",
        "--topology",
        "t.yaml",
        "-v",
    ]
    assert "s3cret" not in " ".join(command)


def test_reload_hands_the_url_to_the_child_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobsys.cli import reload as reload_module

    seen: dict[str, object] = {}

    def fake_run(argv: list[str], topology_file: str, grace_s: float, echo: object) -> int:
        seen.update(argv=list(argv), url=os.environ.get("JOBSYS_URL"))
        return 0

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(reload_module, "run_reloading", fake_run)
    monkeypatch.setenv("JOBSYS_URL", "amqp://other@h/")
    result = CliRunner().invoke(
        main,
        [
            *("worker", "jobsys.cli.demo_app:app", "--topology", "topology/example.yaml"),
            *("--url", "amqp://u:s3cret@h:5672/v", "--reload"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen["url"] == "amqp://u:s3cret@h:5672/v"
