"""An app for max_running tests in a subprocess: ``render`` appends "start <job id>" to the file
named by $JOBSYS_TEST_RECORD, then sleeps ``payload["sleep_s"]``."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jobsys.app import App, JobContext

app = App()


@app.handler("render")
async def render(payload: dict[str, Any], ctx: JobContext) -> None:
    line = f"start {ctx.job_id}\n"
    await asyncio.to_thread(_append, os.environ["JOBSYS_TEST_RECORD"], line)
    await asyncio.sleep(float(payload.get("sleep_s", 0)))


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
