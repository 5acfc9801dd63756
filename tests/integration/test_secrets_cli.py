"""No ``jobsys`` command ever prints the broker or management password: every command is run,
as an operator runs it (a subprocess, the URLs in the environment, ``-vv``), with a password
made of the characters URLs reserve, written three ways:

- unencoded: the URL is refused with a hint to percent-encode (exit 2), never echoed;
- percent-encoded and right: a temporary user of the shared broker has that password, and every
  command connects and does its work (the management API too);
- percent-encoded and wrong: the login is refused (exit 4).

Each command's stdout and stderr are searched for the password as written and as decoded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from jobsys.settings import Settings
from tests.apps.dead_letters import QUEUE, TOPOLOGY, fill_dead_letter_queue
from tests.conftest import MANAGEMENT_URL

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
#: Upper-case runs that no output of jobsys holds on its own (ids are lower-case hex), joined
#: by every character a URL reserves, and '%' (which starts an escape).
PASSWORD = "KQXZ#JVWQ/PZKX?QWJV@XKZQ[VJXW]:QZPK%ZJ"
WRONG_PASSWORD = "JWQX#ZKVP/XQJZ?KWPV@ZQXJ[KPZW]:VXQK%2"


def _fragments(password: str) -> list[str]:
    return re.findall(r"[A-Z]{4,}", password)


APP = """\
from jobsys.app import App, JobContext

app = App()


@app.handler("send_email")
async def send_email(payload: dict, ctx: JobContext) -> None:
    pass


@app.handler("charge_card")
async def charge_card(payload: dict, ctx: JobContext) -> None:
    pass
"""


@dataclass
class Run:
    """One command's outcome."""

    args: list[str]
    code: int | None
    output: str


