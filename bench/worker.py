"""Worker speed: jobsys consumer pools against a raw aio-pika consumer, in the same run.

Two measurements, each done by jobsys and by raw aio-pika (prefetch 100, one ``ack`` per
message, no decoding), each consumer in a fresh child process of its own:

* drain: a queue pre-filled with ``-n`` jobs (~200-byte JSON payloads) is emptied by a
  no-op handler; jobs/s from the start of consuming to the last ack;
* latency: jobs published at a steady ``--rate`` (default 200/s); the time from publish to the
  start of the handler (raw: the start of the callback), p50 and p99.

The child reports its resident memory (``VmRSS`` and peak ``VmHWM`` from /proc/self/status)
at the end. Everything runs in a private vhost (created through the management API and
deleted afterwards).

Run with ``.venv/bin/python -m bench.worker [-n 20000] [--latency-n 2000] [--rate 200]``.
``--processes P`` instead compares ``jobsys worker --processes P`` (a supervisor and P worker
processes) with the single raw consumer, drain only (``bench/worker_processes.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import statistics
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

JOB_TYPE = "bench_job"
#: What a run of ``bench.table`` sets for every child: prefetch and concurrency of the consumer,
#: ``small`` (~100-byte) payloads, and a file the handler appends a line to (raw and jobsys).
CONFIG_ENV = (
    "JOBSYS_BENCH_PREFETCH",
    "JOBSYS_BENCH_CONCURRENCY",
    "JOBSYS_BENCH_PAYLOAD",
    "JOBSYS_BENCH_APPEND_TO",
)


def _prefetch() -> int:
    return int(os.environ.get("JOBSYS_BENCH_PREFETCH", "100"))


def _concurrency() -> int:
    return int(os.environ.get("JOBSYS_BENCH_CONCURRENCY", "100"))


def append_line(path: str) -> Any:
    """The handler body of ``bench.table``: append one line to a file opened once."""
    fh = open(path, "a", buffering=1, encoding="ascii")  # noqa: SIM115 - open for the process

    def append(index: object) -> None:
        fh.write(f"{index}\n")

    return append


DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
MANAGEMENT_URL = os.environ.get("JOBSYS_MANAGEMENT_URL", "http://127.0.0.1:15672")


def topology_yaml(token: str) -> str:
    """The bench topology: one direct exchange, one classic queue, one job type."""
    return f"""
version: 1
exchanges:
  bench.x-{token}: {{type: direct}}
queues:
  bench.q-{token}:
    type: classic
    consumer: {{concurrency: {_concurrency()}, prefetch: {_prefetch()}}}
bindings:
  - {{exchange: bench.x-{token}, queue: bench.q-{token}, routing_key: bench}}
job_types:
  {JOB_TYPE}: {{exchange: bench.x-{token}, routing_key: bench, timeout: 60s}}
