"""Broker-side delays under load: 100,000 jobs waiting in the delay levels.

In one private vhost (created and deleted by the run):

* publish ``-n`` delayed jobs (delays spread over 300-900 s, so they all stay waiting for the
  whole run) and ``-n`` immediate ones with ``Producer.publish_many``, alternating in chunks,
  and compare the rates;
* count the jobs waiting in each delay level (what ``jobsys delays status`` shows);
* while they wait, publish a sample of jobs with short delays (1-5 s) and measure how late
  each arrives (tolerance: 1 s + 10 % of the delay);
* run a real worker (``jobsys worker``) on another queue of the same topology and read its
  resident memory before the 100,000 are published and after: they are in the broker, not in
  the worker.

Run with ``.venv/bin/python -m bench.delays [-n 100000] [--url AMQP_URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
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

from jobsys.app import App
from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology
from jobsys.ops.status import waiting_per_level
from jobsys.publish.producer import JobRequest, Producer
from jobsys.settings import Settings
from jobsys.topology.delays import DelayLayout
from jobsys.topology.loader import load_topology_text
from jobsys.wire.headers import HEADER_JOB_ID

TOPOLOGY = """
version: 1
exchanges:
  bench: {type: direct}
queues:
  bulk: {type: classic}     # the 100,000 delayed jobs head here; nothing consumes it
  sample: {type: classic}   # short-delay jobs, timed by this benchmark
  work: {type: classic}     # served by the worker whose memory is measured
bindings:
  - {exchange: bench, queue: bulk, routing_key: bulk}
  - {exchange: bench, queue: sample, routing_key: sample}
  - {exchange: bench, queue: work, routing_key: work}
job_types:
  bulk: {exchange: bench, routing_key: bulk}
  probe: {exchange: bench, routing_key: sample}
  tick: {exchange: bench, routing_key: work}
