"""Where a draining worker's time goes: cProfile around an in-process jobsys worker (no-op
handler, bench.worker's topology) emptying ``N`` pre-filled jobs, in a private vhost.

Run with ``.venv/bin/python -m bench.profile_drain [N]``. cProfile inflates small functions, so
read the shares, not the seconds; it prints jobsys's own functions and the AMQP layers below
them, by cumulative time.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import uuid

from bench import worker as wb
from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology
from jobsys.settings import Settings
from jobsys.topology.loader import load_topology_text


async def main(n: int) -> None:
    with wb.private_vhost(wb.DEFAULT_URL) as url:
        token = uuid.uuid4().hex[:8]
        async with BrokerConnection(Settings(url=url)) as conn:
            topology = load_topology_text(wb.topology_yaml(token))
            await apply_topology(conn, topology, use_management=False)
        await wb._fill(url, token, n)
        profile = cProfile.Profile()
        profile.enable()
        await wb.child_jobsys(url, token, "drain", n)
        profile.disable()
        stats = pstats.Stats(profile)
        stats.sort_stats("cumulative").print_stats(r"jobsys|aiormq/channel|pamqp/(frame|base)", 40)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
