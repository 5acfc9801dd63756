"""Apps with lifecycle hooks, run by ``jobsys worker`` in a subprocess.

``JOBSYS_TEST_HOOK`` picks how the startup hook behaves: ``ok`` (opens a "pool" on the state),
``raise``, ``exit`` (``sys.exit``), ``interrupt`` (``KeyboardInterrupt``), ``block`` (a sync
sleep past any test's hook timeout); ``JOBSYS_TEST_SHUTDOWN=raise`` makes the shutdown hook
fail. Hooks and handlers append lines to the file named by ``JOBSYS_TEST_RECORD``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from jobsys.app import App, JobContext, State

TOPOLOGY_YAML = """\
version: 1
exchanges:
  hk.jobs: {type: direct}
queues:
  hk.work:
    type: classic
    consumer: {concurrency: 2, prefetch: 4}
bindings:
  - {exchange: hk.jobs, queue: hk.work, routing_key: work}
job_types:
  use_pool: {exchange: hk.jobs, routing_key: work, timeout: 10s}
"""
WORK = "hk.work"

app = App()


def _record(line: str) -> None:
    with open(os.environ["JOBSYS_TEST_RECORD"], "a", encoding="utf-8") as fh:
        fh.write(f"{line} {os.getpid()}\n")


@app.on_startup
async def open_pool(state: State) -> None:
    """Opens the "pool", or fails the way the test asks."""
    how = os.environ.get("JOBSYS_TEST_HOOK", "ok")
    if how == "raise":
        raise RuntimeError("database at db.invalid:5432 refused the connection")
    if how == "exit":
        sys.exit(3)
    if how == "interrupt":
        raise KeyboardInterrupt
    state.pool = "pool-open"
    _record("startup")


@app.on_startup
def blocking_check() -> None:
    """A sync hook; blocks when asked to."""
    if os.environ.get("JOBSYS_TEST_HOOK") == "block":
        time.sleep(3600)


@app.on_shutdown
def close_pool(state: State) -> None:
    """Closes the "pool", or fails when asked to."""
    _record(f"shutdown {state.pool}")
    if os.environ.get("JOBSYS_TEST_SHUTDOWN") == "raise":
        raise ValueError("pool already closed")


@app.on_shutdown
async def after_close() -> None:
    """Runs even when the hook before it failed."""
    _record("shutdown-after")


@app.handler("use_pool")
async def use_pool(payload: Any, ctx: JobContext) -> None:
    """Records the pool it found on the state."""
    _record(f"job {ctx.job_id} {ctx.state.pool}")
