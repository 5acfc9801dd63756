"""The app that ``bench.worker --processes`` runs under ``jobsys worker``: a no-op handler, or
with ``JOBSYS_BENCH_APPEND_TO`` set (``bench.table``), one that appends a line to that file.

Kept in a module of its own, so that a worker process imports nothing of the benchmark.
"""

from __future__ import annotations

import os
from typing import Any

from jobsys.app import App

app = App()
_APPEND_TO = os.environ.get("JOBSYS_BENCH_APPEND_TO")

if _APPEND_TO:
    _lines = open(_APPEND_TO, "a", buffering=1, encoding="ascii")  # noqa: SIM115 - per process

    @app.handler("bench_job")
    async def append_index(payload: Any) -> None:
        """Appends the job's index: the comparison's handler."""
        _lines.write(f"{payload['index']}\n")

else:

    @app.handler("bench_job")
    async def noop(payload: Any) -> None:
        """Does nothing: the benchmark measures jobsys, not the handler."""
        return None
