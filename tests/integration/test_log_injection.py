"""A worker's log lines cannot be forged by what a job carries: a job id and job type full of
control characters stay on their one line, escaped, as the worker runs, fails and
dead-letters the job (a real worker process, ``-v``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobsys.errors import PayloadValidationError
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.wire.headers import HEADER_ATTEMPT, HEADER_JOB_ID
from tests.apps import worker_apps
from tests.apps.worker_apps import WorkerProcess

pytestmark = pytest.mark.timeout(60)

FORGED = "2099-01-01 00:00:00,000 ERROR jobsys.worker: spoofed"
HOSTILE_ID = f"job\x1b[2J\x1b]0;owned\x07\r\n{FORGED}\x85\u2028end"


async def test_a_job_id_with_control_characters_cannot_forge_a_worker_log_line(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = worker_apps.loaded_topology(tmp_path)
    await worker_apps.apply(vhost_settings, loaded)
    async with Producer(vhost_settings, loaded.topology) as producer:
        # jobsys refuses such a job id up front; a client past jobsys can still send one.
        with pytest.raises(PayloadValidationError, match="contains control characters"):
            await producer.publish("boom", {}, job_id=HOSTILE_ID)
    await worker_apps.publish_raw(
        vhost_settings,
        b"{}",
        type="boom",
        content_encoding="utf-8",
        headers={HEADER_JOB_ID: HOSTILE_ID, HEADER_ATTEMPT: 1},
    )

    worker = WorkerProcess(tmp_path, vhost_settings, "--max-jobs", "1")
    try:
        assert await worker.wait_exit(30) == 0, worker.stderr
    finally:
        worker.kill()

    log = worker.stderr_path.read_bytes().decode("utf-8")
    assert "\x1b" not in log and "\r" not in log and "\x85" not in log and "\u2028" not in log
    assert not [line for line in log.splitlines() if line.startswith(FORGED)]
    [line] = [line for line in log.splitlines() if "dead-lettered to" in line]
    assert "job job\\x1b[2J\\x1b]0;owned\\x07\\r\\n2099-01-01 00:00:00,000 ERROR" in line
    assert "spoofed\\x85\\u2028end (boom) dead-lettered to wt.work.dead" in line
