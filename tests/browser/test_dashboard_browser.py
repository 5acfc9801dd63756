"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, which ``.ci/run`` installs) driven by Selenium, against the real broker with
a real worker. Screenshots of every page go to ``$JOBSYS_ARTIFACT_DIR/dashboard`` (default: the
test's temporary directory; the path is printed).

Outside CI the tests skip, with one line, only when Chromium or its driver is not installed; in
CI (``CI`` set) a missing browser fails them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobsys.app import App
from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text
from tests.harness.running import running_worker
from tests.harness.worker_subprocess import wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOKEN = "browser-test-token-0123456789"
HOSTILE_ID = '<img src=x onerror="window.__pwned=1">evil'
TOPOLOGY = """\
version: 1
exchanges:
  br.jobs: {type: direct}
queues:
  br.work: {type: classic, consumer: {concurrency: 2, prefetch: 4}}
  br.idle: {type: classic}
bindings:
  - {exchange: br.jobs, queue: br.work, routing_key: work}
  - {exchange: br.jobs, queue: br.idle, routing_key: idle}
job_types:
  flaky: {exchange: br.jobs, routing_key: work, timeout: 10s, retry: {max_attempts: 1}}
  parked: {exchange: br.jobs, routing_key: idle}
"""

# Skipped only where nobody asked for the browser; .ci/run sets JOBSYS_REQUIRE_BROWSER=1, so a
# missing browser there fails the run instead of passing it silently.
_REQUIRED = os.environ.get("JOBSYS_REQUIRE_BROWSER") == "1" or bool(os.environ.get("CI"))
if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)) and not _REQUIRED:
    pytest.skip(
        "chromium and chromium-driver are not installed (apt-get install chromium "
        "chromium-driver); .ci/run installs them",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = os.environ.get("JOBSYS_ARTIFACT_DIR")
    folder = Path(base) / "dashboard" if base else tmp_path_factory.mktemp("dashboard-shots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {folder}")
    return folder


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Dashboard:
    """``jobsys dashboard`` in a subprocess, as an operator starts it."""

    def __init__(self, settings: Settings, topology_file: Path, log: Path, token: str | None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "JOBSYS_URL": settings.url}
        env.pop("JOBSYS_DASHBOARD_TOKEN", None)
        if token:
            env["JOBSYS_DASHBOARD_TOKEN"] = token
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jobsys",
                    "dashboard",
                    "--topology",
                    str(topology_file),
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    "--refresh",
                    "1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    async def wait_ready(self) -> None:
        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"dashboard exited:\n{self.log.read_text()}")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        await wait_until(answers, 20, "the dashboard to listen")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Flaky:
    """The worker's app: ``flaky`` fails while ``failing`` is set, and records what ran."""

    def __init__(self) -> None:
        self.failing = True
        self.succeeded: list[str] = []
        self.app = App()

        @self.app.handler("flaky")
        async def flaky(payload: dict[str, Any]) -> None:
            if self.failing:
                raise RuntimeError("flaky failed <b>on purpose</b>")
            self.succeeded.append(payload["tag"])


@pytest.fixture
async def setup(
    vhost_settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[Settings, LoadedTopology, Path]]:
    loaded = load_topology_text(TOPOLOGY, "browser.yaml")
    path = tmp_path / "browser.yaml"
    path.write_text(TOPOLOGY)
    async with BrokerConnection(vhost_settings) as conn:
        await apply_topology(conn, loaded, use_management=False)
    yield vhost_settings, loaded, path


async def _dead_letter(settings: Settings, loaded: LoadedTopology, flaky: Flaky, tags: list[str]):
    """Publish ``tags`` as ``flaky`` jobs and let a real worker dead-letter them all."""
    async with Producer(settings, loaded) as producer:
        for tag in tags:
            job_id = HOSTILE_ID if tag == "hostile" else f"job-{tag}"
            await producer.publish("flaky", {"tag": tag}, job_id=job_id)
    async with running_worker(flaky.app, loaded, settings) as worker:
        await wait_until(lambda: worker.stats.dead_lettered >= len(tags), 20, "dead letters")


def _shot(driver: Any, folder: Path, name: str) -> None:
    driver.save_screenshot(str(folder / f"{name}.png"))


async def _do(call: Any, *args: Any) -> Any:
    # Selenium blocks; the worker in this test needs the event loop meanwhile.
    return await asyncio.to_thread(call, *args)


async def _follow(browser: Any, element: Any) -> None:
    """Click ``element`` and wait until the browser has left the page it was on (a click
    returns before the next page loads)."""
    old = browser.find_element(By.TAG_NAME, "html")
    await _do(element.click)

    def left() -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return browser.execute_script("return document.readyState") == "complete"
        return False

    await wait_until(left, 15, "the next page")


