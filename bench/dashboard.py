"""How fast a dashboard page renders with 100 queues, and how much its polling asks of the
broker.

A private vhost gets a topology of ``--queues`` work queues (each with its dead-letter queue,
plus the 29 delay levels), some jobs in each. Then, in this process, through the ASGI app:

* render: ``GET /`` (the queues page) ``--requests`` times with the broker read cached (the
  template and the report alone), and ``--requests`` times with a fresh read each time
  (``refresh_s`` at its floor and the cache cleared: management API call, then render); p50,
  p95 and max in milliseconds; the same for ``/dead-letters`` and the htmx refresh of ``/``;
* load: ``--browsers`` pages polling ``/`` (and one the workers page) every refresh for
  ``--seconds``, with ``--refresh`` seconds; the management API calls and AMQP passive
  declares this made, per second (counted by wrapping the management client and the passive
  declare), with and without the management API.

Run with ``.venv/bin/python -m bench.dashboard [--queues 100] [--requests 50] [--seconds 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from typing import Any
from urllib.parse import quote

import httpx


def topology_yaml(queues: int) -> str:
    lines = ["version: 1", "exchanges:", "  b.jobs: {type: direct}", "queues:"]
    lines += [f"  b.q{i:03d}: {{type: classic}}" for i in range(queues)]
    lines += ["bindings:"]
    lines += [
        f"  - {{exchange: b.jobs, queue: b.q{i:03d}, routing_key: k{i}}}" for i in range(queues)
    ]
    lines += ["job_types:"]
    lines += [f"  t{i}: {{exchange: b.jobs, routing_key: k{i}}}" for i in range(queues)]
    return "\n".join(lines) + "\n"


class Counts:
    def __init__(self) -> None:
        self.management = 0
        self.passive = 0

    def install(self) -> None:
        from jobsys.broker import management
        from jobsys.ops import status

        original_request = management.ManagementClient._request
        original_passive = status.passive_counts

        def request(client: Any, method: str, path: str, body: Any) -> Any:
            self.management += 1
            return original_request(client, method, path, body)

        async def passive(connection: Any, names: list[str]) -> Any:
            self.passive += len(names)
            return await original_passive(connection, names)

        management.ManagementClient._request = request  # type: ignore[method-assign]
        status.passive_counts = passive


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"p50 {statistics.median(ordered):6.1f} ms, p95 {p95:6.1f} ms, max {ordered[-1]:6.1f} ms"


async def _timed(
    client: httpx.AsyncClient, path: str, n: int, fresh: Any = None, **kw: Any
) -> list[float]:
    samples = []
    for _ in range(n):
        if fresh is not None:
            fresh()
        start = time.perf_counter()
        response = await client.get(path, **kw)
        samples.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text[:300]
    return samples


async def main_async(args: argparse.Namespace) -> None:
    from bench.worker import _management, _vhost_url
    from jobsys.broker.connection import BrokerConnection
    from jobsys.dashboard.app import create_app
    from jobsys.dashboard.config import DashboardConfig
    from jobsys.ops.declare import apply_topology
    from jobsys.publish.producer import JobRequest, Producer
    from jobsys.settings import Settings
    from jobsys.topology.loader import load_topology_text

    counts = Counts()
    counts.install()
    vhost = f"jobsys-bench-{uuid.uuid4().hex[:8]}"
    _management("PUT", f"/api/vhosts/{quote(vhost, safe='')}")
    _management(
        "PUT",
        f"/api/permissions/{quote(vhost, safe='')}/guest",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    settings = Settings(url=_vhost_url(args.url, vhost))
    loaded = load_topology_text(topology_yaml(args.queues), "bench.yaml")
    try:
        async with BrokerConnection(settings) as conn:
            await apply_topology(conn, loaded, use_management=False)
        async with Producer(settings, loaded.topology) as producer:
            await producer.publish_many(
                JobRequest(f"t{i % args.queues}", {"i": i}) for i in range(5 * args.queues)
            )
        print(
            f"{args.queues} work queues ({2 * args.queues + 29} queues read per refresh), "
            f"{5 * args.queues} jobs"
        )
        for use_management in (True, False):
            app = create_app(
                DashboardConfig(refresh_s=1.0, use_management=use_management),
                settings,
                loaded.topology,
            )
            view = app.dashboard.view
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1:8080"
            ) as client:
                label = "management API" if use_management else "AMQP only"
                await client.get("/")  # connect, confirm the API answers for this broker
                cached = await _timed(client, "/", args.requests)
                fresh = await _timed(
                    client, "/", args.requests, fresh=lambda v=view: setattr(v, "_status", None)
                )
                dead = await _timed(client, "/dead-letters", args.requests)
                part = await _timed(client, "/", args.requests, headers={"HX-Request": "true"})
                print(f"[{label}] GET / cached read:  {_ms(cached)}")
                print(f"[{label}] GET / fresh read:   {_ms(fresh)}")
                print(f"[{label}] GET /dead-letters:  {_ms(dead)}")
                print(f"[{label}] htmx refresh of /:  {_ms(part)}")
                counts.management = counts.passive = 0
                reads_before = dict(view.reads)

                async def browser(path: str) -> None:
                    deadline = time.monotonic() + args.seconds
                    while time.monotonic() < deadline:
                        await client.get(path, headers={"HX-Request": "true"})
                        await asyncio.sleep(args.refresh)

                view.refresh_s = args.refresh
                await asyncio.gather(
                    *(browser("/") for _ in range(args.browsers)), browser("/workers")
                )
                reads = {k: view.reads[k] - reads_before[k] for k in view.reads}
                print(
                    f"[{label}] {args.browsers} pages on / and 1 on /workers polling every "
                    f"{args.refresh:g}s for {args.seconds}s: {reads['status']} status reads, "
                    f"{reads['connections']} connection reads; "
                    f"{counts.management / args.seconds:.2f} management API calls/s, "
                    f"{counts.passive / args.seconds:.1f} passive declares/s"
                )
            await view.close()
    finally:
        _management("DELETE", f"/api/vhosts/{quote(vhost, safe='')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", type=int, default=100)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--browsers", type=int, default=5)
    parser.add_argument("--refresh", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--url", default=os.environ.get("JOBSYS_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
