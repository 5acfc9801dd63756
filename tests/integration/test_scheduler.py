"""The scheduler on the real broker: exactly one copy fires, and every slot fires exactly once
across ``kill -9`` of the leader just before, at and just after a slot; catch-up after every
copy was down follows the schedule's policy.

Slots are every second; the ledger expects every slot between the first and the last fired
exactly once (a gap is "lost", a second copy "duplicated").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.errors import TopologyError
from jobsys.schedule.scheduler import Scheduler
from jobsys.schedule.status import read_status
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from tests.apps.schedule_apps import (
    WORK,
    SchedulerProcess,
    apply,
    sleep_until,
    slot_ledger,
    topology,
    wait_for_leader,
    write_topology,
)
from tests.harness.fixtures import node_settings
from tests.harness.ledger import drain_job_ids
from tests.harness.rabbit_node import RabbitNode
from tests.harness.worker_subprocess import wait_until


async def kill_leader_around_a_slot(
    settings: Settings,
    loaded: LoadedTopology,
    copies: list[SchedulerProcess],
    offset_s: float,
) -> None:
    """Kill -9 the current leader ``offset_s`` from the next whole second (a slot)."""
    leader = await wait_for_leader(settings, loaded, copies)
    await sleep_until(int(time.time()) + 2 + offset_s)
    leader.kill9()
    copies.remove(leader)


@pytest.mark.parametrize(
    "offset_s",
    [
        0.0,  # at the slot: in the default run
        pytest.param(-0.05, marks=pytest.mark.slow, id="just-before"),
        pytest.param(0.1, marks=pytest.mark.slow, id="just-after"),
    ],
)
async def test_killing_the_leader_around_a_slot_fires_every_slot_exactly_once(
    vhost_settings: Settings, tmp_path: Path, offset_s: float
) -> None:
    loaded = write_topology(tmp_path)
    await apply(vhost_settings, loaded)
    copies = [
        SchedulerProcess(Path(loaded.filename), tmp_path / f"s{i}.log", vhost_settings.url)
        for i in range(2)
    ]
    try:
        await kill_leader_around_a_slot(vhost_settings, loaded, copies, offset_s)
        survivor = await wait_for_leader(vhost_settings, loaded, copies)
        await asyncio.sleep(3)
    finally:
        for copy in copies:
            copy.stop()
    ledger, slots = await slot_ledger(vhost_settings)

    ledger.check().assert_ok()
    assert len(slots) >= 4
    assert "leads" in survivor.stderr


@pytest.mark.slow
async def test_three_schedulers_with_the_leader_killed_before_at_and_after_slots(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = write_topology(tmp_path)
    await apply(vhost_settings, loaded)
    made = 0

    def start() -> SchedulerProcess:
        nonlocal made
        made += 1
        return SchedulerProcess(
            Path(loaded.filename), tmp_path / f"s{made}.log", vhost_settings.url
        )

    copies = [start() for _ in range(3)]
    try:
        for offset_s in (-0.05, 0.0, 0.004, 0.1, -0.2):
            await kill_leader_around_a_slot(vhost_settings, loaded, copies, offset_s)
            copies.append(start())  # keep three standing
        await wait_for_leader(vhost_settings, loaded, copies)
        await asyncio.sleep(2)
    finally:
        for copy in copies:
            copy.stop()
    ledger, slots = await slot_ledger(vhost_settings)

    ledger.check().assert_ok()
    assert len(slots) >= 10


@contextlib.asynccontextmanager
async def scheduler(settings: Settings, loaded: LoadedTopology) -> AsyncIterator[Scheduler]:
    running = Scheduler(settings, loaded)
    task = asyncio.create_task(running.run())
    try:
        await wait_until(lambda: running.leading.is_set() or task.done(), 15, "leading")
        if task.done():
            task.result()
        yield running
    finally:
        running.request_stop()
        await asyncio.wait_for(task, 15)


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [("all", "every missed slot"), ("latest", "the newest missed slot"), ("none", "nothing")],
)
async def test_after_every_scheduler_was_down_catch_up_follows_the_policy(
    vhost_settings: Settings, tmp_path: Path, catch_up: str, expected: str
) -> None:
    loaded = write_topology(tmp_path, topology(catch_up=catch_up, grace="0s", max_catch_up=100))
    await apply(vhost_settings, loaded)
    async with scheduler(vhost_settings, loaded) as first:
        await wait_until(lambda: first.stats.fired >= 2, 10, "two fires")
    before = await drain_job_ids(vhost_settings.url, WORK)
    last_before = max(before)
    # Every copy down: at least four whole slots pass (the first copy stopped mid-slot, at once).
    await asyncio.sleep(5.2)
    downtime_end = int(time.time())
    async with scheduler(vhost_settings, loaded) as second:
        await asyncio.sleep(0.5)
        caught_up = sorted(await drain_job_ids(vhost_settings.url, WORK))
        assert second.stats.fired == len(caught_up)

    # The slots of the downtime that fired; the on-time slot at the restart is not one of them.
    missed = [job_id for job_id in caught_up if job_id < f"tick@{_utc(downtime_end)}"]
    if catch_up == "all":
        assert len(missed) >= 4, expected
        assert missed[0] > last_before
        assert second.stats.skipped == 0
    elif catch_up == "latest":
        # One run stands for the downtime: the newest missed slot, or (as here, where a slot
        # is due every second) the slot due at the restart.
        assert len(missed) <= 1, expected
        assert second.stats.skipped >= 3
    else:
        assert missed == [], expected
        assert second.stats.skipped >= 3


def _utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


async def test_the_state_names_the_leader_and_the_last_slot(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = write_topology(tmp_path)
    await apply(vhost_settings, loaded)
    async with scheduler(vhost_settings, loaded) as running:
        await wait_until(lambda: running.stats.fired >= 1, 10, "a fire")
        async with BrokerConnection(vhost_settings) as connection:
            state = await read_status(connection, loaded.topology)
    assert state is not None and state.leader is not None
    assert state.leader.name == running.name
    assert state.cursors["tick"].fired


async def test_a_scheduler_without_its_queues_stops_with_what_to_do(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = write_topology(tmp_path)  # never applied
    with pytest.raises(TopologyError, match="is missing — run `jobsys topology apply"):
        await asyncio.wait_for(Scheduler(vhost_settings, loaded).run(), 15)


@pytest.mark.slow
async def test_a_broker_restart_loses_no_slot_and_fires_none_twice(
    running_own_broker: RabbitNode, tmp_path: Path
) -> None:
    settings = node_settings(running_own_broker)
    loaded = write_topology(tmp_path)
    await apply(settings, loaded)
    copies = [
        SchedulerProcess(Path(loaded.filename), tmp_path / f"s{i}.log", settings.url)
        for i in range(2)
    ]
    try:
        await wait_for_leader(settings, loaded, copies)
        await asyncio.sleep(2)
        running_own_broker.restart()
        back_ms = int(time.time() * 1000)

        async def fired_since_restart() -> bool:
            async with BrokerConnection(settings) as connection:
                state = await read_status(connection, loaded.topology)
            return state is not None and state.written_ms > back_ms

        # Slots due while the broker was down are late by less than the grace: they fire.
        await wait_until(fired_since_restart, 60, "a fire after the restart")
        await asyncio.sleep(3)
    finally:
        for copy in copies:
            copy.stop()
    ledger, slots = await slot_ledger(settings)
    await drain_job_ids(settings.url, WORK)

    ledger.check().assert_ok()
    assert len(slots) >= 8


async def test_a_fire_that_reaches_no_queue_stops_the_scheduler_and_keeps_its_slot(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = write_topology(tmp_path)
    await apply(vhost_settings, loaded)
    connection = await aio_pika.connect(vhost_settings.url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(WORK, ensure=False)
        await queue.unbind("st.jobs", "w")  # the job type now reaches no queue

    running = Scheduler(vhost_settings, loaded)
    with pytest.raises(TopologyError, match=r"reached no queue.*jobsys topology apply"):
        await asyncio.wait_for(running.run(), 15)
    async with BrokerConnection(vhost_settings) as broker:
        state = await read_status(broker, loaded.topology)
    assert state is not None
    assert not state.cursors["tick"].fired  # the cursor went back: that slot is still to fire
    assert await drain_job_ids(vhost_settings.url, WORK) == {}
