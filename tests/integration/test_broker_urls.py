"""A list of broker URLs against real sockets: whatever the shuffle, a client given dead nodes,
a node that is no RabbitMQ and a silent one next to the shared broker ends up on the broker and
says so; given only nodes that do not answer, it fails within a bounded time with one error
naming each node, its password masked. The commands read the list from ``JOBSYS_URL``."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.errors import ConnectionFailed
from jobsys.ops.declare import apply_topology
from jobsys.publish.producer import Producer
from jobsys.schedule.scheduler import Scheduler
from jobsys.settings import Settings
from tests.apps import schedule_apps, worker_apps

SECRET = "pa%23ss%2Cw0rd"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def url_at(port: int, password: str = SECRET, vhost: str = "/") -> str:
    path = "/" if vhost == "/" else f"/{vhost}"
    return f"amqp://app:{password}@127.0.0.1:{port}{path}"


def with_vhost_path(url: str, settings: Settings) -> str:
    """``url``'s node with the vhost path ``settings`` use."""
    parts = urlsplit(settings.urls[0])
    return urlunsplit(("amqp", urlsplit(url).netloc, parts.path, "", ""))


async def _answer_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(8)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


async def _say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the client gives up


@pytest.fixture
async def impostors() -> AsyncIterator[tuple[int, int]]:
    """Two ports that accept TCP and are no RabbitMQ: one answers HTTP, one says nothing."""
    http = await asyncio.start_server(_answer_http, "127.0.0.1", 0)
    silent = await asyncio.start_server(_say_nothing, "127.0.0.1", 0)
    try:
        yield (http.sockets[0].getsockname()[1], silent.sockets[0].getsockname()[1])
    finally:
        for server in (http, silent):
            server.close()


@pytest.mark.parametrize("attempt", range(4))
async def test_a_client_finds_the_live_broker_among_dead_nodes_and_impostors(
    vhost_settings: Settings, impostors: tuple[int, int], attempt: int
) -> None:
    http, silent = impostors
    live = vhost_settings.urls[0]
    others = [url_at(closed_port()), url_at(http), url_at(silent)]
    text = ",".join([with_vhost_path(url, vhost_settings) for url in others] + [live])
    settings = vhost_settings.with_overrides(
        url=text, connect_timeout_s=1.0, connect_deadline_s=30.0
    )
    started = time.monotonic()
    async with BrokerConnection(settings) as connection:
        assert connection.node == Settings(url=live).masked_url
        assert connection.server_version >= (3,)
    # Each node costs at most one connect timeout (the silent one); one round at most.
    assert time.monotonic() - started < 3 * 1.0 + 3 * settings.reconnect_min_s + 5


async def test_all_nodes_down_is_one_clear_error_within_the_deadline(
    impostors: tuple[int, int],
) -> None:
    http, silent = impostors
    text = ",".join([url_at(closed_port()), url_at(http), url_at(silent)])
    settings = Settings(url=text, connect_timeout_s=1.0, connect_deadline_s=4.0)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as caught:
        await BrokerConnection(settings).open()
    took = time.monotonic() - started
    message = str(caught.value)
    assert "cannot reach any of the 3 broker nodes within 4s" in message
    for port in (http, silent):
        assert f"127.0.0.1:{port}/" in message
    assert "nothing was sent" in message
    assert SECRET not in message and "pa#ss,w0rd" not in message
    # The deadline plus at most one attempt's timeout (the attempt running at the deadline).
    assert took < 4.0 + 1.0 + 2.0, took


async def test_a_producer_given_a_list_publishes_through_the_live_node(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = worker_apps.loaded_topology(tmp_path)
    async with BrokerConnection(vhost_settings) as conn:
        await apply_topology(conn, loaded)
    dead = with_vhost_path(url_at(closed_port()), vhost_settings)
    settings = vhost_settings.with_overrides(url=f"{dead},{vhost_settings.urls[0]}")
    async with Producer(settings, loaded.topology) as producer:
        receipt = await producer.publish("echo", {"n": 1})
        assert producer.connection.node == Settings(url=vhost_settings.urls[0]).masked_url
    assert receipt.job_id


def test_the_commands_read_a_list_from_jobsys_url_and_name_their_node(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = worker_apps.loaded_topology(tmp_path)
    dead = with_vhost_path(url_at(closed_port()), vhost_settings)
    live = vhost_settings.urls[0]
    env = {
        **os.environ,
        "JOBSYS_URL": f"{dead},{live}",
        "JOBSYS_CONNECT_TIMEOUT_S": "2",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobsys",
            "status",
            "--topology",
            loaded.filename,
            "--no-management",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert f"connected to broker node {Settings(url=live).masked_url}" in result.stdout
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "text",
    ["{live},,{live2}", "{live},", "amqps://g:g@127.0.0.1:5671/,{live}", "{live},{live}"],
)
def test_the_commands_refuse_a_bad_list_with_exit_2_and_no_password(
    vhost_settings: Settings, tmp_path: Path, text: str
) -> None:
    loaded = worker_apps.loaded_topology(tmp_path)
    live = vhost_settings.urls[0].replace("guest:guest", f"guest:{SECRET}")
    live2 = live.replace("127.0.0.1", "localhost")
    env = {**os.environ, "JOBSYS_URL": text.format(live=live, live2=live2)}
    result = subprocess.run(
        [sys.executable, "-m", "jobsys", "status", "--topology", loaded.filename],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "broker URL" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "pa#ss,w0rd" not in result.stdout + result.stderr


async def test_a_worker_given_a_list_names_its_node_in_the_banner(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = worker_apps.loaded_topology(tmp_path)
    await worker_apps.apply(vhost_settings, loaded)
    dead = with_vhost_path(url_at(closed_port()), vhost_settings)
    settings = vhost_settings.with_overrides(url=f"{dead},{vhost_settings.urls[0]}")
    worker = worker_apps.WorkerProcess(tmp_path, settings, "--queue", "wt.work", verbose=False)
    try:
        await worker.wait_for_output("worker ready")
        banner = next(line for line in worker.stderr.splitlines() if "worker ready" in line)
        live = Settings(url=vhost_settings.urls[0]).masked_url
        assert f"broker {live} (RabbitMQ 3." in banner
        assert "node of 2 given, fails over to the others" in banner
        assert SECRET not in worker.stderr
    finally:
        worker.kill()


async def test_a_scheduler_given_a_list_leads_from_the_live_node_and_says_which(
    vhost_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = schedule_apps.write_topology(tmp_path)
    await schedule_apps.apply(vhost_settings, loaded)
    dead = with_vhost_path(url_at(closed_port()), vhost_settings)
    settings = vhost_settings.with_overrides(url=f"{dead},{vhost_settings.urls[0]}")
    running = Scheduler(settings, loaded)
    task = asyncio.create_task(running.run())
    caplog.set_level(logging.INFO, logger="jobsys")
    try:
        await asyncio.wait_for(running.leading.wait(), 30)
    finally:
        running.request_stop()
        await asyncio.wait_for(task, 30)
    live = Settings(url=vhost_settings.urls[0]).masked_url
    assert any(f"leads (1 schedules) on {live}" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    assert SECRET not in caplog.text
