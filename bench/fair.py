"""Weighted pools: the shares of jobs started against the weights, a priority queue beside them.

Four scenarios, each on queues filled before the worker starts (so every queue named has a
backlog for the whole count), in a private vhost:

* backlog: weights urgent 6, normal 3, bulk 1; the shares of the first ``-n`` jobs started
  (default 10,000), and the worst share over any 1,000 in a row;
* flood: urgent 100, bulk 1; how many bulk jobs start among the first 101 x 50;
* idle: weights 6, 3, 1 with nothing in normal; the shares of urgent and bulk (6:1 expected);
* priority only: one classic queue with ``x-max-priority: 10``, 2,000 priority-9 jobs and 100
  priority-1 jobs published *first*; how many priority-1 jobs start among the first 2,000.

Then the cost: the weighted pool draining the backlog of the three queues with a no-op handler,
against raw aio-pika consuming the same three queues (prefetch 20 each, one ack per message), in
the same run.

Run with ``.venv/bin/python -m bench.fair [-n 10000] [--job-ms 1] [--concurrency 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import quote

from bench.worker import DEFAULT_URL, _management, _vhost_url

WEIGHTS = {"urgent": 6, "normal": 3, "bulk": 1}


def topology_yaml(concurrency: int) -> str:
    """Three queues, a priority queue, a weighted pool of the three and a flooded pool."""
    return f"""
version: 1
exchanges:
  fair.jobs: {{type: direct}}
queues:
  fair.urgent: {{type: classic}}
  fair.normal: {{type: classic}}
  fair.bulk: {{type: classic}}
  fair.prio:
    type: classic
    max_priority: 10
    consumer: {{concurrency: {concurrency}, prefetch: {2 * concurrency}}}
bindings:
  - {{exchange: fair.jobs, queue: fair.urgent, routing_key: urgent}}
  - {{exchange: fair.jobs, queue: fair.normal, routing_key: normal}}
  - {{exchange: fair.jobs, queue: fair.bulk, routing_key: bulk}}
  - {{exchange: fair.jobs, queue: fair.prio, routing_key: prio}}
job_types:
  urgent: {{exchange: fair.jobs, routing_key: urgent, timeout: 60s}}
  normal: {{exchange: fair.jobs, routing_key: normal, timeout: 60s}}
  bulk: {{exchange: fair.jobs, routing_key: bulk, timeout: 60s}}
  prio: {{exchange: fair.jobs, routing_key: prio, timeout: 60s}}
pools:
  mixed:
    concurrency: {concurrency}
    queues: {{fair.urgent: 6, fair.normal: 3, fair.bulk: 1}}
  flooded:
    concurrency: {concurrency}
    queues: {{fair.urgent: 100, fair.bulk: 1}}