"""


def _payload(i: int) -> dict[str, Any]:
    if os.environ.get("JOBSYS_BENCH_PAYLOAD") == "small":
        # About 100 bytes encoded: the comparison's jobs.
        return {"index": i, "to": "someone@example.com", "t": time.time(), "note": "x" * 24}
    # About 200 bytes encoded, like a typical small job.
    return {
        "index": i,
        "to": "someone@example.com",
        "subject": "Your weekly report is ready",
        "template": "weekly-report-v2",
        "tags": ["report", "weekly", "email"],
        "t": time.time(),
        "note": "x" * 50,
    }


def _memory() -> dict[str, float]:
    # CPU time too: on a busy machine wall-clock rates swing, CPU per job much less.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"cpu_s": usage.ru_utime + usage.ru_stime}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return out


# -- children: one consumer each -------------------------------------------------------------


async def child_jobsys(url: str, token: str, mode: str, n: int) -> dict[str, Any]:
    """Run a jobsys worker with a no-op handler until ``n`` jobs are done."""
    from jobsys.app import App
    from jobsys.consume.options import WorkerOptions
    from jobsys.consume.worker import Worker
    from jobsys.settings import Settings
    from jobsys.topology.loader import load_topology_text

    loaded = load_topology_text(topology_yaml(token), "bench.yaml")
    app = App()
    latencies: list[float] = []

    append_to = os.environ.get("JOBSYS_BENCH_APPEND_TO")
    if mode == "latency":

        @app.handler(JOB_TYPE)
        async def record(payload: dict[str, Any]) -> None:
            latencies.append(time.time() - payload["t"])

    elif append_to:
        append = append_line(append_to)

        @app.handler(JOB_TYPE)
        async def append_index(payload: dict[str, Any]) -> None:
            append(payload["index"])

    else:

        @app.handler(JOB_TYPE)
        async def noop(payload: Any) -> None:
            return None

    _bench_metrics(os.environ.get("JOBSYS_BENCH_METRICS", "off"))
    _bench_middleware(app, int(os.environ.get("JOBSYS_BENCH_MIDDLEWARE", "0")))
    worker = Worker(app, loaded, Settings(url=url), WorkerOptions(max_jobs=n))
    start = time.perf_counter()
    task = asyncio.create_task(worker.run())
    await worker.ready.wait()
    print("ready", flush=True)
    await task
    elapsed = time.perf_counter() - start
    return {"elapsed_s": elapsed, "done": worker.stats.done, "latencies": latencies, **_memory()}


def _bench_middleware(app: Any, count: int) -> None:
    """Register ``count`` no-op attempt middlewares on ``app`` (for ``bench.middleware``)."""
    for _ in range(count):

        async def passthrough(ctx: Any, call_next: Any) -> Any:
            return await call_next()

        app.add_middleware(passthrough)


def _bench_metrics(mode: str) -> None:
    """Turn on a metrics exporter for ``bench.metrics``: ``prometheus`` (jobsys's
    prometheus-client exporter) or ``otel-prometheus`` (the OpenTelemetry SDK with its
    Prometheus reader; needs opentelemetry-exporter-prometheus). ``off`` changes nothing."""
    if mode == "prometheus":
        from jobsys.observe.prometheus import job_metrics_registry

        job_metrics_registry()
    elif mode == "otel-prometheus":
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider

        from jobsys.observe import metrics

        metrics.use_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))


async def child_raw(url: str, token: str, mode: str, n: int) -> dict[str, Any]:
    """Consume with plain aio-pika: prefetch 100, ack each message."""
    # Imported here so that the raw child's memory figure carries no jobsys module.
    import aio_pika
    from aio_pika.abc import AbstractIncomingMessage

    start = time.perf_counter()
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=_prefetch())
    queue = await channel.get_queue(f"bench.q-{token}", ensure=True)
    finished = asyncio.Event()
    latencies: list[float] = []
    count = 0

    taken = 0
    append_to = os.environ.get("JOBSYS_BENCH_APPEND_TO")
    append = append_line(append_to) if append_to else None

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal count, taken
        if taken >= n:
            return  # beyond the n asked for: left unacked, the broker requeues it at close
        taken += 1
        if mode == "latency":
            latencies.append(time.time() - json.loads(message.body)["t"])
        elif append is not None:
            append(json.loads(message.body)["index"])
        await message.ack()
        count += 1
        if count >= n:
            finished.set()

    await queue.consume(on_message)
    print("ready", flush=True)
    await finished.wait()
    elapsed = time.perf_counter() - start
    await connection.close()
    return {"elapsed_s": elapsed, "done": count, "latencies": latencies, **_memory()}


CONSUMERS = {"jobsys": child_jobsys, "raw": child_raw}


# -- the parent: set up, publish, start children, report ----------------------------------------


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


@contextlib.contextmanager
def private_vhost(url: str) -> Iterator[str]:
    """A fresh vhost for one benchmark run (guest may do anything in it), deleted afterwards;
    yields ``url`` pointed at it."""
    vhost = f"jobsys-bench-{uuid.uuid4().hex[:8]}"
    _management("PUT", f"/api/vhosts/{quote(vhost, safe='')}")
    try:
        _management(
            "PUT",
            f"/api/permissions/{quote(vhost, safe='')}/guest",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
        yield _vhost_url(url, vhost)
    finally:
        _management("DELETE", f"/api/vhosts/{quote(vhost, safe='')}")


def _vhost_url(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, ""))


async def _start_child(consumer: str, url: str, token: str, mode: str, n: int) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.worker",
        "--child",
        consumer,
        "--mode",
        mode,
        "--token",
        token,
        "-n",
        str(n),
        "--url",
        url,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if line.strip() != b"ready":
        raise SystemExit(f"{consumer} child did not start: {line!r}")
    return proc


async def _finish_child(proc: Any) -> dict[str, Any]:
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"child failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def _fill(url: str, token: str, n: int) -> None:
    from jobsys.publish.producer import JobRequest, Producer
    from jobsys.settings import Settings
    from jobsys.topology.loader import load_topology_text

    settings = Settings(url=url)
    loaded = load_topology_text(topology_yaml(token), "bench.yaml")
    async with Producer(settings, loaded.topology) as producer:
        results = await producer.publish_many(JobRequest(JOB_TYPE, _payload(i)) for i in range(n))
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise SystemExit(f"{len(failed)} publishes failed: {failed[0]}")


async def drain(consumer: str, url: str, token: str, n: int) -> dict[str, Any]:
    """Fill the queue with ``n`` jobs, then let ``consumer`` empty it."""
    await _fill(url, token, n)
    proc = await _start_child(consumer, url, token, "drain", n)
    result = await _finish_child(proc)
    result["rate"] = result["done"] / result["elapsed_s"]
    result["cpu_us"] = result["cpu_s"] / result["done"] * 1e6
    return result


async def latency(consumer: str, url: str, token: str, n: int, rate: float) -> dict[str, Any]:
    """Publish ``n`` jobs at ``rate`` per second while ``consumer`` runs them."""
    from jobsys.publish.producer import Producer
    from jobsys.settings import Settings
    from jobsys.topology.loader import load_topology_text

    loaded = load_topology_text(topology_yaml(token), "bench.yaml")
    proc = await _start_child(consumer, url, token, "latency", n)
    async with Producer(Settings(url=url), loaded.topology) as producer:
        loop = asyncio.get_running_loop()
        start = loop.time()
        pending = []
        for i in range(n):
            # Absolute pacing: a late publish does not push the later ones back.
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            pending.append(asyncio.create_task(producer.publish(JOB_TYPE, _payload(i))))
        await asyncio.gather(*pending)
    result = await _finish_child(proc)
    result["ms"] = [x * 1000 for x in result.pop("latencies")]
    return result


def _percentiles(ms: list[float]) -> tuple[float, float]:
    ordered = sorted(ms)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def run(args: argparse.Namespace) -> None:
    """Run every measurement, raw and jobsys interleaved, and print figures and ratios."""
    from jobsys.broker.connection import BrokerConnection
    from jobsys.ops.declare import apply_topology
    from jobsys.settings import Settings
    from jobsys.topology.loader import load_topology_text

    token = uuid.uuid4().hex[:8]
    with private_vhost(args.url) as url:
        async with BrokerConnection(Settings(url=url)) as conn:
            await apply_topology(
                conn, load_topology_text(topology_yaml(token)), use_management=False
            )
        if args.processes:
            from bench import worker_processes

            await worker_processes.run(args, url, token)
            return
        runs: dict[str, list[dict[str, Any]]] = {"raw": [], "jobsys": []}
        for round_no in range(args.rounds):
            for consumer in ("raw", "jobsys"):
                result = await drain(consumer, url, token, args.n)
                runs[consumer].append(result)
                print(
                    f"round {round_no + 1} drain {consumer:6}: {result['rate']:6.0f} jobs/s, "
                    f"CPU {result['cpu_us']:4.0f} us/job (process total, setup included), "
                    f"peak RSS {result['VmHWM']:.1f} MiB"
                )
        best = {k: max(v, key=lambda r: r["rate"]) for k, v in runs.items()}
        median_rate = {k: statistics.median(r["rate"] for r in v) for k, v in runs.items()}
        median_cpu = {k: statistics.median(r["cpu_us"] for r in v) for k, v in runs.items()}
        # Latency samples are pooled over interleaved rounds, so that a burst of load from
        # elsewhere on the machine does not land on one consumer only.
        lat: dict[str, dict[str, Any]] = {}
        for round_no in range(args.latency_rounds):
            for consumer in ("raw", "jobsys"):
                r = await latency(consumer, url, token, args.latency_n, args.rate)
                p50, p99 = _percentiles(r["ms"])
                print(
                    f"round {round_no + 1} latency {consumer:6} at {args.rate:g}/s: "
                    f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, peak RSS {r['VmHWM']:.1f} MiB"
                )
                pooled = lat.setdefault(consumer, {"ms": [], "VmHWM": 0.0})
                pooled["ms"] += r["ms"]
                pooled["VmHWM"] = max(pooled["VmHWM"], r["VmHWM"])
        for pooled in lat.values():
            pooled["p50_ms"], pooled["p99_ms"] = _percentiles(pooled["ms"])
        print()
        raw_rate, jobsys_rate = best["raw"]["rate"], best["jobsys"]["rate"]
        print(
            f"drain, best of {args.rounds}: raw {raw_rate:.0f} jobs/s, jobsys "
            f"{jobsys_rate:.0f} jobs/s -> {jobsys_rate / raw_rate:.2f}x raw (target >= 1.0x)"
        )
        print(
            f"drain, median of {args.rounds}: raw {median_rate['raw']:.0f} jobs/s, jobsys "
            f"{median_rate['jobsys']:.0f} jobs/s -> "
            f"{median_rate['jobsys'] / median_rate['raw']:.2f}x raw"
        )
        print(
            f"drain, CPU per job (median): raw {median_cpu['raw']:.0f} us, jobsys "
            f"{median_cpu['jobsys']:.0f} us -> "
            f"raw/jobsys {median_cpu['raw'] / median_cpu['jobsys']:.2f}x"
        )
        ratio = lat["jobsys"]["p99_ms"] / lat["raw"]["p99_ms"]
        print(
            f"latency p50 (pooled): raw {lat['raw']['p50_ms']:.2f} ms, "
            f"jobsys {lat['jobsys']['p50_ms']:.2f} ms"
        )
        print(
            f"latency p99 (pooled): raw {lat['raw']['p99_ms']:.2f} ms, jobsys "
            f"{lat['jobsys']['p99_ms']:.2f} ms -> {ratio:.2f}x raw (target <= 1.5x)"
        )
        peak = max(best["jobsys"]["VmHWM"], lat["jobsys"]["VmHWM"])
        raw_peak = max(best["raw"]["VmHWM"], lat["raw"]["VmHWM"])
        print(
            f"worker process memory, peak RSS: jobsys {peak:.1f} MiB (target <= 40 MiB), "
            f"raw aio-pika {raw_peak:.1f} MiB"
        )


def main() -> None:
    """Command-line entry point (the parent, or a child with ``--child``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="jobs to drain per run")
    parser.add_argument("--latency-n", type=int, default=2000, help="jobs in the latency run")
    parser.add_argument("--rate", type=float, default=200.0, help="jobs/s in the latency run")
    parser.add_argument("--latency-rounds", type=int, default=2, help="latency rounds, pooled")
    parser.add_argument("--rounds", type=int, default=3, help="drain rounds, interleaved")
    parser.add_argument("--url", default=os.environ.get("JOBSYS_URL", DEFAULT_URL))
    parser.add_argument(
        "--processes", type=int, help="drain with `jobsys worker --processes P` instead"
    )
    parser.add_argument("--child", choices=sorted(CONSUMERS), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("drain", "latency"), help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = asyncio.run(CONSUMERS[args.child](args.url, args.token, args.mode, args.n))
        print(json.dumps(result), flush=True)
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
