"""The scheduler from the command line: ``jobsys worker --scheduler`` on several workers fires
each slot once and runs it once; ``jobsys scheduler --app`` refuses a payload the handler's
model refuses, at its position; ``jobsys schedules list|fire``."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

from click.testing import CliRunner

from jobsys.cli import main
from jobsys.settings import Settings
from tests.apps.schedule_apps import (
    SchedulerProcess,
    apply,
    topology,
    wait_for_leader,
    write_topology,
)
from tests.harness.ledger import Ledger
from tests.harness.worker_subprocess import WorkerSubprocess, wait_until

APP = "tests.apps.schedule_apps:app"


def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [*args, "--url", settings.url])
    return result.exit_code, result.stdout, result.stderr


async def test_two_workers_with_the_scheduler_run_every_slot_exactly_once(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = write_topology(tmp_path)
    await apply(vhost_settings, loaded)
    record = tmp_path / "runs.txt"
    env = {"JOBSYS_URL": vhost_settings.url, "JOBSYS_TEST_RECORD": str(record)}
    workers = [
        WorkerSubprocess(APP, Path(loaded.filename), tmp_path / f"w{i}.log", env, ["--scheduler"])
        for i in range(2)
    ]
    try:
        await wait_until(
            lambda: record.exists() and record.read_text().count("done") >= 4, 30, "4 runs"
        )
        leaders = [w for w in workers if "leads" in w.stderr]
        assert len(leaders) == 1
        leaders[0].kill()  # kill -9: the other worker's scheduler takes over
        count = record.read_text().count("done")
        await wait_until(lambda: record.read_text().count("done") >= count + 3, 30, "3 more")
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.signal(signal.SIGTERM)
                await worker.wait_exit()
    ledger = Ledger()
    ledger.read_runs(record)
    slots = sorted(ledger.dones)
    first, last = _second(slots[0]), _second(slots[-1])
    for second in range(first, last + 1):
        ledger.mark(f"tick@{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(second))}", "confirmed")
    result = ledger.check()
    # A slot fired but not yet run when the leading worker died is in the queue, not lost:
    # the ledger counts what the queue still holds.
    await ledger.read_queue(vhost_settings.url, "st.work")
    ledger.check().assert_ok()
    assert len(result.ok) >= 7


def _second(job_id: str) -> int:
    import calendar

    return calendar.timegm(time.strptime(job_id.split("@")[1], "%Y-%m-%dT%H:%M:%SZ"))


def test_a_payload_the_handler_model_refuses_stops_the_scheduler_at_its_position(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = write_topology(tmp_path, topology(payload={"n": "many"}))
    asyncio.run(apply(vhost_settings, loaded))

    code, _, err = cli(vhost_settings, "scheduler", "--topology", loaded.filename, "--app", APP)

    assert code == 2
    assert f"{loaded.filename}:" in err
    assert "schedules.tick.payload" in err
    assert "n" in err


def test_list_and_fire_from_the_command_line(vhost_settings: Settings, tmp_path: Path) -> None:
    loaded = write_topology(tmp_path)
    asyncio.run(apply(vhost_settings, loaded))

    code, out, err = cli(vhost_settings, "schedules", "list", "--topology", loaded.filename)
    assert code == 0, err
    assert "leader: none yet" in out
    assert "every 1s" in out
    code, out, _ = cli(vhost_settings, "schedules", "fire", "tick", "--topology", loaded.filename)
    assert code == 0
    assert out.startswith("tick@manual-")
    code, _, err = cli(
        vhost_settings, "schedules", "fire", "tock\x1b[2J", "--topology", loaded.filename
    )
    assert code == 2
    assert "unknown schedule" in err and "the topology has: tick" in err
    assert "\x1b" not in err
    code, out, _ = cli(vhost_settings, "schedules", "list", "--topology", loaded.filename, "--json")
    assert json.loads(out)["schedules"][0]["name"] == "tick"


def test_a_topology_without_schedules_is_refused_by_the_scheduler(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    spec = topology()
    del spec["schedules"]
    loaded = write_topology(tmp_path, spec)

    code, _, err = cli(vhost_settings, "scheduler", "--topology", loaded.filename)

    assert code == 2
    assert "has no schedules" in err


async def test_a_leading_scheduler_stops_on_sigterm_before_its_next_slot(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = write_topology(tmp_path, topology(every="1h"))
    await apply(vhost_settings, loaded)
    scheduler = SchedulerProcess(Path(loaded.filename), tmp_path / "s.log", vhost_settings.url)
    try:
        await wait_for_leader(vhost_settings, loaded, [scheduler])
        scheduler.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(scheduler.proc.wait, 10)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        scheduler.kill9()
    assert code == 0, f"still running 10s after SIGTERM:\n{scheduler.stderr}"
    assert "scheduler stopped:" in scheduler.stderr
