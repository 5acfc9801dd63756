"""``jobsys worker --reload``: edit the app's code (or the topology) while the worker runs, and
the next job runs the new code; the old worker drained first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import load_topology
from tests.apps.worker_apps import apply
from tests.harness.worker_subprocess import wait_until

pytestmark = pytest.mark.timeout(120)

TOPOLOGY = """\
version: 1
exchanges:
  rl.jobs: {type: direct}
queues:
  rl.work: {type: classic}
bindings:
  - {exchange: rl.jobs, queue: rl.work, routing_key: work}
job_types:
  note: {exchange: rl.jobs, routing_key: work, timeout: 10s}
"""
APP = """\
from pathlib import Path
from jobsys import App

app = App()


@app.handler("note")
async def note(payload: dict) -> None:
    with Path("out.txt").open("a") as out:
        out.write("{version} " + payload["n"] + "\\n")
"""


class Output:
    """The reloading worker's stderr, line by line, read in a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stderr is not None
        stream = process.stderr
        self._thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._thread.start()

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)


async def test_an_edited_handler_runs_after_the_worker_reloads(
    tmp_path: Path, vhost_settings: Settings
) -> None:
    (tmp_path / "topology.yaml").write_text(TOPOLOGY)
    (tmp_path / "reload_app.py").write_text(APP.format(version="v1"))
    loaded = load_topology(tmp_path / "topology.yaml")
    await apply(vhost_settings, loaded)
    process = start_reloading(tmp_path, vhost_settings)
    output = Output(process)
    out = tmp_path / "out.txt"
    try:
        await wait_until(lambda: output.count("worker ready") == 1, 30, "the first worker")
        async with Producer(vhost_settings, loaded) as producer:
            await producer.publish("note", {"n": "1"})
            await wait_until(lambda: out.is_file() and "v1 1" in out.read_text(), 15, "job 1")

            (tmp_path / "reload_app.py").write_text(APP.format(version="v2"))
            await wait_until(lambda: output.count("worker ready") == 2, 30, "a second worker")
            # The first worker drained and stopped as for any SIGINT, with its summary.
            assert output.count("reload: reload_app.py changed") == 1
            assert output.count("worker stopped: 1 done") == 1
            await producer.publish("note", {"n": "2"})
            await wait_until(lambda: "v2 2" in out.read_text(), 15, "job 2 on the new code")

            # A change to the topology restarts it too; an unrelated file does not.
            (tmp_path / "notes.txt").write_text("not code")
            (tmp_path / "topology.yaml").write_text(TOPOLOGY + "# touched\n")
            await wait_until(lambda: output.count("worker ready") == 3, 30, "a third worker")
            assert output.count("notes.txt") == 0
        assert out.read_text().splitlines() == ["v1 1", "v2 2"]
    finally:
        stop(process)
    assert process.returncode == 0, "".join(output.lines)


def start_reloading(directory: Path, settings: Settings) -> subprocess.Popen[str]:
    env = dict(os.environ, JOBSYS_URL=settings.url, PYTHONPATH=str(directory))
    command = [sys.executable, "-m", "jobsys", "worker", "reload_app:app"]
    command += ["--topology", "topology.yaml", "--reload", "--grace", "5s"]
    return subprocess.Popen(command, cwd=directory, env=env, stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen[str]) -> None:
    """SIGINT, as Ctrl-C: the parent stops its child and exits 0."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(20)
    finally:
        if process.poll() is None:
            process.kill()
