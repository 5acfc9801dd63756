"""Results: the round trip of ``call()`` and the cost of returning a result, in the same run.

Two measurements, in a private vhost (created through the management API, deleted at the end):

* **round trip**: a worker runs in a child process (``jobsys worker bench.call:app``); this
  process sends ``n`` jobs one after the other in three ways, rounds interleaved, and times
  each: raw aio-pika one-by-one confirmed publish, jobsys ``publish`` one by one (confirmed),
  and jobsys ``call()`` (confirmed publish, the job runs, its result comes back through direct
  reply-to). p50/p99 of each, and ``call`` against ``publish``.
* **drain**: ``n`` jobs are queued, then an in-process worker drains them; the handler returns
  None in one mode and a ~200-byte dict (checked and encoded as the job's result, no caller
  waiting) in the other, and None again with the job history on (``history:``), every job
  then writing two events to the history stream. Jobs/s between the first and the last job
  done, rounds interleaved.

Run with ``.venv/bin/python -m bench.call [-n 500] [--drain-n 5000] [--rounds 3] [--url URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika

from bench.worker import _management, _percentiles, _vhost_url
from jobsys.app import App

QUEUE = "bc.work"
TOPOLOGY_YAML = f"""\
version: 1
exchanges:
  bc.jobs: {{type: direct}}
queues:
  {QUEUE}:
    type: classic
    consumer: {{concurrency: 8, prefetch: 32}}
bindings:
  - {{exchange: bc.jobs, queue: {QUEUE}, routing_key: work}}
job_types:
  none: {{exchange: bc.jobs, routing_key: work}}
  value: {{exchange: bc.jobs, routing_key: work}}