"""

_REPO_ROOT = Path(__file__).resolve().parent.parent

#: The worker's app: ``jobsys worker bench.delays:app``.
app = App()


@app.handler("tick")
async def tick(payload: dict[str, object]) -> None:
    """Does nothing; the worker is here to be measured."""


def _payload(i: int) -> dict[str, object]:
    # About 200 bytes encoded, like bench.publish.
    return {"index": i, "to": "someone@example.com", "template": "weekly-v2", "note": "x" * 120}


def _management(url: str, method: str, path: str, body: object | None = None) -> None:
    parts = urlsplit(url)
    user, password = parts.username or "guest", parts.password or "guest"
    base = os.environ.get("JOBSYS_MANAGEMENT_URL", f"http://{parts.hostname}:15672")
    request = urllib.request.Request(
        base.rstrip("/") + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "content-type": "application/json",
            "authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=30):
        pass


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


async def _consumers(settings: Settings, queue: str) -> int:
    async with BrokerConnection(settings) as connection:
        channel = await connection.channel(confirms=False)
        declared = await channel.declare_queue(queue, passive=True)
        await channel.close()
        return int(declared.declaration_result.consumer_count or 0)


async def _start_worker(settings: Settings, topology_file: str) -> subprocess.Popen[bytes] | None:
    worker = _spawn_worker(settings, topology_file)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and worker.poll() is None:
        if await _consumers(settings, "work") > 0:
            await asyncio.sleep(1.0)  # let its memory settle after start-up
            return worker
        await asyncio.sleep(0.2)
    _stop(worker)
    err = worker.stderr.read().decode(errors="replace")[-400:] if worker.stderr else ""
    print(f"worker did not start; memory not measured ({err.strip()})")
    return None


def _spawn_worker(settings: Settings, topology_file: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "JOBSYS_URL": settings.url}
    command = [sys.executable, "-m", "jobsys", "worker", "bench.delays:app"]
    return subprocess.Popen(
        [*command, "--topology", topology_file],
        env=env,
        cwd=_REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


async def _publish_rates(producer: Producer, n: int, rounds: int = 10) -> tuple[float, float]:
    """Jobs/s of delayed and of immediate publishing. The two alternate in ``rounds`` chunks
    so that both see the same broker state (its queues filling, other load on the machine)."""
    rng = random.Random(1)
    elapsed = {"delayed": 0.0, "immediate": 0.0}
    chunk = -(-n // rounds)
    for start in range(0, n, chunk):
        indexes = range(start, min(start + chunk, n))
        for kind in ("delayed", "immediate"):
            delayed = kind == "delayed"
            requests = [
                JobRequest("bulk", _payload(i), delay_s=rng.uniform(300, 900) if delayed else None)
                for i in indexes
            ]
            began = time.perf_counter()
            results = await producer.publish_many(requests)
            elapsed[kind] += time.perf_counter() - began
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                raise SystemExit(f"{len(failed)} {kind} publishes failed: {failed[0]}")
    return n / elapsed["delayed"], n / elapsed["immediate"]


async def _sample_lateness(
    settings: Settings, producer: Producer, count: int
) -> list[tuple[float, float, float]]:
    """Publish ``count`` jobs with delays of 1-5 s; per job: its delay, how late it arrived,
    and how late measured from the delay actually applied (rounded up to whole seconds)."""
    rng = random.Random(7)
    delays = {f"probe-{i}": rng.uniform(1.0, 5.0) for i in range(count)}
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}
    applied: dict[str, float] = {}  # the delay rounded up to whole seconds
    all_in = asyncio.Event()
    async with BrokerConnection(settings) as connection:
        channel = await connection.channel(confirms=False, prefetch=count)
        queue = await channel.get_queue("sample", ensure=False)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrived[str((message.headers or {})[HEADER_JOB_ID])] = time.monotonic()
            await message.ack()
            if len(arrived) == count:
                all_in.set()

        await queue.consume(on_message)
        for job_id, delay_s in delays.items():
            sent[job_id] = time.monotonic()
            receipt = await producer.publish("probe", {}, delay_s=delay_s, job_id=job_id)
            applied[job_id] = receipt.delay_s or 0.0
        await asyncio.wait_for(all_in.wait(), timeout=30)
    return [
        (delays[j], arrived[j] - sent[j] - delays[j], arrived[j] - sent[j] - applied[j])
        for j in delays
    ]


async def run(url: str, n: int, samples: int) -> None:
    """The whole benchmark; prints its figures."""
    vhost = f"bench-delays-{uuid.uuid4().hex[:8]}"
    parts = urlsplit(url)
    vhost_url = urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))
    _management(url, "PUT", f"/api/vhosts/{quote(vhost, safe='')}")
    user = parts.username or "guest"
    _management(
        url,
        "PUT",
        f"/api/permissions/{quote(vhost, safe='')}/{user}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    settings = Settings(url=vhost_url, publish_timeout_s=120.0)
    loaded = load_topology_text(TOPOLOGY, "bench-delays.yaml")
    worker: subprocess.Popen[bytes] | None = None
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as topology_file:
        topology_file.write(TOPOLOGY)
        topology_file.flush()
        try:
            async with BrokerConnection(settings) as connection:
                await apply_topology(connection, loaded, use_management=False)
            worker = await _start_worker(settings, topology_file.name)
            rss_before = _rss_kib(worker.pid) if worker else None

            async with Producer(settings, loaded.topology) as producer:
                delayed_rate, immediate_rate = await _publish_rates(producer, n)
                async with BrokerConnection(settings) as connection:
                    channel = await connection.channel(confirms=False)
                    bulk = await channel.get_queue("bulk", ensure=False)
                    await bulk.purge()  # keep only the delayed jobs waiting
                    counts = await waiting_per_level(connection, DelayLayout())
                lateness = await _sample_lateness(settings, producer, samples)
            rss_after = _rss_kib(worker.pid) if worker else None
        finally:
            if worker is not None:
                _stop(worker)
            _management(url, "DELETE", f"/api/vhosts/{quote(vhost, safe='')}")

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, load average {load} at the end")
    print(f"jobs: {n} delayed (300-900 s) and {n} immediate, ~200-byte payloads, confirmed")
    print(f"publish rate, delayed:   {delayed_rate:8.0f} jobs/s")
    print(f"publish rate, immediate: {immediate_rate:8.0f} jobs/s")
    print("jobs waiting per level (level: count):")
    for level, count in enumerate(counts):
        if count:
            print(f"  {DelayLayout().level_name(level)}: {count}")
    print(f"  total: {sum(c or 0 for c in counts)}")
    late = sorted(lag for _, lag, _ in lateness)
    overshoot = sorted(over for _, _, over in lateness)
    within = sum(1 for delay, lag, _ in lateness if 0 <= lag <= 1.0 + 0.1 * delay)
    print(
        f"sample of {len(late)} delays of 1-5 s while they wait: lateness min {late[0]:.3f} s, "
        f"median {statistics.median(late):.3f} s, max {late[-1]:.3f} s; "
        f"{within}/{len(late)} within [0, 1 s + 10 %]"
    )
    print(
        f"  past the delay rounded up to whole seconds: min {overshoot[0] * 1000:.0f} ms, "
        f"median {statistics.median(overshoot) * 1000:.0f} ms, max {overshoot[-1] * 1000:.0f} ms"
    )
    if rss_before is not None and rss_after is not None:
        print(
            f"worker RSS: {rss_before / 1024:.1f} MiB before, {rss_after / 1024:.1f} MiB with "
            f"{n} jobs waiting ({(rss_after - rss_before) / 1024:+.1f} MiB)"
        )


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=100_000, help="delayed (and immediate) jobs")
    parser.add_argument("--samples", type=int, default=30, help="short-delay jobs timed")
    parser.add_argument("--url", default=os.environ.get("JOBSYS_URL", Settings().url))
    args = parser.parse_args()
    asyncio.run(run(args.url, args.n, args.samples))


if __name__ == "__main__":
    main()
