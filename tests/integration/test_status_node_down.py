"""``jobsys status``, ``delays status|list|retire`` when the node holding classic
queues is down: RabbitMQ answers a passive declare of such a queue with ``404 NOT_FOUND``, as
it does for a queue that does not exist. They must say "node down", not "missing, run apply",
and ``retire`` must not delete the old delay levels it can still reach while another may hold
jobs (they would dead-letter into a deleted level and be dropped). On the test cluster: the
queues are declared through one node (classic queues live on the node that declared them),
that node is stopped, and the commands run through another.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiormq
import pytest
from click.testing import CliRunner, Result

from jobsys.broker.connection import BrokerConnection
from jobsys.cli import main
from jobsys.ops.declare import apply_topology
from jobsys.settings import Settings
from jobsys.topology.delays import LEVELS, legacy_level_name
from jobsys.topology.loader import load_topology_text
from tests.conftest import settings_for_vhost
from tests.harness.fixtures import node_settings
from tests.harness.rabbit_node import RabbitCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOPOLOGY = """\
version: 1
exchanges:
  jobs: {type: direct}
queues:
  work: {type: classic}
bindings:
  - {exchange: jobs, queue: work, routing_key: job}
job_types:
  job: {exchange: jobs, routing_key: job}
"""
#: An old delay level on each side: the one on the stopped node cannot be read, the other can.
LEGACY_ON_STOPPED, LEGACY_ON_LIVE = legacy_level_name(3), legacy_level_name(2)


async def _declare(settings: Settings, queue: str, *, jobs: int = 0, apply: bool = False) -> None:
    """Declare ``queue`` (holding ``jobs`` messages), and apply the topology first if asked,
    through the node of ``settings``."""
    async with BrokerConnection(settings) as conn:
        if apply:
            await apply_topology(conn, load_topology_text(TOPOLOGY), use_management=False)
        channel = await conn.plain_channel()
        await channel.queue_declare(queue, durable=True)
        for _ in range(jobs):
            await channel.basic_publish(b"{}", routing_key=queue)
        await channel.close()


async def _exists(settings: Settings, queue: str) -> bool:
    async with BrokerConnection(settings) as conn:
        channel = await conn.plain_channel()
        try:
            await channel.queue_declare(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        await channel.close()
        return True


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_queues_on_a_stopped_node_show_as_node_down_and_retire_deletes_nothing(
    rabbit_cluster: RabbitCluster, cluster_vhost: str, tmp_path: Path
) -> None:
    live, stopped = list(rabbit_cluster)[:2]
    on_stopped = settings_for_vhost(node_settings(stopped), cluster_vhost)
    on_live = settings_for_vhost(node_settings(live), cluster_vhost)
    asyncio.run(_declare(on_stopped, LEGACY_ON_STOPPED, apply=True))
    asyncio.run(_declare(on_live, LEGACY_ON_LIVE, jobs=1))
    topology_file = tmp_path / "topology.yaml"
    topology_file.write_text(TOPOLOGY)
    stopped.stop()
    common = ["--topology", str(topology_file), "--url", on_live.url]

    result = _cli("status", *common, "--no-management", "--json")
    assert result.exit_code == 0, result.output
    [work] = json.loads(result.output)["queues"]
    assert (work["exists"], work["node_down"], work["ready"]) == (True, True, None)
    assert work["dead_letter"]["node_down"] is True
    result = _cli("status", *common, "--no-management")
    assert result.exit_code == 0, result.output
    assert "work (node down)" in result.output and "(missing)" not in result.output
    assert "down or still starting" in result.output
    assert "topology apply" not in result.output

    result = _cli("delays", "status", *common, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["node_down_levels"], shown["missing_levels"]) == (LEVELS, 0)
    assert shown["legacy_levels"] == {LEGACY_ON_STOPPED: None, LEGACY_ON_LIVE: 1}
    result = _cli("delays", "status", *common)
    assert result.exit_code == 0, result.output
    assert "not declared" not in result.output
    assert f"{LEVELS} of {LEVELS} unreachable - its node is down or starting" in result.output
    assert f"not counted (unreachable - its node is down or starting): {LEGACY_ON_STOPPED}" in (
        result.output
    )

    result = _cli("delays", "list", *common, "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert listed["jobs"] == [] and len(listed["unreachable"]) == LEVELS
    result = _cli("delays", "list", *common)
    assert result.exit_code == 0, result.output
    assert f"not read, {LEVELS} of {LEVELS} levels unreachable" in result.output

    # Even with the level it can read empty, the one it cannot may hold jobs that would
    # dead-letter into it once deleted.
    asyncio.run(_purge(on_live, LEGACY_ON_LIVE))
    result = _cli("delays", "retire", "--url", on_live.url)
    assert result.exit_code != 0
    assert LEGACY_ON_STOPPED in result.output and "nothing was deleted" in result.output
    assert asyncio.run(_exists(on_live, LEGACY_ON_LIVE))


async def _purge(settings: Settings, queue: str) -> None:
    async with BrokerConnection(settings) as conn:
        channel = await conn.plain_channel()
        await channel.queue_purge(queue)
        await channel.close()
