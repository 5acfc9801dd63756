"""Rate limits across processes: P ``jobsys worker`` processes share one job type's
``rate_limit``; the starts per 10 s window against the limit.

The queue is filled with more jobs than the run can start, then P worker processes (default 4)
consume it for ``--seconds`` (default 30); each start is appended, with its wall-clock time, to
one file (``O_APPEND``: whole lines from every process). Printed: the starts in each whole 10 s
window from the first start, and how far each is off the limit.

Run with ``.venv/bin/python -m bench.rate [--rate 50] [--processes 4] [--seconds 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.worker import DEFAULT_URL, _management, _vhost_url
from jobsys.app import App

app = App()


@app.handler("limited")
async def limited(payload: Any) -> None:
    line = f"{time.time():.6f}\n".encode()
    fd = os.open(os.environ["JOBSYS_BENCH_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def topology_yaml(rate: float) -> str:
    return f"""
version: 1
exchanges:
  rate.jobs: {{type: direct}}
queues:
  rate.work: {{type: classic, consumer: {{concurrency: 20, prefetch: 40}}}}
bindings:
  - {{exchange: rate.jobs, queue: rate.work, routing_key: limited}}
job_types:
  limited: {{exchange: rate.jobs, routing_key: limited, rate_limit: {rate:g}/s, timeout: 60s}}
"""


async def run(args: argparse.Namespace) -> None:
    from jobsys.broker.connection import BrokerConnection
    from jobsys.ops.declare import apply_topology
    from jobsys.publish.producer import JobRequest, Producer
    from jobsys.settings import Settings
    from jobsys.topology.loader import load_topology_text

    vhost = f"jobsys-bench-{uuid.uuid4().hex[:8]}"
    _management("PUT", f"/api/vhosts/{quote(vhost, safe='')}")
    _management(
        "PUT",
        f"/api/permissions/{quote(vhost, safe='')}/guest",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    url = _vhost_url(args.url, vhost)
    workdir = Path(tempfile.mkdtemp(prefix="jobsys-bench-rate-"))
    topology = workdir / "rate.yaml"
    topology.write_text(topology_yaml(args.rate), encoding="utf-8")
    record = workdir / "starts.txt"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        loaded = load_topology_text(topology_yaml(args.rate), "rate.yaml")
        settings = Settings(url=url)
        async with BrokerConnection(settings) as conn:
            await apply_topology(conn, loaded, use_management=False)
        n = int(args.rate * (args.seconds + 10) * 1.2)
        async with Producer(settings, loaded.topology) as producer:
            for start in range(0, n, 2000):
                batch = [
                    JobRequest("limited", {"i": i}) for i in range(start, min(n, start + 2000))
                ]
                await producer.publish_many(batch)
        env = {**os.environ, "JOBSYS_URL": url, "JOBSYS_BENCH_RECORD": str(record)}
        command = [sys.executable, "-m", "jobsys", "worker", "bench.rate:app", "--topology"]
        for _ in range(args.processes):
            procs.append(
                # Started once, before the measured run: blocking here costs nothing measured.
                subprocess.Popen(  # noqa: ASYNC220
                    [*command, str(topology)], env=env, stderr=subprocess.DEVNULL
                )
            )
        await asyncio.sleep(args.seconds + 5)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        _management("DELETE", f"/api/vhosts/{quote(vhost, safe='')}")
    starts = sorted(float(line) for line in record.read_text().split())
    first = starts[0]
    windows = int((starts[-1] - first) // 10)
    print(
        f"{args.processes} worker processes, rate_limit {args.rate:g}/s "
        f"(burst {max(1, round(args.rate))}), {len(starts)} starts"
    )
    for w in range(min(windows, args.seconds // 10)):
        count = sum(1 for s in starts if first + 10 * w <= s < first + 10 * (w + 1))
        expected = args.rate * 10
        print(
            f"  window {w + 1} ({10 * w}-{10 * (w + 1)} s): {count} starts, "
            f"{(count - expected) / expected * 100:+.1f} % off {expected:g}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--url", default=DEFAULT_URL)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
