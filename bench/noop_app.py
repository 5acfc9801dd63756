"""The app that ``bench.worker --processes`` runs under ``jobsys worker``: a no-op handler.

Kept in a module of its own, so that a worker process imports nothing of the benchmark.
"""

from __future__ import annotations

from typing import Any

from jobsys.app import App

app = App()


@app.handler("bench_job")
async def noop(payload: Any) -> None:
    """Does nothing: the benchmark measures jobsys, not the handler."""
    return None
