"""``jobsys publish --wait`` against a real broker and worker: the result on stdout, escaped
for the terminal or as JSON, and an exit code for a failed job and for no outcome in time."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from tests.apps import result_apps
from tests.harness.running import running_worker

pytestmark = pytest.mark.timeout(120)


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
async def topology_file(vhost_settings: Settings, tmp_path: Path) -> AsyncIterator[str]:
    loaded: LoadedTopology = result_apps.loaded_topology(tmp_path)
    await result_apps.apply(vhost_settings, loaded)
    result_apps.RELEASE = asyncio.Event()
    async with running_worker(result_apps.app, loaded, vhost_settings):
        yield str(tmp_path / "topology.yaml")
        result_apps.RELEASE.set()


async def publish(settings: Settings, topology_file: str, *args: str) -> Ran:
    env = {**os.environ, "JOBSYS_URL": settings.url, "JOBSYS_TOPOLOGY": topology_file}
    env.pop("NO_COLOR", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobsys",
        "publish",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def test_wait_prints_the_result(vhost_settings: Settings, topology_file: str) -> None:
    ran = await publish(vhost_settings, topology_file, "add", '{"a": 2, "b": 3}', "--wait")
    assert (ran.code, ran.stdout) == (0, "5\n"), ran.stderr
    assert "waiting up to 60s" in ran.stderr


async def test_wait_json_prints_one_object_with_the_result(
    vhost_settings: Settings, topology_file: str
) -> None:
    ran = await publish(vhost_settings, topology_file, "summary", '["x", "y"]', "--wait", "--json")
    assert ran.code == 0, ran.stderr
    printed = json.loads(ran.stdout)
    assert printed["status"] == "succeeded"
    assert printed["job_type"] == "summary"
    assert printed["result"] == {"count": 2, "names": ["x", "y"]}


async def test_a_result_with_control_characters_cannot_act_on_the_terminal(
    vhost_settings: Settings, topology_file: str
) -> None:
    hostile = json.dumps({"t": "\x1b[2J\x1b]0;owned\x07\r\u202eevil\x85"})
    ran = await publish(vhost_settings, topology_file, "echo", hostile, "--wait")
    assert ran.code == 0, ran.stderr
    for char in ("\x1b", "\x07", "\r", "\u202e", "\x85"):
        assert char not in ran.stdout
    as_json = await publish(vhost_settings, topology_file, "echo", hostile, "--wait", "--json")
    assert as_json.stdout.isascii()
    assert json.loads(as_json.stdout)["result"] == json.loads(hostile)


async def test_a_job_that_failed_exits_5_and_says_why(
    vhost_settings: Settings, topology_file: str
) -> None:
    ran = await publish(vhost_settings, topology_file, "refuse", "{}", "--wait")
    assert ran.code == 6
    assert "dead-lettered" in ran.stderr and "Reject" in ran.stderr
    as_json = await publish(vhost_settings, topology_file, "refuse", "{}", "--wait", "--json")
    assert as_json.code == 6
    printed = json.loads(as_json.stdout)
    assert (printed["status"], printed["attempts"], printed["safe_to_resubmit"]) == (
        "failed",
        1,
        False,
    )
    assert printed["error_type"] == "jobsys.errors.Reject"


async def test_no_outcome_in_time_exits_6_and_says_the_job_may_still_run(
    vhost_settings: Settings, topology_file: str
) -> None:
    ran = await publish(vhost_settings, topology_file, "hold", "{}", "--wait", "--timeout", "1s")
    assert ran.code == 7
    assert "may still run" in ran.stderr
    as_json = await publish(
        vhost_settings, topology_file, "hold", "{}", "--wait", "--timeout", "1s", "--json"
    )
    assert as_json.code == 7
    assert json.loads(as_json.stdout)["status"] == "timeout"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("add", "{}", "--timeout", "5s"), "give --wait too"),
        (("add", "{}", "--wait", "--timeout", "0s"), "more than 0s"),
        (("add", "--file", "-", "--wait"), "not --file"),
        (("add", "{}", "--wait", "--timeout", "soon"), "--timeout"),
    ],
)
async def test_wait_options_that_make_no_sense_exit_2(
    vhost_settings: Settings, topology_file: str, args: tuple[str, ...], words: str
) -> None:
    ran = await publish(vhost_settings, topology_file, *args)
    assert ran.code == 2
    assert words in ran.stderr
