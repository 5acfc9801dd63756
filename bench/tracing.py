"""What telemetry costs a worker: drain throughput with tracing on vs off, in the same run.

Every measurement runs in a fresh child process, so one mode never inherits another's
providers, caches, JIT-warm paths or garbage. Modes:

* ``off``: no SDK at all (not even imported); tracing and metrics go through the API's no-op
  proxies, which is what a program that configures no telemetry gets.
* ``traces``: the SDK's ``TracerProvider`` installed globally with a ``BatchSpanProcessor``
  and an exporter that drops everything (wrapped as ``jobsys worker`` wraps its exporters).
  Every span is built, sampled, ended and handed to the export thread; only the network is
  left out.
* ``on``: ``traces`` plus an SDK ``MeterProvider`` whose periodic reader collects every 5 s
  into an exporter that drops everything: the two histograms are recorded per job and the
  counters are observed at each collection.

Each child fills the queue with ``-n`` jobs through jobsys's ``Producer`` (so the messages
carry ``traceparent`` whenever tracing is on), then times the real ``jobsys.consume.worker.Worker``
draining them with a handler that does nothing, from the moment it is consuming to the last
ack, and the CPU time the process spent meanwhile (the export thread included). Rounds
alternate the order of the modes; the median of ``--rounds`` counts, and so does the median
of the per-round ratios. Target: on / off >= 0.85.

Without a broker, each child also times ``publish_span`` and ``consume_span`` (with the
arguments the producer and the worker pass) in CPU microseconds per job.

Run with ``.venv/bin/python -m bench.tracing [-n 5000] [--rounds 5] [--url AMQP_URL]``. The
jobs run in a fresh vhost (created and deleted through the management API).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from jobsys.app import App
from jobsys.broker.connection import BrokerConnection
from jobsys.consume.options import WorkerOptions
from jobsys.consume.worker import Worker
from jobsys.observe import tracing
from jobsys.ops.declare import apply_topology
from jobsys.publish.producer import JobRequest, Producer
from jobsys.settings import Settings
from jobsys.topology.loader import load_topology_text

JOB_TYPE = "bench_job"
MODES = ("off", "traces", "on")
TOPOLOGY = f"""\
version: 1
exchanges:
  bench: {{type: direct}}
queues:
  bench.work:
    type: classic
    consumer: {{concurrency: 50, prefetch: 200}}
bindings:
  - {{exchange: bench, queue: bench.work, routing_key: work}}
job_types:
  {JOB_TYPE}: {{exchange: bench, routing_key: work}}
