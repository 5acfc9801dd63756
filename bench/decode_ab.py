"""The frame decoder's worth in a draining worker: jobsys's decoder against pamqp's, alternated.

Each round fills a private vhost's queue with ``-n`` jobs of bench.table's kind (~100 bytes of
JSON, persistent) and drains it with an in-process jobsys worker (no-op handler, prefetch and
concurrency as bench.worker sets them), once decoding frames with ``jobsys.broker.frame_decode``
and once with ``pamqp.frame.unmarshal`` (the frame reader's other half stays as it is), in
alternating order. Prints the median and each round of jobs/s and of this process's CPU per job.

Run with ``.venv/bin/python -m bench.decode_ab [-n 20000] [--rounds 6] [--url AMQP_URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

from bench import worker as wb
from jobsys.broker import frame_decode, frames
from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology
from jobsys.settings import Settings
from jobsys.topology.loader import load_topology_text


def _none(data: bytes) -> None:
    return None  # every frame to pamqp


DECODERS = {"jobsys": frame_decode.decoded, "pamqp": _none}


async def _round(url: str, decoder: str, n: int) -> tuple[float, float]:
    token = uuid.uuid4().hex[:8]
    async with BrokerConnection(Settings(url=url)) as conn:
        await apply_topology(
            conn, load_topology_text(wb.topology_yaml(token)), use_management=False
        )
    await wb._fill(url, token, n)
    setattr(frames, "decoded", DECODERS[decoder])  # noqa: B010 - the name frames.py calls
    try:
        cpu = time.process_time()
        result = await wb.child_jobsys(url, token, "drain", n)
        cpu = time.process_time() - cpu
    finally:
        setattr(frames, "decoded", frame_decode.decoded)  # noqa: B010
    return result["done"] / result["elapsed_s"], cpu / result["done"] * 1e6


async def main(url: str, n: int, rounds: int) -> None:
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in DECODERS}
    for i in range(rounds):
        order = list(DECODERS) if i % 2 == 0 else list(reversed(DECODERS))
        for name in order:
            seen[name].append(await _round(url, name, n))
    print(f"in-process drain of {n} jobs, {rounds} rounds alternated, median (each round):")
    for name, runs in seen.items():
        rates = [r for r, _ in runs]
        cpus = [c for _, c in runs]
        print(
            f"  {name:7s} {statistics.median(rates):7,.0f} jobs/s"
            f" ({', '.join(f'{r:,.0f}' for r in rates)});"
            f" {statistics.median(cpus):5.0f} us CPU per job"
            f" ({', '.join(f'{c:.0f}' for c in cpus)})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--url", default=os.environ.get("JOBSYS_URL", wb.DEFAULT_URL))
    args = parser.parse_args()
    os.environ.setdefault("JOBSYS_BENCH_PAYLOAD", "small")
    with wb.private_vhost(args.url) as vhost_url:
        asyncio.run(main(vhost_url, args.n, args.rounds))