async def test_every_page_loads_in_a_browser_and_a_replayed_job_runs(
    setup: tuple[Settings, LoadedTopology, Path], browser: Any, shots: Path, tmp_path: Path
) -> None:
    settings, loaded, topology_file = setup
    flaky = Flaky()
    await _dead_letter(settings, loaded, flaky, ["one", "two", "hostile"])
    async with Producer(settings, loaded) as producer:
        await producer.publish("parked", {"tag": "waits"}, delay_s=600)
    dashboard = Dashboard(settings, topology_file, tmp_path / "dashboard.log", TOKEN)
    try:
        await dashboard.wait_ready()
        await _do(browser.get, dashboard.url + "/")
        assert "/login" in browser.current_url
        browser.find_element(By.NAME, "token").send_keys(TOKEN)
        await _follow(browser, browser.find_element(By.CSS_SELECTOR, "form.login button"))
        flaky.failing = False
        async with running_worker(flaky.app, loaded, settings):
            for path, name, expect in (
                ("/", "queues", "br.work"),
                ("/workers", "workers", "jobsys worker"),
                ("/delays", "delays", "Waiting in all levels"),
                ("/schedules", "schedules", "This topology has no schedules."),
                ("/jobs", "jobs", "Job history is off"),
                ("/dead-letters", "dead-letters", "br.work.dead"),
                ("/dead-letters/br.work", "dead-letter-queue", "3 jobs in br.work.dead"),
            ):
                await _do(browser.get, dashboard.url + path)
                await wait_until(lambda e=expect: e in browser.page_source, 15, expect)
                _shot(browser, shots, name)
            assert browser.execute_script("return window.__pwned") is None
            assert HOSTILE_ID in browser.find_element(By.ID, "jobs").text  # text, not markup

            link = browser.find_element(By.LINK_TEXT, "job-two")
            await _follow(browser, link)
            assert "flaky failed <b>on purpose</b>" in browser.find_element(By.TAG_NAME, "dl").text
            _shot(browser, shots, "job")
            await _follow(browser, browser.find_element(By.PARTIAL_LINK_TEXT, "Replay this job"))
            browser.find_element(By.NAME, "token").send_keys(TOKEN)
            _shot(browser, shots, "confirm-replay")
            await _follow(browser, browser.find_element(By.ID, "confirm"))
            assert "replayed 1 job to br.work" in browser.find_element(By.ID, "message").text
            _shot(browser, shots, "replayed")
            await wait_until(lambda: flaky.succeeded == ["two"], 20, "the replayed job to run")

        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []  # no CSP violation, no script error
    finally:
        dashboard.stop()


async def test_the_queues_page_updates_live_without_a_reload(
    setup: tuple[Settings, LoadedTopology, Path], browser: Any, shots: Path, tmp_path: Path
) -> None:
    settings, loaded, topology_file = setup
    dashboard = Dashboard(settings, topology_file, tmp_path / "dashboard.log", None)
    try:
        await dashboard.wait_ready()
        await _do(browser.get, dashboard.url + "/")
        browser.execute_script("window.__same_page = 1")

        def ready_idle() -> str:
            # One script, so an htmx swap cannot land between finding the cell and reading it.
            return str(
                browser.execute_script(
                    "const c = document.querySelector('tr[data-queue=\"br.idle\"] td.n');"
                    "return c ? c.textContent : '';"
                )
            )

        async with Producer(settings, loaded) as producer:
            for i in range(7):
                await producer.publish("parked", {"tag": str(i)})
        await wait_until(lambda: ready_idle() == "7", 30, "the live count of br.idle")
        assert browser.execute_script("return window.__same_page") == 1  # htmx, not a reload
        _shot(browser, shots, "queues-live")
    finally:
        dashboard.stop()


async def test_a_purge_without_the_token_is_refused_in_the_browser(
    setup: tuple[Settings, LoadedTopology, Path], browser: Any, shots: Path, tmp_path: Path
) -> None:
    settings, loaded, topology_file = setup
    await _dead_letter(settings, loaded, Flaky(), ["a", "b"])
    guarded = Dashboard(settings, topology_file, tmp_path / "guarded.log", TOKEN)
    open_one = Dashboard(settings, topology_file, tmp_path / "open.log", None)
    try:
        await guarded.wait_ready()
        await open_one.wait_ready()
        # Not logged in: the purge page sends the browser to the login.
        await _do(browser.get, guarded.url + "/dead-letters/br.work/purge")
        assert "/login" in browser.current_url
        browser.find_element(By.NAME, "token").send_keys(TOKEN)
        await _follow(browser, browser.find_element(By.CSS_SELECTOR, "form.login button"))
        assert browser.current_url.endswith("/dead-letters/br.work/purge")
        # Logged in, but the confirmation is sent with a wrong token.
        browser.find_element(By.NAME, "token").send_keys("not-the-token")
        await _follow(browser, browser.find_element(By.ID, "confirm"))
        assert "wrong token: nothing was done" in browser.find_element(By.ID, "message").text
        _shot(browser, shots, "purge-refused")
        # (A resubmitted or forged form is refused too: tests/integration/test_dashboard.py.)
        # A dashboard without a token offers no purge at all.
        await _do(browser.get, open_one.url + "/dead-letters/br.work")
        assert "Replay and purge are off" in browser.page_source
        assert not browser.find_elements(By.PARTIAL_LINK_TEXT, "Purge")
        await _do(browser.get, open_one.url + "/dead-letters/br.work/purge")
        assert "write actions are off" in browser.find_element(By.ID, "message").text
        _shot(browser, shots, "purge-off")
    finally:
        guarded.stop()
        open_one.stop()
    async with BrokerConnection(settings) as conn:
        from jobsys.ops import dlq

        assert await dlq.count(conn, "br.work") == 2
