"""Schedulers on a 3-node cluster with quorum queues: two copies, each connected to its own
node; the node the leader is connected to is killed with -9. The other copy takes over and every
slot fires exactly once. Slow: the cluster alone takes a minute to form."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.apps.schedule_apps import (
    SchedulerProcess,
    apply,
    slot_ledger,
    topology,
    wait_for_leader,
    write_topology,
)
from tests.conftest import settings_for_vhost
from tests.harness.fixtures import node_settings
from tests.harness.rabbit_node import RabbitCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


async def test_killing_the_leaders_node_hands_over_and_fires_every_slot_once(
    rabbit_cluster: RabbitCluster, cluster_vhost: str, tmp_path: Path
) -> None:
    nodes = list(rabbit_cluster)
    settings = [settings_for_vhost(node_settings(node), cluster_vhost) for node in nodes]
    loaded = write_topology(tmp_path, topology("quorum"))
    await apply(settings[0], loaded)
    copies = [
        SchedulerProcess(Path(loaded.filename), tmp_path / f"s{i}.log", settings[i].url)
        for i in (1, 2)
    ]
    try:
        leader = await wait_for_leader(settings[0], loaded, copies)
        await asyncio.sleep(2)
        leader_node = nodes[1] if leader is copies[0] else nodes[2]
        leader_node.kill()
        copies.remove(leader)
        leader.kill9()
        await wait_for_leader(settings[0], loaded, copies, timeout_s=90)
        await asyncio.sleep(3)
    finally:
        for copy in copies:
            copy.stop()
    ledger, slots = await slot_ledger(settings[0])

    ledger.check().assert_ok()
    assert len(slots) >= 5
