"""The in-memory test kit's speed, against the broker it stands in for, in the same run.

The same work three ways: ``-n`` jobs (~200-byte JSON) published and run, every job failing
its first attempt and retried after 1 s (the backoff a test meets):

* kit: ``jobsys.testing.Kit``: publish, then ``advance`` through the retry (virtual time);
* jobsys on RabbitMQ: a ``Producer`` and an in-process ``Worker`` in a private vhost;
* raw aio-pika on RabbitMQ: publish ``-n`` confirmed messages and consume them with one ack
  each (no retry: the floor of any broker round trip for this many jobs).

Output: seconds for each, and the ratios. Run with ``.venv/bin/python -m bench.kit [-n 500]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika

from jobsys.app import App, JobContext
from jobsys.broker.connection import BrokerConnection
from jobsys.broker.management import ManagementClient, management_endpoint
from jobsys.consume.options import WorkerOptions
from jobsys.consume.worker import Worker
from jobsys.ops.declare import apply_topology
from jobsys.publish.prepare import JobRequest
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.testing import Kit
from jobsys.topology.loader import LoadedTopology, load_topology_text

TOPOLOGY = """\
version: 1
exchanges:
  bench.kit: {type: direct}
queues:
  bench.kit.q: {type: classic, consumer: {concurrency: 50, prefetch: 100}}
bindings:
  - {exchange: bench.kit, queue: bench.kit.q, routing_key: job}
job_types:
  job: {exchange: bench.kit, routing_key: job, retry: {max_attempts: 3, delays: [1s]}}
"""
PAYLOAD = {"to": "someone@example.com", "subject": "Your weekly report", "note": "x" * 120}


def make_app(done: set[str], n: int, all_done: asyncio.Event | None = None) -> App:
    app = App()

    @app.handler("job")
    async def job(payload: dict[str, Any], ctx: JobContext) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("first attempts fail")
        done.add(ctx.job_id)
        if all_done is not None and len(done) == n:
            all_done.set()

    return app


async def on_kit(loaded: LoadedTopology, n: int) -> float:
    done: set[str] = set()
    began = time.perf_counter()
    async with Kit(make_app(done, n), loaded) as kit:
        await kit.producer.publish_many([JobRequest("job", PAYLOAD) for _ in range(n)])
        await kit.advance(1)
    assert len(done) == n, len(done)
    return time.perf_counter() - began


async def on_broker(loaded: LoadedTopology, settings: Settings, n: int) -> float:
    done: set[str] = set()
    all_done = asyncio.Event()
    began = time.perf_counter()
    worker = Worker(make_app(done, n, all_done), loaded, settings, WorkerOptions())
    task = asyncio.create_task(worker.run())
    await worker.ready.wait()
    async with Producer(settings, loaded) as producer:
        await producer.publish_many([JobRequest("job", PAYLOAD) for _ in range(n)])
    await all_done.wait()
    worker.request_stop()
    await task
    return time.perf_counter() - began


async def raw(settings: Settings, n: int) -> float:
    body = str(PAYLOAD).encode()
    began = time.perf_counter()
    async with await aio_pika.connect(settings.url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=100)
        exchange = await channel.get_exchange("bench.kit")
        queue = await channel.get_queue("bench.kit.q")
        await asyncio.gather(
            *(exchange.publish(aio_pika.Message(body, delivery_mode=2), "job") for _ in range(n))
        )
        seen = 0
        finished = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen
            await message.ack()
            seen += 1
            if seen == n:
                finished.set()

        await queue.consume(on_message)
        await finished.wait()
    return time.perf_counter() - began


async def main(n: int) -> None:
    loaded = load_topology_text(TOPOLOGY, "bench-kit.yaml")
    base = Settings.from_env()
    client = ManagementClient(management_endpoint(base))
    vhost = f"jobsys-bench-{uuid.uuid4().hex[:8]}"
    await client.create_vhost(vhost, urlsplit(base.url).username or "guest")
    parts = urlsplit(base.url)
    settings = base.with_overrides(
        url=urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))
    )
    try:
        async with BrokerConnection(settings) as connection:
            await apply_topology(connection, loaded, use_management=False)
        kit_s = await on_kit(loaded, n)
        broker_s = await on_broker(loaded, settings, n)
        raw_s = await raw(settings, n)
    finally:
        await client.delete_vhost(vhost)
    print(f"n = {n} jobs, each retried once after 1 s")
    print(f"kit (in memory, virtual time)       {kit_s:7.3f} s")
    print(
        f"jobsys on RabbitMQ                  {broker_s:7.3f} s  ({broker_s / kit_s:.1f}x the kit)"
    )
    print(f"raw aio-pika, no retry, on RabbitMQ {raw_s:7.3f} s  ({raw_s / kit_s:.1f}x the kit)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=500)
    asyncio.run(main(parser.parse_args().n))
