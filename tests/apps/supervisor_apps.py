"""The app and topology of the supervisor tests (``jobsys worker ... --processes P``).

Handlers append "start <pid> <job id>" and "done <pid> <job id>" to the file named by
``JOBSYS_TEST_RECORD``, so a test sees which worker process ran which job, and how often.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from jobsys.app import App, JobContext

TOPOLOGY_YAML = """\
version: 1
exchanges:
  sv.jobs: {type: direct}
queues:
  sv.work:
    type: classic
    consumer: {concurrency: 4, prefetch: 8}
bindings:
  - {exchange: sv.jobs, queue: sv.work, routing_key: work}
job_types:
  work: {exchange: sv.jobs, routing_key: work, timeout: 60s}
  hog: {exchange: sv.jobs, routing_key: work, timeout: 60s}
"""

WORK = "sv.work"
app = App()
_HELD: list[bytes] = []  # memory the hog handler keeps, as a leak would


def _record(kind: str, job_id: str) -> None:
    with open(os.environ["JOBSYS_TEST_RECORD"], "a", encoding="utf-8") as fh:
        fh.write(f"{kind} {os.getpid()} {job_id}\n")


@app.handler("work")
async def work(payload: dict[str, Any], ctx: JobContext) -> None:
    """Records its start and end around an optional sleep."""
    _record("start", ctx.job_id)
    await asyncio.sleep(float(payload.get("sleep_s", 0)))
    _record("done", ctx.job_id)


@app.handler("hog")
async def hog(payload: dict[str, Any], ctx: JobContext) -> None:
    """Keeps ``mb`` MiB of written (so resident) memory for the life of the process."""
    _record("start", ctx.job_id)
    _HELD.append(b"\x01" * (int(payload["mb"]) << 20))
    await asyncio.sleep(float(payload.get("sleep_s", 0)))
    _record("done", ctx.job_id)


def read_records(path: Path) -> list[tuple[str, int, str]]:
    """The (kind, pid, job id) lines the worker processes wrote."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split(" ")
        if len(parts) == 3:
            records.append((parts[0], int(parts[1]), parts[2]))
    return records
