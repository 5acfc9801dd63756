"""The per-job cost of exporting the worker's metrics to Prometheus, two ways, in one run.

* ``prometheus``: jobsys's exporter (``jobsys.observe.prometheus``, prometheus-client): counters
  read from jobsys's counts at scrape time, two histogram observations per job.
* ``otel-prometheus``: the OpenTelemetry SDK's ``MeterProvider`` with the OpenTelemetry
  Prometheus reader (``opentelemetry-exporter-prometheus``, not a jobsys dependency: install it
  to measure it); every measurement goes through the SDK.
* ``off``: no exporter (the API's no-op instruments).

Two measurements: the recording calls alone (``record_started`` + ``record_finished``, as a
worker makes them per job, in this process, ``--calls`` times), and the drain of
``bench.worker`` (``-n`` jobs through a real worker in a child process), rounds interleaved;
the drain's CPU time per job is the steadier figure on a shared machine.

Run with ``.venv/bin/python -m bench.metrics [-n 20000] [--rounds 3] [--calls 200000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any
from urllib.parse import quote

MODES = ("off", "prometheus", "otel-prometheus")


def _have_otel_exporter() -> bool:
    try:
        import opentelemetry.exporter.prometheus  # noqa: F401
    except ImportError:
        return False
    return True


def calls_child(mode: str, calls: int) -> float:
    """Microseconds per job of the recording calls under ``mode`` (run in a fresh process)."""
    from bench.worker import _bench_metrics
    from jobsys.observe import metrics

    _bench_metrics(mode)
    keys = [(f"type{i % 4}", f"queue{i % 2}") for i in range(calls)]
    start = time.perf_counter()
    for job_type, queue in keys:
        metrics.record_started(job_type, queue, 0.004)
        metrics.record_finished(job_type, queue, "ok", 0.002)
    return (time.perf_counter() - start) / calls * 1e6


async def drains(args: argparse.Namespace, modes: list[str]) -> dict[str, list[dict[str, Any]]]:
    from bench.worker import _management, _vhost_url, drain, topology_yaml
    from jobsys.broker.connection import BrokerConnection
    from jobsys.ops.declare import apply_topology
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
    token = uuid.uuid4().hex[:8]
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    try:
        async with BrokerConnection(Settings(url=url)) as conn:
            await apply_topology(
                conn, load_topology_text(topology_yaml(token)), use_management=False
            )
        for round_no in range(args.rounds):
            for mode in modes:
                os.environ["JOBSYS_BENCH_METRICS"] = mode
                result = await drain("jobsys", url, token, args.n)
                runs[mode].append(result)
                print(
                    f"round {round_no + 1} drain {mode:16}: {result['rate']:6.0f} jobs/s, "
                    f"CPU {result['cpu_us']:4.0f} us/job"
                )
    finally:
        os.environ.pop("JOBSYS_BENCH_METRICS", None)
        _management("DELETE", f"/api/vhosts/{quote(vhost, safe='')}")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="jobs per drain")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200_000, help="recording calls measured")
    parser.add_argument(
        "--url", default=os.environ.get("JOBSYS_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument("--calls-child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.calls_child:
        print(f"{calls_child(args.calls_child, args.calls):.3f}")
        return
    modes = [m for m in MODES if m != "otel-prometheus" or _have_otel_exporter()]
    if len(modes) < len(MODES):
        print("opentelemetry-exporter-prometheus is not installed: its mode is left out")
    print("recording calls per job (record_started + record_finished), best of 3:")
    calls = {}
    for mode in modes:
        samples = [
            float(
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.metrics",
                        "--calls-child",
                        mode,
                        "--calls",
                        str(args.calls),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.strip()
            )
            for _ in range(3)
        ]
        calls[mode] = min(samples)
        print(f"  {mode:16} {calls[mode]:6.2f} us/job")
    runs = asyncio.run(drains(args, modes))
    print("drain, median of rounds:")
    base = statistics.median(r["cpu_us"] for r in runs["off"])
    for mode, results in runs.items():
        cpu = statistics.median(r["cpu_us"] for r in results)
        rate = statistics.median(r["rate"] for r in results)
        print(
            f"  {mode:16} {rate:6.0f} jobs/s, CPU {cpu:4.0f} us/job ({cpu - base:+.0f} us vs off)"
        )


if __name__ == "__main__":
    main()
