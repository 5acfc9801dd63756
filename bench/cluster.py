"""Confirmed publishing on a 3-node cluster: a classic queue, one quorum queue, and three quorum
queues whose leaders sit on three nodes with one producer per node; jobsys ``publish_many``
against raw aio-pika gathered publishes, in the same run.

Run with ``.venv/bin/python -m bench.cluster [-n 3000] [--rounds 2]``. It starts its own three
RabbitMQ nodes with the test harness's recipe (``rabbitN@localhost`` for N from
``JOBSYS_TEST_NODES_FROM`` + 1, ports 5671+N), forms a cluster, measures, and stops them; the
shared broker is not touched. On one machine the three nodes share its cores, so the figures
say what replication costs here, not what three machines would sustain (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

import aio_pika

from bench.publish import JOB_TYPE, _payload
from jobsys.publish.producer import DEFAULT_WINDOW, JobRequest, Producer, Receipt
from jobsys.settings import Settings
from jobsys.topology.model import Topology
from tests.harness.rabbit_node import RabbitCluster

EXCHANGE = "bench.cluster"


def _topology(queue: str, queue_type: str) -> Topology:
    return Topology.model_validate(
        {
            "version": 1,
            "exchanges": {EXCHANGE: {"type": "direct"}},
            "queues": {queue: {"type": queue_type}},
            "bindings": [{"exchange": EXCHANGE, "queue": queue, "routing_key": queue}],
            "job_types": {JOB_TYPE: {"exchange": EXCHANGE, "routing_key": queue}},
        }
    )


def _body(i: int) -> bytes:
    return json.dumps(_payload(i), separators=(",", ":")).encode()


class Lane:
    """One producer connected to one node, publishing to one queue (declared through that
    node, so a quorum queue's leader is that node: ``client-local`` placement)."""

    def __init__(self, url: str, queue_type: str, token: str, window: int) -> None:
        self.url, self.queue_type, self.window = url, queue_type, window
        self.queue_name = f"bench.cluster-{queue_type}-{token}"

    async def open(self) -> None:
        self.connection = await aio_pika.connect(self.url)
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        self.exchange = await self.channel.declare_exchange(EXCHANGE, "direct", durable=True)
        self.queue = await self.channel.declare_queue(
            self.queue_name, durable=True, arguments={"x-queue-type": self.queue_type}
        )
        await self.queue.bind(self.exchange, self.queue_name)
        topology = _topology(self.queue_name, self.queue_type)
        self.producer = await Producer(Settings(url=self.url), topology).open()

    async def raw(self, n: int) -> int:
        message = aio_pika.DeliveryMode.PERSISTENT
        results = await asyncio.gather(
            *(
                self.exchange.publish(
                    aio_pika.Message(_body(i), delivery_mode=message, type=JOB_TYPE),
                    self.queue_name,
                    mandatory=True,
                )
                for i in range(n)
            )
        )
        return len(results)

    async def jobsys(self, n: int) -> int:
        results = await self.producer.publish_many(
            (JobRequest(JOB_TYPE, _payload(i)) for i in range(n)), window=self.window
        )
        return sum(isinstance(r, Receipt) for r in results)

    async def close(self) -> None:
        await self.producer.close()
        await self.queue.delete(if_unused=False, if_empty=False)
        await self.connection.close()


async def _rate(lanes: list[Lane], n: int, work: Callable[[Lane], Awaitable[int]]) -> float:
    start = time.perf_counter()
    done = await asyncio.gather(*(work(lane) for lane in lanes))
    elapsed = time.perf_counter() - start
    if sum(done) != n * len(lanes):
        raise SystemExit(f"only {sum(done)} of {n * len(lanes)} confirmed")
    for lane in lanes:
        await lane.queue.purge()
    return n * len(lanes) / elapsed


async def scenario(
    cluster: RabbitCluster,
    name: str,
    queue_type: str,
    lane_count: int,
    n: int,
    rounds: int,
    window: int,
) -> dict[str, object]:
    token = uuid.uuid4().hex[:8]
    urls = cluster.urls[:lane_count]
    lanes = [Lane(url, queue_type, f"{token}-{i}", window) for i, url in enumerate(urls)]
    for lane in lanes:
        await lane.open()
    leaders = (
        [cluster.quorum_leader(lane.queue_name) for lane in lanes] if queue_type == "quorum" else []
    )
    raw_rates, jobsys_rates = [], []
    try:
        for _ in range(rounds):
            raw_rates.append(await _rate(lanes, n, lambda lane: lane.raw(n)))
            jobsys_rates.append(await _rate(lanes, n, lambda lane: lane.jobsys(n)))
    finally:
        for lane in lanes:
            await lane.close()
    ratios = [j / r for j, r in zip(jobsys_rates, raw_rates, strict=True)]
    return {
        "scenario": name,
        "leaders": leaders,
        "raw_best": max(raw_rates),
        "jobsys_best": max(jobsys_rates),
        "ratio_median": statistics.median(ratios),
    }


async def run(n: int, rounds: int, window: int) -> list[dict[str, object]]:
    first = int(os.environ.get("JOBSYS_TEST_NODES_FROM", "60"))
    with tempfile.TemporaryDirectory(prefix="jobsys-bench-cluster-") as base:
        cluster = RabbitCluster((first + 1, first + 2, first + 3), base)
        try:
            started = time.monotonic()
            cluster.start()
            print(f"cluster of 3 nodes formed in {time.monotonic() - started:.0f}s", flush=True)
            return [
                await scenario(
                    cluster, "classic queue, 1 producer", "classic", 1, n, rounds, window
                ),
                await scenario(
                    cluster, "1 quorum queue, 1 producer", "quorum", 1, n, rounds, window
                ),
                await scenario(
                    cluster,
                    "3 quorum queues, leaders on 3 nodes, 3 producers",
                    "quorum",
                    3,
                    n,
                    rounds,
                    window,
                ),
            ]
        finally:
            cluster.close()


def main() -> None:
    """Parse arguments, run, print jobs/s and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000, help="jobs per producer per run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="publish_many window")
    args = parser.parse_args()
    results = asyncio.run(run(args.n, args.rounds, args.window))
    print(
        f"cluster publish benchmark: {args.n} persistent confirmed jobs per producer per run, "
        f"publish_many window {args.window}"
    )
    for row in results:
        print(
            f"  {row['scenario']:<50} raw {row['raw_best']:7,.0f} jobs/s  "
            f"jobsys {row['jobsys_best']:7,.0f} jobs/s  median ratio {row['ratio_median']:.2f}x"
            + (f"  leaders {row['leaders']}" if row["leaders"] else "")
        )


if __name__ == "__main__":
    main()
