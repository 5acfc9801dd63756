"""Scale: a backlog growing to 1,000,000 jobs, its drain, and 100,000 delayed jobs due at once.

In one private vhost (created and deleted by the run), on the bench topology of
``bench.worker`` (one durable classic queue, a worker with prefetch 100 and concurrency 100):

* **grow**: fill the queue to each level of ``--levels`` (default 0, 250k, 500k, 1M) with
  ``publish_many``. At each level, a *sample*: raw aio-pika (the same window of confirms in
  flight) and jobsys ``publish_many`` each publish ``--sample`` jobs, then a raw aio-pika
  consumer and a jobsys worker (each a fresh child process, as in ``bench.worker``) each drain
  ``--sample`` jobs, so the level is where it was. Printed per level: both publish rates, both
  drain rates, the ratios, each child's peak RSS and the broker's memory;
* **drain**: a jobsys worker empties the whole backlog; its rate per tenth of the backlog
  (read from the queue's depth every 2 s) and its peak RSS;
* **delayed**: ``--delayed`` jobs published with one ``run_at`` for all (far enough ahead that
  every one is waiting before the first is due); while they wait, a sample as above; then a
  worker runs them and each job's lateness (start of the handler minus ``run_at``) is printed:
  none may be early, and the spread says how fast the broker hands a burst of due jobs on.

Run with ``.venv/bin/python -m bench.scale [--levels 0,250000,500000,1000000]
[--sample 20000] [--delayed 100000] [--url AMQP_URL]``. About 15 minutes at the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import statistics
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aio_pika

from bench.worker import (
    DEFAULT_URL,
    JOB_TYPE,
    MANAGEMENT_URL,
    _finish_child,
    _payload,
    _start_child,
    private_vhost,
    topology_yaml,
)
from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology
from jobsys.publish.producer import JobRequest, Producer
from jobsys.settings import Settings
from jobsys.topology.loader import load_topology_text
from jobsys.wire.headers import HEADER_ATTEMPT, HEADER_JOB_ID

WINDOW = 512  # confirms in flight, for jobsys and raw alike
FILL_CHUNK = 50_000


def _broker_memory_mib() -> float:
    """The broker node's memory use as it reports it (management API)."""
    parts = urlsplit(MANAGEMENT_URL)
    request = urllib.request.Request(
        f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api/nodes?columns=mem_used",
        headers={"authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        nodes = json.loads(response.read())
    return float(nodes[0]["mem_used"]) / 2**20


def _own_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _depth(url: str, queue: str) -> int:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await connection.close()


class Publishers:
    """A jobsys producer and a raw aio-pika channel on the same broker, open for the run."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.exchange_name = f"bench.x-{token}"
        self.producer = Producer(
            Settings(url=url), load_topology_text(topology_yaml(token), "bench.yaml").topology
        )

    async def __aenter__(self) -> Publishers:
        await self.producer.open()
        self.raw_connection = await aio_pika.connect(self.url)
        channel = await self.raw_connection.channel(publisher_confirms=True)
        self.raw_exchange = await channel.get_exchange(self.exchange_name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.close()
        await self.raw_connection.close()

    async def jobsys(self, n: int, **request: Any) -> float:
        """Publish ``n`` jobs with ``publish_many``; jobs/s. Every one must be confirmed."""
        began = time.perf_counter()
        results = await self.producer.publish_many(
            (JobRequest(JOB_TYPE, _payload(i), **request) for i in range(n)), window=WINDOW
        )
        elapsed = time.perf_counter() - began
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise SystemExit(f"{len(failed)} of {n} publishes failed: {failed[0]}")
        return n / elapsed

    async def raw(self, n: int) -> float:
        """Publish ``n`` persistent, mandatory, confirmed jobs with aio-pika, at most
        ``WINDOW`` in flight (what ``publish_many`` bounds itself to); jobs/s. Each carries the
        envelope headers a jobsys worker needs, since a jobsys worker may be the one that
        later takes it off the backlog."""
        window = asyncio.Semaphore(WINDOW)

        async def one(i: int) -> None:
            job_id = uuid.uuid4().hex
            async with window:
                await self.raw_exchange.publish(
                    aio_pika.Message(
                        json.dumps(_payload(i)).encode(),
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        type=JOB_TYPE,
                        message_id=job_id,
                        headers={HEADER_JOB_ID: job_id, HEADER_ATTEMPT: 1},
                    ),
                    "bench",
                    mandatory=True,
                )

        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - began)


async def _drain_with(consumer: str, url: str, token: str, n: int) -> dict[str, Any]:
    proc = await _start_child(consumer, url, token, "drain", n)
    result = await _finish_child(proc)
    result["rate"] = result["done"] / result["elapsed_s"]
    return result


async def sample(pubs: Publishers, n: int) -> dict[str, float]:
    """Publish ``n`` jobs raw and ``n`` with jobsys, then drain as many each way; each side
    twice, in the order raw, jobsys, jobsys, raw, so that a drift of the broker's state over
    the sample (paging, compaction) weighs on both alike. Rates are the mean of the two."""
    half = n // 2
    raw_pub = [await pubs.raw(half)]
    ours_pub = [await pubs.jobsys(half), await pubs.jobsys(half)]
    raw_pub.append(await pubs.raw(half))
    raw = [await _drain_with("raw", pubs.url, pubs.token, half)]
    ours = [await _drain_with("jobsys", pubs.url, pubs.token, half) for _ in range(2)]
    raw.append(await _drain_with("raw", pubs.url, pubs.token, half))
    return {
        "raw_publish": statistics.mean(raw_pub),
        "jobsys_publish": statistics.mean(ours_pub),
        "raw_drain": statistics.mean(r["rate"] for r in raw),
        "jobsys_drain": statistics.mean(r["rate"] for r in ours),
        "raw_rss": max(r["VmHWM"] for r in raw),
        "jobsys_rss": max(r["VmHWM"] for r in ours),
        "broker_mib": _broker_memory_mib(),
    }


def _print_sample(label: str, s: dict[str, float]) -> None:
    print(
        f"{label}: publish raw {s['raw_publish']:,.0f}/s, jobsys {s['jobsys_publish']:,.0f}/s "
        f"({s['jobsys_publish'] / s['raw_publish']:.2f}x); drain raw {s['raw_drain']:,.0f}/s, "
        f"jobsys {s['jobsys_drain']:,.0f}/s ({s['jobsys_drain'] / s['raw_drain']:.2f}x); "
        f"peak RSS raw {s['raw_rss']:.1f} MiB, jobsys {s['jobsys_rss']:.1f} MiB; "
        f"broker {s['broker_mib']:,.0f} MiB",
        flush=True,
    )


async def grow(pubs: Publishers, queue: str, levels: list[int], n: int) -> list[float]:
    """Fill to each level, sampling there; the fill rates of each chunk, in order."""
    fill_rates: list[float] = []
    for level in levels:
        while (depth := await _depth(pubs.url, queue)) < level:
            fill_rates.append(await pubs.jobsys(min(FILL_CHUNK, level - depth)))
        depth = await _depth(pubs.url, queue)
        _print_sample(f"backlog {depth:>9,}", await sample(pubs, n))
    return fill_rates


async def drain_all(url: str, token: str, queue: str) -> None:
    """A jobsys worker empties the queue; rate per tenth of the backlog, and its peak RSS."""
    total = await _depth(url, queue)
    if total == 0:
        return
    proc = await _start_child("jobsys", url, token, "drain", total)
    began = time.perf_counter()
    marks: list[tuple[float, int]] = [(0.0, total)]
    while proc.returncode is None:
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=2.0)
        except TimeoutError:
            marks.append((time.perf_counter() - began, await _depth(url, queue)))
    result = await _finish_child(proc)
    marks.append((result["elapsed_s"], 0))
    print(
        f"drain of {total:,}: {total / result['elapsed_s']:,.0f} jobs/s overall, "
        f"peak RSS {result['VmHWM']:.1f} MiB, broker {_broker_memory_mib():,.0f} MiB after"
    )
    tenths = []
    for k in range(10):
        hi, lo = total - total * k // 10, total - total * (k + 1) // 10
        t_hi = next(t for t, d in marks if d <= hi)
        t_lo = next(t for t, d in marks if d <= lo)
        done = next(d for _, d in marks if d <= hi) - next(d for _, d in marks if d <= lo)
        tenths.append(done / (t_lo - t_hi) if t_lo > t_hi else float("nan"))
    print("  jobs/s per tenth, first to last: " + ", ".join(f"{r:,.0f}" for r in tenths))


async def delayed(pubs: Publishers, n: int, sample_n: int, min_lead_s: float) -> None:
    """``n`` jobs with one ``run_at``; a sample while they wait; then their lateness."""
    lead_s = max(min_lead_s, n / 500)  # every job must be waiting before the first is due
    due = datetime.now(UTC).timestamp() + lead_s
    run_at = datetime.fromtimestamp(due, UTC)
    began = time.perf_counter()
    # The payload's "t" is what the latency child measures from: the due time.
    results = await pubs.producer.publish_many(
        (JobRequest(JOB_TYPE, {**_payload(i), "t": due}, run_at=run_at) for i in range(n)),
        window=WINDOW,
    )
    publish_s = time.perf_counter() - began
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise SystemExit(f"{len(failed)} of {n} delayed publishes failed: {failed[0]}")
    print(f"{n:,} delayed jobs published at {n / publish_s:,.0f}/s, due in {lead_s:.0f} s")
    _print_sample(f"{n:,} delayed waiting", await sample(pubs, sample_n))
    if datetime.now(UTC).timestamp() > due:
        print("  (the sample ran past the due time: lateness below includes it)")
    proc = await _start_child("jobsys", pubs.url, pubs.token, "latency", n)
    result = await _finish_child(proc)
    lateness = sorted(result["latencies"])
    early = sum(1 for x in lateness if x < 0)
    print(
        f"  {len(lateness):,} run; early: {early}; lateness after run_at: "
        f"min {lateness[0]:.2f} s, median {statistics.median(lateness):.2f} s, "
        f"p99 {lateness[int(len(lateness) * 0.99)]:.2f} s, max {lateness[-1]:.2f} s; "
        f"worker peak RSS {result['VmHWM']:.1f} MiB"
    )


async def run(args: argparse.Namespace) -> None:
    token = uuid.uuid4().hex[:8]
    queue = f"bench.q-{token}"
    with private_vhost(args.url) as url:
        async with BrokerConnection(Settings(url=url)) as conn:
            await apply_topology(
                conn, load_topology_text(topology_yaml(token)), use_management=False
            )
        async with Publishers(url, token) as pubs:
            fill_rates = await grow(pubs, queue, args.levels, args.sample)
            if fill_rates:
                print(
                    f"fill with publish_many, {FILL_CHUNK:,}-job chunks: first "
                    f"{fill_rates[0]:,.0f}/s, median {statistics.median(fill_rates):,.0f}/s, "
                    f"last {fill_rates[-1]:,.0f}/s"
                )
            await drain_all(url, token, queue)
            if args.delayed:
                await delayed(pubs, args.delayed, args.sample, args.min_lead)
        print(f"this process (the publisher): peak RSS {_own_peak_rss_mib():.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--levels",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[0, 250_000, 500_000, 1_000_000],
        help="backlog levels to sample at, comma-separated",
    )
    parser.add_argument("--sample", type=int, default=20_000, help="jobs per sample and side")
    parser.add_argument("--delayed", type=int, default=100_000, help="delayed jobs (0: skip)")
    parser.add_argument(
        "--min-lead", type=float, default=120.0, help="seconds from now to the delayed jobs' run_at"
    )
    parser.add_argument("--url", default=os.environ.get("JOBSYS_URL", DEFAULT_URL))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
