"""An in-process worker for a test: started, ready, and always stopped again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from jobsys.app import App
from jobsys.consume.options import WorkerOptions
from jobsys.consume.worker import Worker
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology


@contextlib.asynccontextmanager
async def running_worker(
    app: App,
    topology: LoadedTopology,
    settings: Settings,
    options: WorkerOptions | None = None,
    *,
    ready_timeout_s: float = 15.0,
    stop_timeout_s: float = 30.0,
) -> AsyncIterator[Worker]:
    """Run a ``Worker`` until the block ends, then drain it; a worker that fails to start
    raises its own error here, and one that does not consume in time fails the test."""
    worker = Worker(app, topology, settings, options or WorkerOptions())
    task = asyncio.create_task(worker.run())
    try:
        ready = asyncio.ensure_future(worker.ready.wait())
        await asyncio.wait(
            {ready, task}, timeout=ready_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        ready.cancel()
        if task.done():
            task.result()  # the worker's own start-up error
        assert worker.ready.is_set(), f"worker did not start consuming in {ready_timeout_s:g}s"
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, stop_timeout_s)
