"""The topology and helpers of the scheduler scenarios (``test_scheduler*.py``).

Schedulers run as ``python -m jobsys -v scheduler`` subprocesses (so a test can ``kill -9``
one) or in-process. Their jobs are not run: they pile up in ``st.work``, where the ledger
counts them by job id, so every slot can be checked to have fired exactly once.
"""

from __future__ import annotations

import asyncio
import calendar
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from jobsys.app import App, JobContext
from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology
from jobsys.schedule.status import read_status
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology
from jobsys.topology.schedules import job_id_for
from tests.harness.ledger import Ledger
from tests.harness.worker_subprocess import wait_until

WORK = "st.work"
_REPO_ROOT = str(Path(__file__).resolve().parents[2])


def topology(queue_type: str = "classic", **schedule: Any) -> dict[str, Any]:
    """One work queue and one schedule, ``tick``, firing every second unless told otherwise."""
    tick = {"job_type": "tick", "every": "1s", "payload": {"n": 1}, **schedule}
    return {
        "version": 1,
        "exchanges": {"st.jobs": {"type": "direct"}},
        "queues": {WORK: {"type": queue_type}},
        "bindings": [{"exchange": "st.jobs", "queue": WORK, "routing_key": "w"}],
        "job_types": {"tick": {"exchange": "st.jobs", "routing_key": "w"}},
        "delays": {"queue_type": queue_type},
        "schedules": {"tick": tick},
    }


def write_topology(directory: Path, spec: dict[str, Any] | None = None) -> LoadedTopology:
    file = directory / "topology.yaml"
    file.write_text(yaml.safe_dump(spec or topology()), encoding="utf-8")
    return load_topology(file)


async def apply(settings: Settings, loaded: LoadedTopology) -> None:
    async with BrokerConnection(settings) as connection:
        await apply_topology(connection, loaded)


class SchedulerProcess:
    """``python -m jobsys -v scheduler --topology FILE`` with stderr in a file."""

    def __init__(self, topology_file: Path, stderr_path: Path, url: str) -> None:
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jobsys",
                    "-v",
                    "scheduler",
                    "--topology",
                    str(topology_file),
                ],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "JOBSYS_URL": url, "JOBSYS_HEARTBEAT_S": "5"},
                cwd=_REPO_ROOT,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


async def leader_pid(settings: Settings, loaded: LoadedTopology) -> int | None:
    """The pid of the scheduler that wrote the state last (its name is ``host:pid:tag``)."""
    async with BrokerConnection(settings) as connection:
        state = await read_status(connection, loaded.topology)
    if state is None or state.leader is None:
        return None
    return int(state.leader.name.split(":")[1])


async def wait_for_leader(
    settings: Settings, loaded: LoadedTopology, among: list[SchedulerProcess], timeout_s: float = 30
) -> SchedulerProcess:
    """The copy among ``among`` that leads, once one has written the state."""
    found: list[SchedulerProcess] = []

    async def led() -> bool:
        pid = await leader_pid(settings, loaded)
        found[:] = [p for p in among if p.proc.pid == pid and p.proc.poll() is None]
        return bool(found)

    await wait_until(led, timeout_s, what="a leader among the live schedulers")
    return found[0]


async def sleep_until(wall_s: float) -> None:
    """Sleep until the wall clock reads ``wall_s``."""
    await asyncio.sleep(max(0.0, wall_s - time.time()))


async def slot_ledger(settings: Settings, name: str = "tick") -> tuple[Ledger, list[int]]:
    """A ledger of every job in the work queue, with the slots of schedule ``name`` between
    the first and the last fired expected exactly once each (every second)."""
    ledger = Ledger()
    await ledger.read_queue(settings.url, WORK)
    slots = sorted(
        calendar.timegm(time.strptime(job_id.split("@")[1], "%Y-%m-%dT%H:%M:%SZ"))
        for job_id in ledger.queued
        if job_id.startswith(name + "@")
    )
    assert slots, "no slot fired at all"
    for slot in range(slots[0], slots[-1] + 1):
        ledger.mark(job_id_for(name, slot), "confirmed")
    return ledger, slots


class TickPayload(BaseModel):
    """What a ``tick`` job carries."""

    n: int


app = App()


@app.handler("tick")
async def tick(payload: TickPayload, ctx: JobContext) -> None:
    """Note the job in the file named by ``JOBSYS_TEST_RECORD`` (for the ledger)."""
    if os.environ.get("JOBSYS_TEST_RECORD"):
        _note(f"start {ctx.job_id}\ndone {ctx.job_id}")


def _note(lines: str) -> None:
    with open(os.environ["JOBSYS_TEST_RECORD"], "a", encoding="utf-8") as handle:
        handle.write(lines + "\n")