"""


class Bench:
    """One vhost, its topology, and the helpers the scenarios share."""

    def __init__(self, url: str, concurrency: int, job_ms: float) -> None:
        from jobsys.settings import Settings
        from jobsys.topology.loader import load_topology_text

        self.settings = Settings(url=url)
        self.loaded = load_topology_text(topology_yaml(concurrency), "fair.yaml")
        self.job_s = job_ms / 1000

    async def apply(self) -> None:
        from jobsys.broker.connection import BrokerConnection
        from jobsys.ops.declare import apply_topology

        async with BrokerConnection(self.settings) as conn:
            await apply_topology(conn, self.loaded, use_management=False)

    async def fill(self, job_type: str, n: int, priority: int | None = None) -> None:
        from jobsys.publish.producer import JobRequest, Producer

        async with Producer(self.settings, self.loaded.topology) as producer:
            for start in range(0, n, 2000):
                requests = [
                    JobRequest(job_type, {"i": i, "p": priority}, priority=priority)
                    for i in range(start, min(n, start + 2000))
                ]
                for result in await producer.publish_many(requests):
                    if isinstance(result, Exception):
                        raise SystemExit(f"publish failed: {result}")

    async def purge(self) -> None:
        from jobsys.broker.connection import BrokerConnection

        async with BrokerConnection(self.settings) as conn:
            channel = await conn.channel(confirms=False)
            for name in self.loaded.topology.queues:
                queue = await channel.get_queue(name, ensure=True)
                await queue.purge()

    async def starts(self, wanted: int, *, pool: str | None, queues: tuple[str, ...] = ()) -> Any:
        """The label of each of the first ``wanted`` jobs started, and the seconds they took."""
        from jobsys.app import App
        from jobsys.consume.options import WorkerOptions
        from jobsys.consume.worker import Worker

        order: list[str] = []
        enough = asyncio.Event()
        app = App()

        def handler(job_type: str) -> Any:
            async def run(payload: Any) -> None:
                label = job_type if payload.get("p") is None else f"priority {payload['p']}"
                order.append(label)
                if len(order) >= wanted:
                    enough.set()
                if self.job_s:
                    await asyncio.sleep(self.job_s)

            return run

        for job_type in ("urgent", "normal", "bulk", "prio"):
            app.handler(job_type)(handler(job_type))
        options = WorkerOptions(pool=pool, queues=queues, grace_s=5)
        worker = Worker(app, self.loaded, self.settings, options)
        task = asyncio.create_task(worker.run())
        await worker.ready.wait()
        began = time.perf_counter()
        await asyncio.wait_for(enough.wait(), 600)
        elapsed = time.perf_counter() - began
        worker.request_stop()
        await task
        await self.purge()
        return order[:wanted], elapsed


def _shares(order: list[str]) -> dict[str, float]:
    counted = Counter(order)
    return {label: counted[label] / len(order) for label in WEIGHTS}


def _print_shares(title: str, order: list[str], expected: dict[str, float]) -> None:
    shares = _shares(order)
    print(f"{title} ({len(order):,} jobs started):")
    for label, want in expected.items():
        off = (shares[label] - want) / want * 100 if want else 0.0
        print(
            f"  {label:7} expected {want:6.1%}  got {shares[label]:6.1%}  "
            f"({off:+.1f} % of its share)"
        )


def _worst_window(order: list[str], expected: dict[str, float], window: int = 1000) -> str:
    worst = 0.0
    for start in range(0, len(order) - window + 1, window):
        shares = _shares(order[start : start + window])
        worst = max(worst, *(abs(shares[k] - v) / v for k, v in expected.items() if v))
    return f"  worst share over any {window:,} in a row: {worst * 100:.1f} % off"


async def backlog(bench: Bench, n: int) -> float:
    # Each queue keeps a backlog through all n starts: a fifth more than its share.
    for label, weight in WEIGHTS.items():
        await bench.fill(label, n * weight // 10 * 6 // 5 + 100)
    order, elapsed = await bench.starts(n, pool="mixed")
    expected = {k: w / 10 for k, w in WEIGHTS.items()}
    _print_shares("backlog on every queue, weights 6/3/1", order, expected)
    print(_worst_window(order, expected))
    return n / elapsed


async def flood(bench: Bench, rounds: int) -> None:
    await bench.fill("urgent", 101 * rounds + 500)
    await bench.fill("bulk", rounds * 2)
    order, _ = await bench.starts(101 * rounds, pool="flooded")
    print(
        f"flood, weights urgent 100 / bulk 1: bulk started {order.count('bulk')} of the first "
        f"{len(order):,} (1 in 101 = {rounds})"
    )


async def idle(bench: Bench, n: int) -> None:
    await bench.fill("urgent", n * 6 // 7 * 6 // 5)
    await bench.fill("bulk", n // 7 * 6 // 5)
    order, _ = await bench.starts(n, pool="mixed")
    _print_shares("normal idle, urgent 6 / bulk 1", order, {"urgent": 6 / 7, "bulk": 1 / 7})


async def priority_only(bench: Bench, high: int, low: int) -> None:
    await bench.fill("prio", low, priority=1)
    await bench.fill("prio", high + 500, priority=9)
    order, _ = await bench.starts(high, pool=None, queues=("fair.prio",))
    print(
        "priority only (one queue, max_priority 10): priority-1 jobs started "
        f"{order.count('priority 1')} of the first {high:,}, though all {low} were published "
        "before the priority-9 ones"
    )


async def raw_drain(url: str, n: int) -> float:
    """Raw aio-pika: consume the three queues (prefetch 20 each, one ack per message)."""
    import aio_pika
    from aio_pika.abc import AbstractIncomingMessage

    connection = await aio_pika.connect(url)
    done = asyncio.Event()
    count = 0

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal count
        await message.ack()
        count += 1
        if count >= n:
            done.set()

    began = time.perf_counter()
    for name in ("fair.urgent", "fair.normal", "fair.bulk"):
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=20)
        queue = await channel.get_queue(name, ensure=True)
        await queue.consume(on_message)
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - began
    await connection.close()
    return n / elapsed


async def cost(bench: Bench, url: str, n: int) -> None:
    bench.job_s = 0.0
    rates = {}
    for name in ("raw", "jobsys"):
        for label, weight in WEIGHTS.items():
            await bench.fill(label, n * weight // 10 * 6 // 5 + 100)
        if name == "raw":
            rates[name] = await raw_drain(url, n)
            await bench.purge()
        else:
            _, elapsed = await bench.starts(n, pool="mixed")
            rates[name] = n / elapsed
    print(
        f"no-op drain of {n:,} from the three queues: raw aio-pika {rates['raw']:,.0f} jobs/s, "
        f"jobsys weighted pool {rates['jobsys']:,.0f} jobs/s "
        f"(ratio {rates['jobsys'] / rates['raw']:.2f}x)"
    )


async def run(args: argparse.Namespace) -> None:
    vhost = f"jobsys-bench-{uuid.uuid4().hex[:8]}"
    _management("PUT", f"/api/vhosts/{quote(vhost, safe='')}")
    _management(
        "PUT",
        f"/api/permissions/{quote(vhost, safe='')}/guest",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    url = _vhost_url(args.url, vhost)
    try:
        bench = Bench(url, args.concurrency, args.job_ms)
        await bench.apply()
        print(f"handler: asyncio.sleep({args.job_ms} ms); concurrency {args.concurrency}")
        await backlog(bench, args.n)
        await flood(bench, 50)
        await idle(bench, 3500)
        await priority_only(bench, 2000, 100)
        await cost(bench, url, args.n)
    finally:
        _management("DELETE", f"/api/vhosts/{quote(vhost, safe='')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--job-ms", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--url", default=DEFAULT_URL)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