"""

HISTORY_YAML = "history: {max_age: 1h, max_bytes: 67108864}\n"

app = App()


@app.handler("none")
async def returns_none(payload: dict[str, Any]) -> None:
    return None


@app.handler("value")
async def returns_value(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "index": payload["index"],
        "status": "sent",
        "provider": "example-mail",
        "message_ref": "0123456789abcdef0123456789abcdef",
        "recipients": ["someone@example.com"],
        "note": "x" * 60,
    }


def _payload(i: int) -> dict[str, Any]:
    return {"index": i, "to": "someone@example.com", "subject": "Report", "note": "x" * 80}


# -- round trip ----------------------------------------------------------------------------------


async def _raw_one_by_one(url: str, n: int) -> list[float]:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange("bc.jobs")
        ms = []
        for i in range(n):
            body = aio_pika.Message(
                json_bytes(_payload(i)),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                type="none",
                content_type="application/json",
                headers={"jobsys-job-id": uuid.uuid4().hex},
            )
            started = time.perf_counter()
            await exchange.publish(body, "work", mandatory=True)
            ms.append((time.perf_counter() - started) * 1000)
        return ms
    finally:
        await connection.close()


def json_bytes(value: Any) -> bytes:
    import json

    return json.dumps(value).encode()


async def _jobsys(producer: Any, n: int, *, call: bool) -> list[float]:
    ms = []
    for i in range(n):
        started = time.perf_counter()
        if call:
            result = await producer.call("value", _payload(i), timeout_s=30)
            assert result["index"] == i
        else:
            await producer.publish("none", _payload(i))
        ms.append((time.perf_counter() - started) * 1000)
    return ms


async def round_trip(url: str, topology_file: Path, n: int, rounds: int) -> dict[str, list[float]]:
    from jobsys.publish.producer import Producer
    from jobsys.settings import Settings
    from jobsys.topology.loader import load_topology

    env = {**os.environ, "JOBSYS_URL": url}
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobsys",
        "worker",
        "bench.call:app",
        "--topology",
        str(topology_file),
        env=env,
        stderr=asyncio.subprocess.DEVNULL,
    )
    results: dict[str, list[float]] = {"raw publish": [], "publish": [], "call": []}
    try:
        async with Producer(Settings(url=url), load_topology(topology_file)) as producer:
            await producer.call("value", _payload(0), timeout_s=60)  # the worker is up
            for _ in range(rounds):
                results["raw publish"] += await _raw_one_by_one(url, n)
                results["publish"] += await _jobsys(producer, n, call=False)
                results["call"] += await _jobsys(producer, n, call=True)
    finally:
        worker.terminate()
        await worker.wait()
    return results


# -- drain ---------------------------------------------------------------------------------------


async def drain(url: str, topology_file: Path, job_type: str, n: int) -> float:
    """Jobs/s of an in-process worker draining ``n`` queued jobs of ``job_type`` (with the job
    history on when ``topology_file`` has ``history:``)."""
    from jobsys.consume.worker import Worker
    from jobsys.publish.producer import JobRequest, Producer
    from jobsys.settings import Settings
    from jobsys.topology.loader import load_topology

    settings = Settings(url=url)
    loaded = load_topology(topology_file)
    async with Producer(settings, loaded) as producer:
        await producer.publish_many([JobRequest(job_type, _payload(i)) for i in range(n)])
    worker = Worker(app, loaded, settings)
    task = asyncio.create_task(worker.run())
    first = last = 0.0
    while worker.stats.done < n:
        await asyncio.sleep(0.002)
        if not first and worker.stats.done:
            first = time.perf_counter()
        if task.done():
            task.result()
    last = time.perf_counter()
    worker.request_stop()
    await task
    return (n - 1) / max(last - first, 1e-9)


async def run(args: argparse.Namespace) -> None:
    from jobsys.broker.connection import BrokerConnection
    from jobsys.ops.declare import apply_topology
    from jobsys.settings import Settings
    from jobsys.topology.loader import load_topology

    vhost = f"jobsys-bench-{uuid.uuid4().hex[:8]}"
    _management("PUT", f"/api/vhosts/{quote(vhost, safe='')}")
    _management(
        "PUT",
        f"/api/permissions/{quote(vhost, safe='')}/guest",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    url = _vhost_url(args.url, vhost)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            topology_file = Path(tmp) / "topology.yaml"
            topology_file.write_text(TOPOLOGY_YAML, encoding="utf-8")
            async with BrokerConnection(Settings(url=url)) as conn:
                await apply_topology(conn, load_topology(topology_file), use_management=False)
            history_file = Path(tmp) / "history.yaml"
            history_file.write_text(TOPOLOGY_YAML + HISTORY_YAML, encoding="utf-8")
            async with BrokerConnection(Settings(url=url)) as conn:
                await apply_topology(conn, load_topology(history_file), use_management=False)
            trips = await round_trip(url, topology_file, args.n, args.rounds)
            print(f"round trip, one at a time, n = {args.n} x {args.rounds} rounds:")
            for name, ms in trips.items():
                p50, p99 = _percentiles(ms)
                print(f"  {name:<12} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
            c50, c99 = _percentiles(trips["call"])
            j50, j99 = _percentiles(trips["publish"])
            print(f"  call / publish: p50 {c50 / j50:.2f}x, p99 {c99 / j99:.2f}x")
            rates: dict[str, list[float]] = {"none": [], "value": [], "none, history on": []}
            for _ in range(args.rounds):
                for mode, job_type, file in (
                    ("none", "none", topology_file),
                    ("value", "value", topology_file),
                    ("none, history on", "none", history_file),
                ):
                    rates[mode].append(await drain(url, file, job_type, args.drain_n))
            print(f"drain, n = {args.drain_n}, {args.rounds} rounds (jobs/s, best / median):")
            for mode, values in rates.items():
                print(f"  returns {mode:<18} {max(values):8.0f} / {statistics.median(values):8.0f}")
            for mode in ("value", "none, history on"):
                ratios = [v / z for v, z in zip(rates[mode], rates["none"], strict=True)]
                print(f"  {mode} / none: median of rounds {statistics.median(ratios):.2f}x")
    finally:
        _management("DELETE", f"/api/vhosts/{quote(vhost, safe='')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=500, help="jobs per round trip variant and round")
    parser.add_argument("--drain-n", type=int, default=5000, help="jobs per drain")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--url", default=os.environ.get("JOBSYS_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
