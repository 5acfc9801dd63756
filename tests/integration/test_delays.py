"""Broker-side delays on a real broker: on time, in delay order, and never dropped as a cycle.

A job must reach its queue no earlier than its delay and at most 1 s + 10 % later. Times are
taken from just before the publish to the consumer's receipt, so both bounds are conservative.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import aio_pika
import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text
from jobsys.wire.envelope import JobProperties, read_identity
from jobsys.wire.headers import HEADER_ATTEMPT, HEADER_JOB_ID, Origin, retry_headers
from tests.harness.fixtures import node_settings
from tests.harness.rabbit_node import RabbitNode

QUEUE = "work"


def topology(queue_type: str = "classic") -> LoadedTopology:
    """A small topology: one exchange, one work queue, one job type."""
    return load_topology_text(
        f"""
version: 1
delays: {{queue_type: {queue_type}}}
exchanges:
  jobs: {{type: direct}}
queues:
  work: {{type: classic}}
bindings:
  - {{exchange: jobs, queue: work, routing_key: work}}
job_types:
  tick: {{exchange: jobs, routing_key: work}}
""",
        "delays-test.yaml",
    )


def tolerance_s(delay_s: float) -> float:
    """How late a job may arrive: 1 s plus 10 % of its delay."""
    return 1.0 + 0.1 * delay_s


def earliest_s(delay_s: float) -> float:
    """How early the delay levels may deliver, by this process's clock: they are timed by the
    broker's clock, and RabbitMQ's Erlang VM corrects its time by running its clock up to 1 %
    fast or slow ("time correction"). No job *starts* early all the same: it carries its due
    time and the worker holds it until then (tests/integration/test_worker_hostile.py)."""
    return delay_s * 0.99


@dataclass
class Arrivals:
    """Jobs as they reach the work queue: (job id, attempt, monotonic time), in order."""

    seen: list[tuple[str, int, float]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        attempt = headers[HEADER_ATTEMPT]
        assert isinstance(attempt, int)
        self.seen.append((str(headers[HEADER_JOB_ID]), attempt, time.monotonic()))
        self.changed.set()

    async def wait_for(self, count: int, timeout_s: float) -> None:
        """Wait until ``count`` arrivals were seen (fail after ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            while len(self.seen) < count:
                self.changed.clear()
                await self.changed.wait()


async def consume(connection: BrokerConnection, arrivals: Arrivals) -> None:
    """Record every job reaching the work queue, acking it."""
    channel = await connection.channel(confirms=False, prefetch=100)
    queue = await channel.get_queue(QUEUE, ensure=False)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        arrivals.record(message)
        await message.ack()

    await queue.consume(on_message)


async def test_a_delayed_job_arrives_no_earlier_than_its_delay_and_within_tolerance(
    vhost_settings: Settings,
) -> None:
    loaded = topology()
    delays = {"d0": 0.0, "d1": 1.0, "d2": 2.0, "d3.5": 3.5, "d7": 7.0, "d9": 9.0}
    arrivals = Arrivals()
    async with BrokerConnection(vhost_settings) as connection:
        await apply_topology(connection, loaded, use_management=False)
        await consume(connection, arrivals)
        async with Producer(vhost_settings, loaded.topology, connection=connection) as producer:
            sent: dict[str, float] = {}
            for job_id, delay_s in delays.items():
                sent[job_id] = time.monotonic()
                await producer.publish("tick", {}, delay_s=delay_s, job_id=job_id)
            await arrivals.wait_for(len(delays), timeout_s=9 + tolerance_s(9) + 2)

    for job_id, _attempt, arrived in arrivals.seen:
        delay_s = delays[job_id]
        waited = arrived - sent[job_id]
        assert waited >= earliest_s(delay_s), f"{job_id} arrived {delay_s - waited:.3f} s early"
        assert waited <= delay_s + tolerance_s(delay_s), f"{job_id} took {waited:.3f} s"


async def test_delays_published_longest_first_arrive_shortest_first(
    vhost_settings: Settings,
) -> None:
    loaded = topology()
    arrivals = Arrivals()
    async with BrokerConnection(vhost_settings) as connection:
        await apply_topology(connection, loaded, use_management=False)
        await consume(connection, arrivals)
        async with Producer(vhost_settings, loaded.topology, connection=connection) as producer:
            sent: dict[str, float] = {}
            for delay_s in (12.0, 1.0, 5.0, 3.0):
                job_id = f"after-{delay_s:g}s"
                sent[job_id] = time.monotonic()
                await producer.publish("tick", {}, delay_s=delay_s, job_id=job_id)
            await arrivals.wait_for(4, timeout_s=12 + tolerance_s(12) + 2)

    # No head-of-line blocking: the 12 s job does not hold back the ones behind it.
    assert [job_id for job_id, _, _ in arrivals.seen] == [
        "after-1s",
        "after-3s",
        "after-5s",
        "after-12s",
    ]
    for job_id, _, arrived in arrivals.seen:
        wanted = float(job_id.removeprefix("after-").removesuffix("s"))
        assert earliest_s(wanted) <= arrived - sent[job_id] <= wanted + tolerance_s(wanted)


async def test_the_same_delay_used_six_times_in_a_row_never_loses_the_job(
    vhost_settings: Settings,
) -> None:
    # What a retry does: take the job as it arrives (carrying the broker's x-death history
    # from the delay levels), republish it with attempt + 1 through the same levels, confirm,
    # then ack. The broker drops, silently, a message whose history shows a cycle.
    loaded = topology()
    route = loaded.topology.delay_layout.route(QUEUE, 1.0)
    jobs, rounds = 20, 6
    attempts: dict[str, list[int]] = defaultdict(list)
    done = asyncio.Event()
    async with BrokerConnection(vhost_settings) as connection:
        await apply_topology(connection, loaded, use_management=False)
        async with Producer(vhost_settings, loaded.topology, connection=connection) as producer:
            channel = await connection.channel(confirms=False, prefetch=jobs)
            queue = await channel.get_queue(QUEUE, ensure=False)

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                assert "x-death" in (message.headers or {})  # it did come through the levels
                identity = read_identity(message.type, message.headers)
                assert identity.job_id is not None and identity.problem is None
                attempts[identity.job_id].append(identity.attempt)
                if identity.attempt <= rounds:
                    # Republished with the broker's death history stripped, as a worker does.
                    headers = retry_headers(
                        message.headers or {},
                        job_id=identity.job_id,
                        attempt=identity.attempt + 1,
                        origin=Origin("jobs", "tick"),
                        first_failed_at_ms=1,
                    )
                    await producer.republish(
                        message.body,
                        headers,
                        route.exchange,
                        route.routing_key,
                        kept=JobProperties(message.type),
                        kind="retry",
                        delay_s=1.0,
                    )
                await message.ack()
                if sum(len(seen) for seen in attempts.values()) == jobs * (rounds + 1):
                    done.set()

            await queue.consume(on_message)
            for n in range(jobs):
                await producer.publish("tick", {"n": n}, delay_s=1.0, job_id=f"job-{n}")
            async with asyncio.timeout((rounds + 1) * tolerance_s(1.0) + 10):
                await done.wait()

    expected = list(range(1, rounds + 2))
    assert {job_id: seen for job_id, seen in attempts.items()} == {
        f"job-{n}": expected for n in range(jobs)
    }


@pytest.mark.slow
async def test_delayed_jobs_survive_a_broker_restart(running_own_broker: RabbitNode) -> None:
    vhost = f"delays-restart-{uuid.uuid4().hex[:8]}"
    running_own_broker.ctl("add_vhost", vhost)
    running_own_broker.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    settings = node_settings(running_own_broker.url.rstrip("/") + "/" + vhost)
    loaded = topology()
    delay_s = 25.0
    try:
        async with BrokerConnection(settings) as connection:
            await apply_topology(connection, loaded, use_management=False)
            async with Producer(settings, loaded.topology, connection=connection) as producer:
                sent = time.monotonic()
                await producer.publish("tick", {}, delay_s=delay_s, job_id="survivor")

        await asyncio.to_thread(running_own_broker.restart)
        restarted = time.monotonic()

        arrivals = Arrivals()
        async with BrokerConnection(settings) as connection:
            await consume(connection, arrivals)
            await arrivals.wait_for(1, timeout_s=delay_s + tolerance_s(delay_s) + 60)
        [(job_id, _attempt, arrived)] = arrivals.seen
        assert job_id == "survivor"
        assert arrived - sent >= earliest_s(delay_s)
        if restarted - sent < delay_s:
            # The job waited out the rest of its delay on the restarted node: still on time.
            assert arrived - sent <= delay_s + tolerance_s(delay_s)
    finally:
        running_own_broker.ensure_running()
        running_own_broker.ctl("delete_vhost", vhost)


@pytest.mark.parametrize(
    ("queue_spec", "lands_in"),
    [
        ("{type: classic, max_length: 1, overflow: reject-publish-dlx}", "work.dead"),
        ("{type: classic, max_length: 1, overflow: drop-head}", "work"),  # the filler goes
        ("{type: quorum, max_length: 1, overflow: reject-publish}", "work"),
    ],
)
async def test_a_delayed_job_reaching_a_full_queue_is_never_dropped(
    vhost_settings: Settings, queue_spec: str, lands_in: str
) -> None:
    # The only configuration where the broker drops it, a classic queue under reject-publish,
    # is refused by `topology validate`; each one allowed keeps the job somewhere.
    loaded = load_topology_text(
        f"""
version: 1
exchanges:
  jobs: {{type: direct}}
queues:
  work: {queue_spec}
bindings:
  - {{exchange: jobs, queue: work, routing_key: work}}
job_types:
  tick: {{exchange: jobs, routing_key: work}}
""",
        "full-queue.yaml",
    )
    async with BrokerConnection(vhost_settings) as connection:
        await apply_topology(connection, loaded, use_management=False)
        async with Producer(vhost_settings, loaded.topology, connection=connection) as producer:
            await producer.publish("tick", {}, job_id="filler")
            await producer.publish("tick", {}, delay_s=1, job_id="delayed")
        # Nothing is read before the delay is over: the queue must still be full then.
        await asyncio.sleep(1 + tolerance_s(1) + 0.5)
        channel = await connection.channel(confirms=False, prefetch=10)
        found: dict[str, list[str]] = {"work": [], "work.dead": []}
        for name, ids in found.items():
            queue = await channel.get_queue(name, ensure=False)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                ids.append(str((message.headers or {})[HEADER_JOB_ID]))
    assert "delayed" in found[lands_in], found
    everywhere = found["work"] + found["work.dead"]
    assert sorted(everywhere) == ["delayed", "filler"], found  # each kept, and once
