"""An app for weighted-pool tests in a subprocess: each handler appends its job type to the file
named by $JOBSYS_TEST_RECORD
and takes about 2 ms."""

from __future__ import annotations

import os
import time
from typing import Any

from jobsys.app import App

app = App()


def _record(job_type: str) -> Any:
    # A sync handler (run in a thread): it writes a file, and a job takes about 2 ms.
    def run(payload: Any) -> None:
        with open(os.environ["JOBSYS_TEST_RECORD"], "a", encoding="utf-8") as fh:
            fh.write(job_type + "\n")
        time.sleep(0.002)

    return run


for _job_type in ("urgent", "normal", "bulk"):
    app.handler(_job_type)(_record(_job_type))
