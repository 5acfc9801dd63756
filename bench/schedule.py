"""Fire-time lateness of the scheduler: how long after its slot each fire is published and
arrives, over a few hundred slots at a 1 s interval.

In one private vhost (created and deleted by the run), at the same time:

* ``jobsys scheduler`` (a subprocess, as operators run it) fires a schedule ``every: 1s``;
* a raw aio-pika loop sleeps until each whole second and publishes one persistent message on a
  confirm channel: the least a timer plus a publish costs on this machine, for comparison.

A consumer in this process reads both queues and takes, per message, the lateness of its fire
(``jobsys-published-at-ms`` minus the slot) and of its arrival (receipt minus the slot).

Run with ``.venv/bin/python -m bench.schedule [-n 300] [--url AMQP_URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika

from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology
from jobsys.settings import Settings
from jobsys.topology.loader import load_topology

TOPOLOGY = """
version: 1
exchanges:
  bench: {type: direct}
queues:
  fired: {type: classic}
  raw: {type: classic}
bindings:
  - {exchange: bench, queue: fired, routing_key: fired}
  - {exchange: bench, queue: raw, routing_key: raw}
job_types:
  tick: {exchange: bench, routing_key: fired}
schedules:
  tick: {job_type: tick, every: 1s}
"""


def _management(url: str, method: str, path: str, body: object | None = None) -> None:
    parts = urlsplit(url)
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    request = urllib.request.Request(
        f"http://{parts.hostname}:15672{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"authorization": f"Basic {token}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def raw_timer(url: str, count: int, stop: asyncio.Event) -> None:
    """Publish one message at each whole second, confirmed: the baseline."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("bench", ensure=False)
        for _ in range(count):
            slot = int(time.time()) + 1
            await asyncio.sleep(slot - time.time())
            if stop.is_set():
                return
            message = aio_pika.Message(
                b"{}",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={"slot-ms": slot * 1000, "published-ms": int(time.time() * 1000)},
            )
            await exchange.publish(message, "raw", mandatory=True)


async def collect(url: str, count: int) -> dict[str, list[tuple[float, float]]]:
    """(fire lateness, arrival lateness) in ms per message, per queue, until ``count`` each."""
    seen: dict[str, list[tuple[float, float]]] = {"fired": [], "raw": []}
    done = asyncio.Event()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)

        def on(queue: str):
            async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                now = time.time() * 1000
                headers = message.headers or {}
                slot = headers.get("jobsys-slot-ms", headers.get("slot-ms"))
                fired = headers.get("jobsys-published-at-ms", headers.get("published-ms"))
                assert isinstance(slot, int) and isinstance(fired, int)
                seen[queue].append((fired - slot, now - slot))
                await message.ack()
                if all(len(v) >= count for v in seen.values()):
                    done.set()

            return handle

        for queue in seen:
            q = await channel.get_queue(queue, ensure=False)
            await q.consume(on(queue))
        await asyncio.wait_for(done.wait(), count + 120)
    return seen


def _spawn_scheduler(file: Path, url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "jobsys", "scheduler", "--topology", str(file)],
        env={**os.environ, "JOBSYS_URL": url},
        stdout=subprocess.DEVNULL,
    )


async def main(count: int, url: str) -> None:
    vhost = f"bench-schedule-{uuid.uuid4().hex[:8]}"
    _management(url, "PUT", f"/api/vhosts/{quote(vhost, safe='')}")
    user = urlsplit(url).username or "guest"
    _management(
        url,
        "PUT",
        f"/api/permissions/{quote(vhost, safe='')}/{user}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    parts = urlsplit(url)
    vhost_url = urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))
    scheduler = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "topology.yaml"
            file.write_text(TOPOLOGY, encoding="utf-8")
            loaded = load_topology(file)
            async with BrokerConnection(Settings(url=vhost_url)) as connection:
                await apply_topology(connection, loaded)
            scheduler = _spawn_scheduler(file, vhost_url)
            stop = asyncio.Event()
            timer = asyncio.create_task(raw_timer(vhost_url, count + 5, stop))
            seen = await collect(vhost_url, count)
            stop.set()
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
    finally:
        if scheduler is not None:
            scheduler.send_signal(signal.SIGTERM)
            scheduler.wait(30)
        _management(url, "DELETE", f"/api/vhosts/{quote(vhost, safe='')}")
    load = os.getloadavg()
    print(f"{count} slots at 1 s; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'':28}{'fire p50':>10}{'fire p99':>10}{'arrive p50':>12}{'arrive p99':>12}{'max':>8}")
    for name, label in (("fired", "jobsys scheduler"), ("raw", "raw aio-pika timer")):
        fire = [f for f, _ in seen[name][:count]]
        arrive = [a for _, a in seen[name][:count]]
        print(
            f"{label:28}{percentile(fire, 50):>8.1f}ms{percentile(fire, 99):>8.1f}ms"
            f"{percentile(arrive, 50):>10.1f}ms{percentile(arrive, 99):>10.1f}ms"
            f"{max(arrive):>6.0f}ms"
        )
    jobsys_p50 = statistics.median(a for _, a in seen["fired"][:count])
    raw_p50 = statistics.median(a for _, a in seen["raw"][:count])
    print(f"arrival p50, jobsys / raw: {jobsys_p50 / max(raw_p50, 0.001):.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=300, help="slots to measure")
    parser.add_argument(
        "--url", default=os.environ.get("JOBSYS_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    arguments = parser.parse_args()
    asyncio.run(main(arguments.n, arguments.url))
