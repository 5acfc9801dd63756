"""Finding one job in the job history: ``job_timeline`` over a stream of many events.

Fills the history stream of a private vhost (created through the management API, deleted at the
end) with ``-n`` events of distinct jobs, written as workers write them (batches of 500, one
confirmed message each), then times ``job_timeline`` for a job whose events sit in the middle,
reading the whole stream (``--since`` not given): the worst case of ``jobsys jobs show``.

Run with ``.venv/bin/python -m bench.history [-n 1000000] [--rounds 3] [--url URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from urllib.parse import quote

from bench.worker import _management, _vhost_url

BATCH = 500
TOPOLOGY_YAML = """\
version: 1
queues:
  bh.work: {type: classic}
history: {max_age: 1h, max_bytes: 2147483648}
"""


async def run(args: argparse.Namespace) -> None:
    from jobsys.broker.confirm import ConfirmChannel, Outgoing
    from jobsys.broker.connection import BrokerConnection
    from jobsys.ops.declare import apply_topology
    from jobsys.ops.history import job_timeline
    from jobsys.publish.properties import message_properties
    from jobsys.settings import Settings
    from jobsys.topology.loader import load_topology_text
    from jobsys.wire.envelope import new_message_id
    from jobsys.wire.history import EVENT_TYPE, HEADER_EVENTS, HistoryEvent, encode_batch

    vhost = f"jobsys-bench-{uuid.uuid4().hex[:8]}"
    _management("PUT", f"/api/vhosts/{quote(vhost, safe='')}")
    _management(
        "PUT",
        f"/api/permissions/{quote(vhost, safe='')}/guest",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    settings = Settings(url=_vhost_url(args.url, vhost))
    loaded = load_topology_text(TOPOLOGY_YAML, "bench-history.yaml")
    wanted = f"{uuid.uuid4().hex}-wanted"
    try:
        async with BrokerConnection(settings) as connection:
            await apply_topology(connection, loaded, use_management=False)
            robust = await connection.channel(confirms=True)
            confirms = ConfirmChannel(robust, settings)  # type: ignore[arg-type]
            started = time.perf_counter()
            now = int(time.time() * 1000)
            middle = args.n // 2 // BATCH
            pending: list[asyncio.Future[None]] = []
            for index in range(args.n // BATCH):
                events = [
                    HistoryEvent(
                        "succeeded",
                        wanted if index == middle and i == 0 else uuid.uuid4().hex,
                        "send_email",
                        "bh.work",
                        1,
                        now,
                        "bench-host",
                        1,
                        {"duration_ms": 1.5, "result_bytes": 0},
                    )
                    for i in range(BATCH)
                ]
                out = Outgoing("history", EVENT_TYPE, "jobsys.history", "", encode_batch(events))
                props = message_properties(
                    EVENT_TYPE, None, {HEADER_EVENTS: BATCH}, new_message_id()
                )
                pending.append(asyncio.ensure_future(confirms.publish(out, props)))
                if len(pending) >= 64:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            print(f"wrote {args.n} events in {time.perf_counter() - started:.1f}s")
            seconds = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                found = await job_timeline(connection, loaded.topology, wanted, timeout_s=600)
                seconds.append(time.perf_counter() - started)
                assert [e.job_id for e in found] == [wanted], found
            print(
                f"jobs show over {args.n} events: best {min(seconds):.2f}s, "
                f"median {statistics.median(seconds):.2f}s ({args.rounds} rounds)"
            )
    finally:
        _management("DELETE", f"/api/vhosts/{quote(vhost, safe='')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="events in the stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--url", default=os.environ.get("JOBSYS_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