"""


def _install(mode: str) -> Callable[[], None]:
    """Install the providers of ``mode`` globally; returns what shuts them down."""
    if mode == "off":
        return lambda: None
    from collections.abc import Sequence

    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        MetricsData,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from jobsys.observe.telemetry_setup import LoggedOnceMetricExporter, LoggedOnceSpanExporter

    class DropSpans(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    class DropMetrics(MetricExporter):
        def export(
            self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            return None

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(LoggedOnceSpanExporter(DropSpans())))
    trace.set_tracer_provider(tracer_provider)
    providers: list[Any] = [tracer_provider]
    if mode == "on":
        reader = PeriodicExportingMetricReader(
            LoggedOnceMetricExporter(DropMetrics()), export_interval_millis=5000
        )
        meter_provider = MeterProvider(metric_readers=[reader])
        otel_metrics.set_meter_provider(meter_provider)
        providers.append(meter_provider)

    def shutdown() -> None:
        for provider in providers:
            provider.shutdown()

    return shutdown


async def _handle(payload: dict[str, Any]) -> None:
    return None


async def _drain(url: str, n: int) -> dict[str, float]:
    settings = Settings(url=url)
    loaded = load_topology_text(TOPOLOGY)
    async with Producer(settings, loaded.topology) as producer:
        results = await producer.publish_many(
            JobRequest(JOB_TYPE, {"index": i, "note": "x" * 150}) for i in range(n)
        )
    if sum(1 for r in results if not isinstance(r, BaseException)) != n:
        raise SystemExit("publishing the jobs failed")
    app = App()
    app.register(JOB_TYPE, _handle)
    worker = Worker(app, loaded, settings, WorkerOptions(max_jobs=n, grace_s=60))
    task = asyncio.create_task(worker.run())
    await worker.ready.wait()
    start, cpu_start = time.perf_counter(), time.process_time()
    stats = await task
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if stats.done != n:
        raise SystemExit(f"the worker finished {stats.done} of {n} jobs")
    return {"jobs_s": n / elapsed, "cpu_us": cpu / n * 1e6}


def _span_cost_us(n: int = 20_000) -> dict[str, float]:
    """CPU microseconds per job of ``publish_span`` and of ``consume_span``, as called by the
    producer and the worker, without a broker."""
    published_at_ms = int(time.time() * 1000)
    carried: list[dict[str, Any]] = []
    start = time.process_time()
    for i in range(n):
        headers: dict[str, Any] = {"jobsys-attempt": 1, "jobsys-published-at-ms": published_at_ms}
        with tracing.publish_span(
            headers,
            job_type=JOB_TYPE,
            job_id=f"job-{i}",
            exchange="bench",
            routing_key="work",
            message_id=f"m-{i}",
            attempt=1,
        ):
            pass
        carried.append(headers)
    publish = time.process_time() - start
    start = time.process_time()
    for i, headers in enumerate(carried):
        with tracing.consume_span(
            headers,
            job_type=JOB_TYPE,
            job_id=f"job-{i}",
            queue="bench.work",
            attempt=1,
            message_id=f"m-{i}",
            published_at_ms=published_at_ms,
            exchange="bench",
            routing_key="work",
        ) as attempt:
            attempt.set_outcome("ok")
    consume = time.process_time() - start
    return {"publish_us": publish / n * 1e6, "consume_us": consume / n * 1e6}


def _child(mode: str, url: str, n: int) -> None:
    shutdown = _install(mode)
    _span_cost_us(2000)  # warm up: first-use caches, the export thread
    result = _span_cost_us()
    result.update(asyncio.run(_drain(url, n)))
    if mode != "off" and "opentelemetry.sdk" not in sys.modules:
        raise SystemExit("the SDK is not loaded")
    if mode == "off" and "opentelemetry.sdk.trace" in sys.modules:
        raise SystemExit("the SDK was loaded in the off mode")
    shutdown()
    print(json.dumps(result))


def _run_child(mode: str, url: str, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.tracing", "--child", mode, "--url", url, "-n", str(n)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _management(url: str, method: str, path: str, body: object | None = None) -> None:
    parts = urlsplit(url)
    user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
    request = urllib.request.Request(
        f"http://{parts.hostname}:15672{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "content-type": "application/json",
            "authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def run(url: str, n: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    """Each mode once per round in a fresh child, the order rotating; every result by mode."""
    vhost = f"bench-tracing-{uuid.uuid4().hex[:8]}"
    user = unquote(urlsplit(url).username or "guest")
    _management(url, "PUT", f"/api/vhosts/{quote(vhost, safe='')}")
    _management(
        url,
        "PUT",
        f"/api/permissions/{quote(vhost, safe='')}/{quote(user, safe='')}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    parts = urlsplit(url)
    vhost_url = urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    try:
        asyncio.run(_declare(vhost_url))
        for round_ in range(rounds):
            # Rotate which mode goes first: the broker is still writing the last run's
            # messages away when the next fill starts, which slows whoever runs next.
            order = MODES[round_ % len(MODES) :] + MODES[: round_ % len(MODES)]
            for mode in order:
                results[mode].append(_run_child(mode, vhost_url, n))
                print(f"  round {round_ + 1} {mode:6} {results[mode][-1]}", file=sys.stderr)
    finally:
        _management(url, "DELETE", f"/api/vhosts/{quote(vhost, safe='')}")
    return results


async def _declare(url: str) -> None:
    async with BrokerConnection(Settings(url=url)) as conn:
        await apply_topology(conn, load_topology_text(TOPOLOGY), use_management=False)


def _median(results: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in results)


def report(results: dict[str, list[dict[str, float]]], n: int) -> None:
    """Print the medians, the per-round ratios and the per-job costs."""
    rounds = len(results["off"])
    print(f"tracing benchmark: {n} jobs drained per run, {rounds} rounds, medians")
    labels = {
        "off": "off (no SDK)",
        "traces": "traces (SDK, no-op exporter)",
        "on": "traces + metrics (SDK, no-op exporters)",
    }
    for mode in MODES:
        print(
            f"  {labels[mode]:40} {_median(results[mode], 'jobs_s'):8,.0f} jobs/s"
            f"  {_median(results[mode], 'cpu_us'):6.0f} us CPU/job"
        )
    for mode in ("traces", "on"):
        pairs = list(zip(results[mode], results["off"], strict=True))
        ratios = [on["jobs_s"] / off["jobs_s"] for on, off in pairs]
        extra = [on["cpu_us"] - off["cpu_us"] for on, off in pairs]
        print(
            f"  {mode:6} / off = {statistics.median(ratios):.2f}x"
            f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.85x),"
            f" +{statistics.median(extra):.0f} us CPU/job"
        )
    print("  span CPU per job, no broker (publish_span / consume_span):")
    for mode in MODES:
        print(
            f"    {labels[mode]:38} {_median(results[mode], 'publish_us'):6.1f} us"
            f" / {_median(results[mode], 'consume_us'):6.1f} us"
        )


def main() -> None:
    """Parse arguments, run, print jobs/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="jobs per run (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--url", default=Settings.from_env().url, help="broker URL")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.url, args.n)
        return
    report(run(args.url, args.n, args.rounds), args.n)


if __name__ == "__main__":
    main()
