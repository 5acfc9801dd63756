"""The cost of attempt middleware: a drain with two no-op middlewares, with none, and by raw
aio-pika, in the same run.

Each drain is ``bench.worker``'s (a queue pre-filled with ``-n`` jobs, emptied by a no-op
handler in a fresh child process, concurrency and prefetch 100); the middlewares are
``async def mw(ctx, call_next): return await call_next()``. Rounds interleave the three and
rotate their order.

Run with ``.venv/bin/python -m bench.middleware [-n 20000] [--rounds 5]``.
Target: two middlewares >= 0.95x none.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import uuid
from typing import Any
from urllib.parse import quote

MODES = ("none", "two", "raw")


async def drains(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Every round's drain per mode."""
    from bench.worker import _management, _vhost_url, drain, topology_yaml
    from jobsys.broker.connection import BrokerConnection
    from jobsys.ops.declare import apply_topology
    from jobsys.settings import Settings
    from jobsys.topology.loader import load_topology_text

    vhost = f"jobsys-bench-{uuid.uuid4().hex[:8]}"
    _management("PUT", f"/api/vhosts/{quote(vhost, safe='')}")
    _management(
        "PUT",
        f"/api/permissions/{quote(vhost, safe='')}/guest",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    url = _vhost_url(args.url, vhost)
    token = uuid.uuid4().hex[:8]
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    try:
        async with BrokerConnection(Settings(url=url)) as conn:
            await apply_topology(
                conn, load_topology_text(topology_yaml(token)), use_management=False
            )
        for round_no in range(args.rounds):
            shift = round_no % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                os.environ["JOBSYS_BENCH_MIDDLEWARE"] = "2" if mode == "two" else "0"
                consumer = "raw" if mode == "raw" else "jobsys"
                result = await drain(consumer, url, token, args.n)
                runs[mode].append(result)
                print(
                    f"round {round_no + 1} drain {mode:5}: {result['rate']:6.0f} jobs/s, "
                    f"CPU {result['cpu_us']:4.0f} us/job"
                )
    finally:
        os.environ.pop("JOBSYS_BENCH_MIDDLEWARE", None)
        _management("DELETE", f"/api/vhosts/{quote(vhost, safe='')}")
    return runs


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="jobs per drain")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--url", default=os.environ.get("JOBSYS_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    args = parser.parse_args()
    runs = asyncio.run(drains(args))
    rate = {m: statistics.median(r["rate"] for r in runs[m]) for m in MODES}
    cpu = {m: statistics.median(r["cpu_us"] for r in runs[m]) for m in MODES}
    ratios = [t["rate"] / n["rate"] for t, n in zip(runs["two"], runs["none"], strict=True)]
    print()
    for mode in MODES:
        print(f"drain {mode:5} (median): {rate[mode]:6.0f} jobs/s, CPU {cpu[mode]:4.0f} us/job")
    print(
        f"two middlewares / none: {rate['two'] / rate['none']:.2f}x (medians), per round "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + f"; median of the per-round ratios {statistics.median(ratios):.2f}x (target >= 0.95x)"
    )
    print(
        f"none / raw aio-pika: {rate['none'] / rate['raw']:.2f}x; two / raw: "
        f"{rate['two'] / rate['raw']:.2f}x"
    )
    print(f"CPU per job, two / none: {cpu['two'] / cpu['none']:.2f}x")


if __name__ == "__main__":
    main()
