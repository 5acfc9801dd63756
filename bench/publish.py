"""Publish throughput: jobsys against raw aio-pika doing the same work, in the same run.

Four runs against one durable classic queue, every message persistent, ``mandatory`` and
confirmed, the same ~200-byte JSON payload:

* raw one-by-one: aio-pika ``exchange.publish(Message(...), mandatory=True)``, awaiting each;
* jobsys one-by-one: ``await producer.publish(...)`` for each job;
* raw gathered: every aio-pika publish started at once, confirms awaited with ``gather``;
* jobsys ``publish_many``: the same jobs with a bounded window of confirms in flight.

Run with ``.venv/bin/python -m bench.publish [-n 5000] [--rounds 5] [--window W] [--url URL]``. The
queue and exchange get unique names and are deleted afterwards. Each figure is the best of
``--rounds`` rounds; the rounds interleave raw and jobsys so both see the same broker state,
and the median of the per-round ratios is printed too. CPU per job is this process's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aio_pika

from jobsys.publish.producer import DEFAULT_WINDOW, JobRequest, Producer, Receipt
from jobsys.settings import Settings
from jobsys.topology.model import Topology

JOB_TYPE = "bench_job"
RAW_ONE = "raw aio-pika, one by one"
ONE = "jobsys publish, one by one"
RAW_MANY = "raw aio-pika, gathered"
MANY = "jobsys publish_many"


def _payload(i: int) -> dict[str, object]:
    if os.environ.get("JOBSYS_BENCH_PAYLOAD") == "small":
        # About 100 bytes encoded: the jobs of bench.table's comparison.
        return {"index": i, "to": "someone@example.com", "t": time.time(), "note": "x" * 24}
    # About 200 bytes encoded, like a typical small job.
    return {
        "index": i,
        "to": "someone@example.com",
        "subject": "Your weekly report is ready",
        "template": "weekly-report-v2",
        "locale": "en-GB",
        "tags": ["report", "weekly", "email"],
        "note": "x" * 40,
    }


def _topology(exchange: str, queue: str) -> Topology:
    return Topology.model_validate(
        {
            "version": 1,
            "exchanges": {exchange: {"type": "direct"}},
            "queues": {queue: {"type": "classic"}},
            "bindings": [{"exchange": exchange, "queue": queue, "routing_key": queue}],
            "job_types": {JOB_TYPE: {"exchange": exchange, "routing_key": queue}},
        }
    )


@dataclass
class Figures:
    """Best throughput, and client CPU per job in that run, of one variant."""

    rate: float = 0.0  # jobs/s
    cpu_us: float = 0.0  # this process's CPU time per job, in microseconds


async def _timed(label: str, n: int, work: Callable[[], Awaitable[int]]) -> tuple[float, float]:
    cpu_start, start = time.process_time(), time.perf_counter()
    confirmed = await work()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if confirmed != n:
        raise SystemExit(f"{label}: only {confirmed} of {n} confirmed")
    return n / elapsed, cpu / n * 1e6


async def run(
    url: str, n: int, rounds: int, window: int = DEFAULT_WINDOW
) -> tuple[dict[str, Figures], list[tuple[float, float]]]:
    """Run every variant ``rounds`` times; return the best figures of each, and per round the
    two ratios (one by one, many), which drift less than absolute rates on a busy machine."""
    token = uuid.uuid4().hex[:8]
    exchange_name, queue_name = f"bench.publish-{token}", f"bench.publish-{token}"
    settings = Settings(url=url)
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.declare_exchange(exchange_name, "direct", durable=True)
    queue = await channel.declare_queue(
        queue_name, durable=True, arguments={"x-queue-type": "classic"}
    )
    await queue.bind(exchange, queue_name)

    def body(i: int) -> bytes:
        # Raw aio-pika encodes each payload too: both sides do the same work per job.
        return json.dumps(_payload(i), separators=(",", ":")).encode()

    async def raw_one_by_one() -> int:
        for i in range(n):
            await exchange.publish(
                aio_pika.Message(
                    body(i),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    type=JOB_TYPE,
                ),
                queue_name,
                mandatory=True,
            )
        return n

    async def raw_gathered() -> int:
        results = await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        body(i),
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        type=JOB_TYPE,
                    ),
                    queue_name,
                    mandatory=True,
                )
                for i in range(n)
            )
        )
        return len(results)

    producer = Producer(settings, _topology(exchange_name, queue_name))
    await producer.open()

    async def jobsys_one_by_one() -> int:
        for i in range(n):
            await producer.publish(JOB_TYPE, _payload(i))
        return n

    async def jobsys_many() -> int:
        results = await producer.publish_many(
            (JobRequest(JOB_TYPE, _payload(i)) for i in range(n)), window=window
        )
        return sum(isinstance(r, Receipt) for r in results)

    variants: dict[str, Callable[[], Awaitable[int]]] = {
        RAW_ONE: raw_one_by_one,
        ONE: jobsys_one_by_one,
        RAW_MANY: raw_gathered,
        MANY: jobsys_many,
    }
    best = {label: Figures() for label in variants}
    ratios: list[tuple[float, float]] = []
    try:
        for _ in range(rounds):
            rates: dict[str, float] = {}
            for label, work in variants.items():
                rate, cpu_us = await _timed(label, n, work)
                rates[label] = rate
                if rate > best[label].rate:
                    best[label] = Figures(rate, cpu_us)
                await queue.purge()
            ratios.append((rates[ONE] / rates[RAW_ONE], rates[MANY] / rates[RAW_MANY]))
    finally:
        await producer.close()
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        await connection.close()
    return best, ratios


def main() -> None:
    """Parse arguments, run, print jobs/s and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="jobs per run (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="publish_many window")
    parser.add_argument("--url", default=Settings.from_env().url, help="broker URL")
    args = parser.parse_args()
    best, ratios = asyncio.run(run(args.url, args.n, args.rounds, args.window))
    print(f"publish benchmark: {args.n} persistent confirmed jobs per run, best of {args.rounds}")
    for label, figures in best.items():
        print(f"  {label:<28} {figures.rate:9,.0f} jobs/s  {figures.cpu_us:5.0f} us CPU/job")
    one = best[ONE].rate / best[RAW_ONE].rate
    many = best[MANY].rate / best[RAW_MANY].rate
    median_one = statistics.median(r[0] for r in ratios)
    median_many = statistics.median(r[1] for r in ratios)
    print(
        f"  one by one:   jobsys / raw = {one:.2f}x best, {median_one:.2f}x median (target 1.30x)"
    )
    print(
        f"  publish_many: jobsys / raw gathered = {many:.2f}x best, {median_many:.2f}x median "
        "(target 1.00x)"
    )


if __name__ == "__main__":
    main()