def _management(method: str, path: str, body: object | None = None) -> None:
    parts = urlsplit(MANAGEMENT_URL)
    request = urllib.request.Request(
        f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "content-type": "application/json",
            "authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


@pytest.fixture
def reserved_user(vhost_settings: Settings) -> Iterator[str]:
    """A user of the shared broker whose password is ``PASSWORD``, allowed everything in the
    test's vhost and the management API (read-only tag)."""
    user = f"jobsys-secret-{uuid.uuid4().hex[:8]}"
    vhost = quote(vhost_settings.vhost, safe="")
    _management("PUT", f"/api/users/{user}", {"password": PASSWORD, "tags": "management"})
    try:
        _management(
            "PUT",
            f"/api/permissions/{vhost}/{user}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
        yield user
    finally:
        try:
            _management("DELETE", f"/api/users/{user}")
        except urllib.error.HTTPError as exc:  # already gone is fine
            if exc.code != 404:
                raise


#: A schedule, so that the scheduler's commands have something to read and fire.
SCHEDULES = """\
schedules:
  hourly: {job_type: send_email, every: 1h}
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "topology.yaml").write_text(TOPOLOGY + SCHEDULES)
    (tmp_path / "secret_app.py").write_text(APP)
    return tmp_path


def _urls(vhost_settings: Settings, user: str, password: str) -> dict[str, str]:
    """JOBSYS_URL and JOBSYS_MANAGEMENT_URL for ``user`` with ``password`` written as is."""
    parts = urlsplit(vhost_settings.url)
    management = urlsplit(MANAGEMENT_URL)
    return {
        "JOBSYS_URL": f"amqp://{user}:{password}@{parts.hostname}:{parts.port or 5672}{parts.path}",
        "JOBSYS_MANAGEMENT_URL": f"http://{user}:{password}@{management.hostname}:"
        f"{management.port or 15672}",
    }


def _commands(job_id: str) -> list[list[str]]:
    """Every jobsys command, with arguments that take it to its settings and connection."""
    demo_topology = str(REPO / "topology" / "example.yaml")
    return [
        ["topology", "validate", "topology.yaml"],
        ["topology", "route", "topology.yaml", "send_email"],
        ["topology", "export", "topology.yaml"],
        ["topology", "plan", "topology.yaml"],
        ["topology", "apply", "topology.yaml"],
        ["publish", "send_email", "{}", "--topology", "topology.yaml"],
        ["worker", "secret_app:app", "--topology", "topology.yaml", "--max-jobs", "1"],
        ["dlq", "list", QUEUE, "--topology", "topology.yaml"],
        ["dlq", "show", QUEUE, job_id, "--topology", "topology.yaml"],
        ["dlq", "replay", QUEUE, "--topology", "topology.yaml"],
        ["dlq", "purge", QUEUE, "--yes", "--topology", "topology.yaml"],
        ["delays", "status", "--topology", "topology.yaml"],
        ["status", "--topology", "topology.yaml"],
        ["demo", "--topology", demo_topology],
        ["delays", "list", "--topology", "topology.yaml"],
        ["delays", "retire"],
        ["schedules", "list", "--topology", "topology.yaml"],
        ["schedules", "fire", "hourly", "--topology", "topology.yaml"],
        ["jobs", "cancel", job_id, "--topology", "topology.yaml"],
        ["topology", "delete", "topology.yaml", "--yes", "--force"],  # last: it deletes
    ]


def _run(workdir: Path, urls: dict[str, str], args: list[str]) -> Run:
    env = {name: value for name, value in os.environ.items() if name != "JOBSYS_TOPOLOGY"}
    env.update(urls, JOBSYS_CONNECT_DEADLINE_S="5", PYTHONPATH=str(workdir))
    done = subprocess.run(
        [sys.executable, "-m", "jobsys", "-vv", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        timeout=120,
    )
    output = (done.stdout + done.stderr).decode("utf-8", "backslashreplace")
    return Run(args, done.returncode, output)


def _assert_no_password(run: Run, *passwords: str) -> None:
    shown = " ".join(run.args)
    for password in passwords:
        for written in (password, quote(password, safe=""), quote(password)):
            assert written not in run.output, f"`jobsys {shown}` printed the password"
    for fragment in (part for password in passwords for part in _fragments(password)):
        assert fragment not in run.output, f"`jobsys {shown}` printed part of the password"
    # A crash starts a line; `dlq show` prints a dead-lettered job's traceback indented.
    crashed = re.search(r"^Traceback", run.output, re.MULTILINE)
    assert crashed is None, f"`jobsys {shown}` crashed:\n{run.output}"


def test_every_command_refuses_an_unencoded_reserved_password_without_printing_it(
    vhost_settings: Settings, workdir: Path
) -> None:
    urls = _urls(vhost_settings, "guest", PASSWORD)

    for args in _commands("some-job"):
        run = _run(workdir, urls, args)

        _assert_no_password(run, PASSWORD)
        if args[:2] in (["topology", "validate"], ["topology", "route"]):
            assert run.code == 0, run.output  # offline: the URL is not even read
        else:
            assert run.code == 2, run.output
            assert "percent-encode" in run.output, run.output


@pytest.mark.management
def test_every_command_connects_with_a_percent_encoded_reserved_password_and_never_prints_it(
    vhost_settings: Settings, workdir: Path, reserved_user: str
) -> None:
    urls = _urls(vhost_settings, reserved_user, quote(PASSWORD, safe=""))
    [job_id] = asyncio.run(fill_dead_letter_queue_after_apply(workdir, urls, vhost_settings))

    runs = [_run(workdir, urls, args) for args in _commands(job_id)]

    for run in runs:
        _assert_no_password(run, PASSWORD)
        assert run.code == 0, f"jobsys {' '.join(run.args)}:\n{run.output}"
    by_command = {" ".join(run.args[:2]): run.output for run in runs}
    # The management API was reached with the decoded password, not merely skipped.
    assert "via the management API" in by_command["topology plan"]
    assert "from the management API at http://" in by_command["status --topology"]
    assert f"job id:       {job_id}" in by_command["dlq show"]
    assert "replayed 1 job to work" in by_command["dlq replay"]


async def fill_dead_letter_queue_after_apply(
    workdir: Path, urls: dict[str, str], vhost_settings: Settings
) -> list[str]:
    """Apply the topology as the reserved user (proving the URL works before the commands
    run) and plant one dead-lettered job."""
    applied = _run(workdir, urls, ["topology", "apply", "topology.yaml"])
    assert applied.code == 0, applied.output
    return await fill_dead_letter_queue(vhost_settings, 1)


@pytest.mark.management
def test_every_command_refuses_a_wrong_percent_encoded_password_without_printing_either(
    vhost_settings: Settings, workdir: Path, reserved_user: str
) -> None:
    urls = _urls(vhost_settings, reserved_user, quote(WRONG_PASSWORD, safe=""))

    for args in _commands("some-job"):
        run = _run(workdir, urls, args)

        _assert_no_password(run, PASSWORD, WRONG_PASSWORD)
        if args[:2] in (["topology", "validate"], ["topology", "route"], ["topology", "export"]):
            assert run.code == 0, run.output  # offline: export reads only the URL's vhost
        else:
            assert run.code == 4, run.output
            assert "refused the login" in run.output, run.output


# -- the commands that serve until stopped ------------------------------------------------------

#: Pages of the dashboard that read the broker, each fetched once.
DASHBOARD_PAGES = [
    "/",
    "/workers",
    "/delays",
    "/dead-letters",
    f"/dead-letters/{QUEUE}",
    "/schedules",
]


def _free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return int(listener.getsockname()[1])


def _serve(workdir: Path, urls: dict[str, str], args: list[str], ready: str) -> tuple[Run, str]:
    """Run a command that serves until stopped: wait for ``ready`` in its output (or its exit),
    fetch the dashboard's pages when it is the dashboard, then stop it with SIGTERM. Returns the
    run and the pages' HTML."""
    env = {name: value for name, value in os.environ.items() if name != "JOBSYS_TOPOLOGY"}
    env.update(urls, JOBSYS_CONNECT_DEADLINE_S="5", PYTHONPATH=str(workdir))
    out = workdir / f"{args[0]}.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "jobsys", "-vv", *args],
            cwd=workdir,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        pages = []
        try:
            deadline = time.monotonic() + 30
            while process.poll() is None and ready not in out.read_text(errors="replace"):
                assert time.monotonic() < deadline, out.read_text(errors="replace")
                time.sleep(0.1)
            if process.poll() is None and args[0] == "dashboard":
                base = f"http://{args[args.index('--bind') + 1]}"
                _wait_for_listener(args[args.index("--bind") + 1])
                for path in DASHBOARD_PAGES:
                    try:
                        with urllib.request.urlopen(base + path, timeout=30) as response:
                            pages.append(response.read().decode("utf-8", "backslashreplace"))
                    except urllib.error.HTTPError as exc:
                        pages.append(exc.read().decode("utf-8", "backslashreplace"))
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                code: int | None = process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                code = None  # a leading scheduler waits for its next slot (xfail elsewhere)
        finally:
            process.kill()
            process.wait()
    return Run(args, code, out.read_text(errors="backslashreplace")), "\n".join(pages)


def _wait_for_listener(bind: str) -> None:
    """The dashboard says where it listens just before it does."""
    host, port = bind.rsplit(":", 1)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {bind}"
            time.sleep(0.1)


def _serving(port: int) -> list[tuple[list[str], str]]:
    return [
        (["scheduler", "--topology", "topology.yaml"], "scheduler"),
        (
            ["dashboard", "--topology", "topology.yaml", "--bind", f"127.0.0.1:{port}"],
            "dashboard on http://",
        ),
    ]


@pytest.mark.management
def test_the_scheduler_and_the_dashboard_never_print_or_serve_the_password(
    vhost_settings: Settings, workdir: Path, reserved_user: str
) -> None:
    right = _urls(vhost_settings, reserved_user, quote(PASSWORD, safe=""))
    applied = _run(workdir, right, ["topology", "apply", "topology.yaml"])
    assert applied.code == 0, applied.output
    forms = {
        "unencoded": _urls(vhost_settings, reserved_user, PASSWORD),
        "wrong": _urls(vhost_settings, reserved_user, quote(WRONG_PASSWORD, safe="")),
        "right": right,
    }
    for form, urls in forms.items():
        for args, ready in _serving(_free_port()):
            run, pages = _serve(workdir, urls, args, ready)
            _assert_no_password(run, PASSWORD, WRONG_PASSWORD)
            _assert_no_password(Run(args, run.code, pages), PASSWORD, WRONG_PASSWORD)
            if form == "unencoded":
                assert run.code == 2 and "percent-encode" in run.output, run.output
            elif args[0] == "scheduler" and form == "wrong":
                assert run.code == 4 and "refused the login" in run.output, run.output
            elif args[0] == "dashboard":
                # Serving, and each page says what the broker answered.
                assert pages.count("<html") >= 2, pages
                if form == "wrong":
                    assert "refused the login" in pages, pages
                else:
                    assert "refused the login" not in pages and "work.dead" in pages, pages
            else:
                assert ready in run.output and "Traceback" not in run.output, run.output
