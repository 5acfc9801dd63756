"""What tracing costs: worker drain throughput with tracing on vs off, in the same run.

* off: OpenTelemetry's no-op providers (what a program without an SDK gets);
* on: the SDK's ``TracerProvider`` with a ``BatchSpanProcessor`` and an exporter that drops
  everything, plus an SDK ``MeterProvider`` aggregating into an in-memory reader: every span
  and measurement is built, only the network is left out.

Each round fills a queue with ``-n`` jobs (published in the same mode, so the messages carry
``traceparent`` when tracing is on) and times a ``Worker`` draining them with a handler that
does nothing, from the moment it is consuming to the last ack. Rounds alternate off and on (and
which goes first) so both see the same broker; the best of ``--rounds`` counts. Target: on / off
>= 0.85.

It also prints the per-job cost of ``publish_span`` + ``consume_span`` in microseconds, with no
SDK and with the SDK, without a broker.

The drain figures only measure tracing once the worker calls ``tracing.consume_span_for``
(and the producer ``tracing.publish_span``); before that wiring, both modes run the same code.

Run with ``.venv/bin/python -m bench.tracing [-n 5000] [--rounds 3] [--url AMQP_URL]``. The
jobs run in a fresh vhost (created and deleted through the management API).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from jobsys import metrics, tracing
from jobsys.app import App
from jobsys.connection import BrokerConnection
from jobsys.producer import JobRequest, Producer
from jobsys.settings import Settings
from jobsys.topology.declare import apply_topology
from jobsys.topology.loader import load_topology_text
from jobsys.worker import Worker, WorkerOptions

JOB_TYPE = "bench_job"
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


class _DropExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _use(mode: str) -> TracerProvider | None:
    if mode == "off":
        tracing.use_tracer_provider(trace.NoOpTracerProvider())
        metrics.use_meter_provider(otel_metrics.NoOpMeterProvider())
        return None
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_DropExporter()))
    tracing.use_tracer_provider(provider)
    metrics.use_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    return provider


async def _handle(payload: dict[str, Any]) -> None:
    return None


async def _drain_once(settings: Settings, n: int, mode: str) -> float:
    provider = _use(mode)
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
    start = time.perf_counter()
    stats = await task
    elapsed = time.perf_counter() - start
    if provider is not None:
        provider.shutdown()
    if stats.done != n:
        raise SystemExit(f"{mode}: the worker finished {stats.done} of {n} jobs")
    return n / elapsed


def _per_job_cost_us(mode: str, n: int = 20_000) -> float:
    provider = _use(mode)
    start = time.perf_counter()
    for i in range(n):
        headers: dict[str, Any] = {"jobsys-attempt": 1, "jobsys-published-at-ms": 1}
        with tracing.publish_span(
            headers,
            job_type=JOB_TYPE,
            job_id="j",
            exchange="bench",
            routing_key="work",
            message_id=str(i),
            attempt=1,
        ):
            pass
        with tracing.consume_span(
            headers, job_type=JOB_TYPE, job_id="j", queue="bench.work", attempt=1
        ) as attempt:
            attempt.set_outcome("ok")
    elapsed = time.perf_counter() - start
    if provider is not None:
        provider.shutdown()
    return elapsed / n * 1e6


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


async def run(url: str, n: int, rounds: int) -> dict[str, float]:
    """Drain ``n`` jobs per round in each mode; return the best jobs/s of each."""
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
    settings = Settings(url=urlunsplit((parts.scheme, parts.netloc, "/" + vhost, "", "")))
    best = {"off": 0.0, "on": 0.0}
    try:
        async with BrokerConnection(settings) as conn:
            await apply_topology(conn, load_topology_text(TOPOLOGY), use_management=False)
        for round_ in range(rounds):
            # Alternate which mode goes first: the broker is still writing the last round's
            # messages away when the next fill starts, which slows whoever runs second.
            for mode in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                best[mode] = max(best[mode], await _drain_once(settings, n, mode))
    finally:
        _management(url, "DELETE", f"/api/vhosts/{quote(vhost, safe='')}")
        tracing.use_tracer_provider(None)
        metrics.use_meter_provider(None)
    return best


def main() -> None:
    """Parse arguments, run, print jobs/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="jobs per run (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; best counts (default 3)")
    parser.add_argument("--url", default=Settings.from_env().url, help="broker URL")
    args = parser.parse_args()
    cost = {mode: _per_job_cost_us(mode) for mode in ("off", "on")}
    best = asyncio.run(run(args.url, args.n, args.rounds))
    print(f"tracing benchmark: {args.n} jobs drained per run, best of {args.rounds}")
    print(f"  tracing off (no SDK)              {best['off']:9,.0f} jobs/s")
    print(f"  tracing on (SDK, no-op exporter)  {best['on']:9,.0f} jobs/s")
    print(f"  on / off = {best['on'] / best['off']:.2f}x (target >= 0.85x)")
    print(
        f"  publish_span + consume_span per job: {cost['off']:.1f} us without an SDK, "
        f"{cost['on']:.1f} us with it"
    )


if __name__ == "__main__":
    main()
