"""The supervisor's pure parts (restart backoff, crash-loop guard, what a child is told) and its
loop, driven by small stand-in children that need no broker."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from jobsys.cli import main
from jobsys.cli import worker as worker_cli
from jobsys.consume.options import WorkerOptions
from jobsys.process.child import ChildSpec
from jobsys.process.supervisor import (
    Backoff,
    CrashGuard,
    Supervisor,
    SupervisorOptions,
    describe_exit,
)
from jobsys.settings import Settings
from tests.apps import supervisor_apps

pytestmark = pytest.mark.timeout(30)


def test_restart_backoff_doubles_from_one_second_up_to_thirty_and_starts_over_after_reset() -> None:
    backoff = Backoff(1.0, 30.0)

    delays = [backoff.next_delay() for _ in range(7)]
    backoff.reset()

    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.next_delay() == 1


def test_crash_guard_trips_on_the_sixth_crash_within_a_minute_but_not_when_spread_out() -> None:
    guard = CrashGuard(limit=5, window_s=60.0)
    assert [guard.record(t) for t in (0, 10, 20, 30, 40)] == [False] * 5
    assert guard.record(50) is True

    spread = CrashGuard(limit=5, window_s=60.0)
    assert not any(spread.record(t * 15.0) for t in range(20))


def test_exit_descriptions_name_the_signal_that_killed_a_child() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"


def test_a_child_spec_round_trips_through_its_command_line_and_carries_no_url() -> None:
    spec = ChildSpec(
        "pkg.mod:app", "/t/topology.yaml", WorkerOptions(("a", "b"), 3, 6, 12.5, 100), 1
    )

    command = spec.command()

    assert command[:3] == [sys.executable, "-m", "jobsys.process.child"]
    assert ChildSpec.from_json(command[3]) == spec
    assert "amqp" not in " ".join(command)


def test_worker_command_forwards_its_options_to_the_children_and_the_url_through_the_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text(supervisor_apps.TOPOLOGY_YAML, encoding="utf-8")
    seen: dict[str, Any] = {}

    def fake_supervise(spec: ChildSpec, settings: Settings, processes: int, mb: Any) -> int:
        seen.update(spec=spec, url=settings.url, processes=processes, mb=mb)
        return 0

    monkeypatch.setattr(worker_cli, "_supervise", fake_supervise)
    args = ["-v", "worker", "tests.apps.supervisor_apps:app", "--topology", str(topology)]
    args += ["--queue", "sv.work", "--concurrency", "3", "--prefetch", "9", "--grace", "5s"]
    args += ["--processes", "2", "--max-jobs", "50", "--max-memory", "120"]
    args += ["--url", "amqp://u:secret@h:5672/v"]

    result = CliRunner().invoke(main, args)

    assert result.exit_code == 0, result.output
    assert seen["spec"] == ChildSpec(
        "tests.apps.supervisor_apps:app",
        str(topology.resolve()),
        WorkerOptions(("sv.work",), 3, 9, 5.0, 50),
        1,
    )
    assert (seen["url"], seen["processes"], seen["mb"]) == ("amqp://u:secret@h:5672/v", 2, 120)


# -- the loop, with stand-in children ------------------------------------------------------------


@dataclass(frozen=True)
class _ScriptSpec(ChildSpec):
    """A child that runs ``script`` instead of a worker."""

    script: str = ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script]


_REPORT = (
    "import json, os\n"
    "def report(**fields):\n"
    "    os.write(int(os.environ['JOBSYS_SUPERVISOR_FD']), json.dumps(fields).encode() + b'\\n')\n"
)
_FAST = SupervisorOptions(processes=2, restart_initial_s=0.01, restart_max_s=0.02, crash_limit=3)


def _run(script: str, options: SupervisorOptions = _FAST) -> tuple[int, list[str], Supervisor]:
    lines: list[str] = []
    supervisor = Supervisor(
        _ScriptSpec("x:app", "t.yaml", script=_REPORT + script), options, os.environ, lines.append
    )
    return supervisor.run(), lines, supervisor


def test_a_child_starts_with_the_stop_signals_held_back_until_it_has_handlers() -> None:
    # A stop sent while a child still imports must not kill it by the default disposition.
    script = (
        "import signal\n"
        "held = signal.pthread_sigmask(signal.SIG_BLOCK, ())\n"
        "report(outcome='fatal', code=4, error=str(sorted(int(s) for s in held)))\n"
        "raise SystemExit(4)"
    )
    _code, lines, _supervisor = _run(script)
    held = sorted([int(signal.SIGINT), int(signal.SIGTERM)])
    assert [line for line in lines if line.startswith("error:")] == [f"error: {held}"]


def test_children_that_keep_crashing_trip_the_crash_loop_guard_and_the_supervisor_exits_1() -> None:
    code, lines, supervisor = _run("raise SystemExit(7)")

    assert code == 1
    assert any("crashed more than 3 times" in line for line in lines), lines
    # Two children, then restarts, until the fourth crash; a restart still waiting is dropped.
    assert supervisor.tally.started >= 3
    assert supervisor.tally.restarted == supervisor.tally.started - 2


def test_a_fatal_report_stops_every_child_and_is_printed_once_with_its_exit_code() -> None:
    script = (
        "import time\nreport(outcome='fatal', code=4, error='access refused')\nraise SystemExit(4)"
    )

    code, lines, supervisor = _run(script)

    assert code == 4
    assert [line for line in lines if line.startswith("error:")] == ["error: access refused"]
    assert supervisor.tally.started == 2 and supervisor.tally.restarted == 0


def _drains_on_sigterm_having_done(done: int) -> str:
    return (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        f"    report(outcome='stopped', reason='signal', graceful=True, done={done})\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))\n"
        "time.sleep(60)\n"
    )


def test_a_max_memory_below_what_a_new_worker_uses_stops_with_exit_2_instead_of_recycling() -> None:
    # Every child is over 1 MiB from its first instant: recycling them would go on once a
    # second for ever.
    options = SupervisorOptions(processes=2, max_memory_mb=1.0, memory_check_s=0.05)

    code, lines, supervisor = _run(_drains_on_sigterm_having_done(0), options)

    assert code == 2, lines
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "before running any job, above --max-memory 1" in errors[0]
    assert supervisor.tally.recycled == 0 and supervisor.tally.started == 2


def test_a_worker_over_max_memory_after_doing_jobs_is_recycled(tmp_path: Path) -> None:
    options = SupervisorOptions(processes=1, max_memory_mb=1.0, memory_check_s=0.05)
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        code, lines, supervisor = _run(_drains_on_sigterm_having_done(3), options)
    finally:
        timer.cancel()

    assert code == 0, lines
    assert supervisor.tally.recycled >= 1
    assert not [line for line in lines if line.startswith("error:")]


def test_a_crash_is_restarted_and_sigterm_drains_every_child_and_exits_0(tmp_path: Path) -> None:
    marker = tmp_path / "crashed-once"
    script = (
        "import os, signal, sys, time\n"
        f"marker = {str(marker)!r}\n"
        "if not os.path.exists(marker):\n"
        "    open(marker, 'w').close()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "def stop(*_):\n"
        "    report(outcome='stopped', reason='signal', graceful=True, done=2)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        # As jobsys.process.child: a child starts with the stop signals held back.
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        code, lines, supervisor = _run(
            script, SupervisorOptions(processes=2, restart_initial_s=0.1)
        )
    finally:
        timer.cancel()

    assert code == 0, lines
    assert supervisor.tally.restarted >= 1
    assert sum(supervisor.tally.jobs.values()) == 4
    assert lines[-1].startswith("supervisor stopped: ")
    assert json.dumps(lines)  # plain strings only


def test_the_supervisor_program_takes_back_the_spec_and_options_it_was_given() -> None:
    from jobsys.process import supervisor_main

    spec = ChildSpec("pkg.mod:app", "/t/topology.yaml", WorkerOptions(("a",), 3, 6, 12.5, 9), 2)
    options = SupervisorOptions(processes=3, max_memory_mb=120.0)

    command = supervisor_main.command(spec, options)

    assert command[:3] == [sys.executable, "-m", "jobsys.process.supervisor_main"]
    assert ChildSpec.from_json(command[3]) == spec
    assert SupervisorOptions(**json.loads(command[4])) == options
    assert "amqp" not in " ".join(command)


def test_the_supervisor_program_refuses_a_command_line_it_did_not_write(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from jobsys.process import supervisor_main

    assert supervisor_main.main([]) == 2
    assert supervisor_main.main(["{}"]) == 2
    assert capsys.readouterr().err.count("started by jobsys worker") == 2


def test_importing_the_supervisor_program_loads_no_event_loop_app_or_broker_client() -> None:
    # The memory the supervisor saves depends on what its modules import; a fresh interpreter
    # tells (this one has everything loaded already).
    probe = (
        "import sys, jobsys.process.supervisor_main\n"
        "heavy = ('asyncio', 'ssl', 'pydantic', 'aio_pika', 'aiormq', 'click', 'yaml',"
        " 'opentelemetry', 'jobsys.app', 'decimal')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout


def _supervised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str
) -> tuple[Result, dict[str, Any]]:
    """``jobsys worker ... --processes 2 EXTRA`` with the exec replaced by a recorder."""
    topology = tmp_path / "topology.yaml"
    topology.write_text(supervisor_apps.TOPOLOGY_YAML, encoding="utf-8")
    seen: dict[str, Any] = {}

    def record(path: str, argv: list[str], env: dict[str, str]) -> None:
        seen.update(path=path, argv=argv, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(worker_cli.os, "execve", record)
    args = ["worker", "tests.apps.supervisor_apps:app", "--topology", str(topology)]
    args += ["--processes", "2", "--url", "amqp://u:secret@h:5672/v", *extra]
    return CliRunner().invoke(main, args), seen


def test_the_heartbeat_option_reaches_the_supervised_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, seen = _supervised(tmp_path, monkeypatch, "--heartbeat", "7")

    assert result.exit_code == 0, result.output
    assert seen["env"]["JOBSYS_HEARTBEAT_S"] == "7"
    assert seen["env"]["JOBSYS_URL"] == "amqp://u:secret@h:5672/v"
    assert not any("secret" in arg for arg in seen["argv"])


def test_a_queue_not_in_the_topology_is_refused_before_the_supervisor_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, seen = _supervised(tmp_path, monkeypatch, "--queue", "nosuch")

    assert result.exit_code == 2
    assert "queue(s) not in the topology: nosuch" in result.output
    assert not seen


def test_options_too_long_for_a_command_line_are_one_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def too_long(path: str, argv: list[str], env: dict[str, str]) -> None:
        raise OSError(errno.E2BIG, "Argument list too long")

    topology = tmp_path / "topology.yaml"
    topology.write_text(supervisor_apps.TOPOLOGY_YAML, encoding="utf-8")
    monkeypatch.setattr(worker_cli.os, "execve", too_long)
    args = ["worker", "tests.apps.supervisor_apps:app", "--topology", str(topology)]
    result = CliRunner().invoke(main, [*args, "--processes", "2"])

    assert result.exit_code == 2
    assert "cannot start the supervisor (Argument list too long" in result.output
    assert "Traceback" not in result.output
