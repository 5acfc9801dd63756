"""A worker and a scheduler in one process (``jobsys worker --scheduler``): both start, a stop
request reaches both, and when either ends on its own (a fatal error) the other is stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from jobsys.app import App
from jobsys.consume.worker import Worker
from jobsys.schedule.scheduler import Scheduler


def models_of(app: App) -> Mapping[str, type[BaseModel]]:
    """The payload models of ``app``'s handlers, by job type: the scheduler validates a
    schedule's payload with them before it fires anything."""
    return {spec.job_type: spec.payload_model for spec in app if spec.payload_model is not None}


class WorkerAndScheduler:
    """Runs ``worker`` and ``scheduler`` together until stopped."""

    def __init__(self, worker: Worker, scheduler: Scheduler) -> None:
        self.worker = worker
        self.scheduler = scheduler

    @property
    def graceful(self) -> bool:
        """Whether the worker drained gracefully."""
        return self.worker.graceful

    def request_stop(self) -> None:
        """Stop the scheduler and drain the worker (a second call stops the worker at once)."""
        self.scheduler.request_stop()
        self.worker.request_stop()

    async def run(self) -> Any:
        """Serve both; the first error either raises is raised once both have ended."""
        tasks = [
            asyncio.ensure_future(self.worker.run()),
            asyncio.ensure_future(self.scheduler.run()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.scheduler.request_stop()
            if not self.worker.stopping:
                self.worker.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait(tasks)
        for task in tasks:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return self.worker.stats
