"""The app of the follow-up crash test, run by ``jobsys worker --queue fu.work``.

``parent`` records "start <id>", holds three follow-ups of type ``child`` (whose queue no
worker consumes) and records "done <id>" in the file named by ``JOBSYS_TEST_RECORD``. With
``JOBSYS_TEST_KILL=1`` the app's publish middleware kills its own process with SIGKILL right
after the third follow-up was confirmed: after the confirms, before the parent's ack.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from jobsys.app import App, JobContext
from jobsys.publish.prepare import JobRequest

TOPOLOGY_YAML = """\
version: 1
exchanges:
  fu.jobs: {type: direct}
queues:
  fu.work: {type: classic}
  fu.next: {type: classic}
bindings:
  - {exchange: fu.jobs, queue: fu.work, routing_key: work}
  - {exchange: fu.jobs, queue: fu.next, routing_key: next}
job_types:
  parent: {exchange: fu.jobs, routing_key: work, timeout: 30s}
  child: {exchange: fu.jobs, routing_key: next, timeout: 30s}
"""
WORK, NEXT = "fu.work", "fu.next"
FOLLOW_UPS = 3

app = App()


def _record(line: str) -> None:
    with open(os.environ["JOBSYS_TEST_RECORD"], "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


@app.handler("parent")
async def parent(payload: Any, ctx: JobContext) -> None:
    """Holds three follow-ups."""
    _record(f"start {ctx.job_id}")
    for n in range(FOLLOW_UPS):
        await ctx.publish("child", {"n": n})
    _record(f"done {ctx.job_id}")


@app.publish_middleware
async def kill_after_the_last_confirm(
    request: JobRequest, call_next: Callable[[JobRequest], Awaitable[Any]]
) -> Any:
    """Dies between the follow-ups' confirms and the parent's ack, when asked to."""
    receipt = await call_next(request)
    if os.environ.get("JOBSYS_TEST_KILL") == "1" and str(request.job_id).endswith(f"/{FOLLOW_UPS}"):
        _record(f"confirmed {request.job_id}")
        os.kill(os.getpid(), signal.SIGKILL)
    return receipt
