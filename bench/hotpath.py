"""What each step of a worker's per-job path costs, on a real delivered message.

One job of bench.table's kind (~100 bytes of JSON, persistent) is published to a private
vhost and fetched back with ``basic.get``, so the steps below read what a worker reads. Each
step is timed alone, best of 5 x N runs, in microseconds of wall time on an otherwise idle
event loop; next to jobsys's way is the way it replaced (or the plain library call), so the
saving of each change can be seen on the machine at hand. The whole job costs 300-450 us of
CPU on the 2-core benchmark VM (bench.table's drain rows): read the steps against that.

Run with ``.venv/bin/python -m bench.hotpath [-n 20000] [--url AMQP_URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import timeit
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pamqp.frame
from aiormq.base import FutureStore
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from bench import worker as wb
from jobsys.broker.connection import BrokerConnection
from jobsys.broker.deadlines import Deadlines
from jobsys.broker.frame_decode import unmarshal
from jobsys.consume.attempt import Delivery, _check_utf8
from jobsys.consume.watchdog import LoopWatchdog
from jobsys.observe import tracing
from jobsys.ops.declare import apply_topology
from jobsys.settings import Settings
from jobsys.topology.loader import load_topology_text
from jobsys.wire.envelope import decode_envelope


def _sync(label: str, step: Callable[[], object], n: int) -> None:
    best = min(timeit.repeat(step, number=n, repeat=5)) / n * 1e6
    print(f"  {best:7.2f} us  {label}")


async def _async(label: str, step: Callable[[], Awaitable[object]], n: int) -> None:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            await step()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    print(f"  {best:7.2f} us  {label}")


async def _delivered(url: str) -> Any:
    token = uuid.uuid4().hex[:8]
    async with BrokerConnection(Settings(url=url)) as conn:
        await apply_topology(
            conn, load_topology_text(wb.topology_yaml(token)), use_management=False
        )
    await wb._fill(url, token, 1)
    async with BrokerConnection(Settings(url=url)) as conn:
        channel = await conn.amqp.channel()
        return await channel.basic_get(f"bench.q-{token}", no_ack=True)


async def main(url: str, n: int) -> None:
    message = await _delivered(url)
    props = message.header.properties
    delivery = Delivery(message, None, 1, False)  # type: ignore[arg-type]
    identity = delivery.identify()
    print(f"per-job steps on one {len(message.body)}-byte delivery, best of 5 x {n}:")
    _sync("read the identity from the headers", delivery.identify, n)
    _sync("refuse short strings that were not UTF-8", lambda: _check_utf8(props), n)

    def decode() -> object:
        return decode_envelope(
            message.body,
            identity,
            content_type=props.content_type,
            content_encoding=props.content_encoding,
            headers=props.headers,
            max_bytes=1 << 20,
        )

    _sync("decode the envelope (checks and JSON)", decode, n)
    body = message.body
    _sync(
        "  of it: json.loads with an option (a decoder per call; before)",
        lambda: json.loads(body, parse_constant=float),
        n,
    )
    decoder = json.JSONDecoder(parse_constant=float)
    _sync("  of it: a reused decoder (now)", lambda: decoder.decode(body.decode()), n)

    def span() -> None:
        with tracing.consume_span(
            props.headers,
            job_type=identity.job_type or "",
            job_id=identity.job_id or "",
            queue="q",
            attempt=1,
            message_id=props.message_id,
            published_at_ms=identity.published_at_ms,
        ) as attempt:
            attempt.set_outcome("ack")

    _sync("the attempt's span and metrics, no SDK, no trace context", span, n)
    _frames(message, n)
    await _bookkeeping(n)
    await _handover(n)


def _frames(message: Any, n: int) -> None:
    """A delivery's three frames and a confirm's one, decoded from bytes as they arrive."""
    deliver = spec.Basic.Deliver("ctag1.8d2f0c9e5b7a4f11", 4_812, False, "", "bench.q-0f3a9c1e")
    header = ContentHeader(0, len(message.body), message.header.properties)
    delivery = [pamqp.frame.marshal(f, 1) for f in (deliver, header, ContentBody(message.body))]
    ack = pamqp.frame.marshal(spec.Basic.Ack(4_812), 1)
    for label, decode in (("pamqp (before)", pamqp.frame.unmarshal), ("jobsys (now)", unmarshal)):
        _sync(
            f"a delivery's three frames decoded, {label}",
            lambda decode=decode: [*map(decode, delivery)],  # type: ignore[misc]
            n,
        )
        _sync(f"a confirm's basic.ack decoded, {label}", lambda decode=decode: decode(ack), n)  # type: ignore[misc]


async def _bookkeeping(n: int) -> None:
    watchdog = LoopWatchdog(30)

    def locked() -> None:
        with watchdog.running("id", "type"):
            pass

    _sync("the loop watchdog's mark, as a context manager", locked, n)
    _sync(
        "the loop watchdog's mark, enter/leave (now)",
        lambda: watchdog.leave(watchdog.enter("id", "type")),
        n,
    )

    async def nothing() -> None:
        return None

    async def with_timeout() -> None:
        async with asyncio.timeout(300):
            await nothing()

    deadlines = Deadlines()

    async def with_deadlines() -> None:
        deadline = deadlines.enter(300)
        await nothing()
        deadlines.leave(deadline)

    await _async("a handler's deadline, asyncio.timeout (before)", with_timeout, n)
    await _async("a handler's deadline, Deadlines (now)", with_deadlines, n)
    await _async("no deadline (the await alone)", nothing, n)


async def _handover(n: int) -> None:
    store = FutureStore(loop=asyncio.get_running_loop())
    done: list[object] = []

    async def consumer(_: object) -> None:
        done.append(None)

    async def by_task() -> None:
        # aiormq's way: a task per delivery, registered in its future store, run next turn.
        for _ in range(100):
            store.create_task(consumer(None))
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def direct(_: object) -> None:
        done.append(None)

    async def directly() -> None:
        for _ in range(100):
            direct(None)
        await asyncio.sleep(0)

    # Per delivery: the batch of 100 is divided out.
    for label, step in (
        ("a delivery handed over in a task of aiormq's (before)", by_task),
        ("a delivery handed over directly (now)", directly),
    ):
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(max(1, n // 100)):
                await step()
            best = min(best, (time.perf_counter() - start) / (max(1, n // 100) * 100) * 1e6)
        print(f"  {best:7.2f} us  {label}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--url", default=os.environ.get("JOBSYS_URL", wb.DEFAULT_URL))
    args = parser.parse_args()
    os.environ.setdefault("JOBSYS_BENCH_PAYLOAD", "small")  # bench.table's ~100-byte jobs
    with wb.private_vhost(args.url) as vhost_url:
        asyncio.run(main(vhost_url, args.n))
