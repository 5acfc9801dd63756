"""``plan``, ``apply`` and ``status`` read the management API only when it answers for the broker
the AMQP connection reached (hardening item 13).

By default the management API is looked for on port 15672 of the AMQP host. For a node on
another AMQP port of the same host, that is another broker: the test-owned node (no management
plugin) next to the shared broker (API on 127.0.0.1:15672) is exactly that case. To make a
wrong answer visible, the shared broker holds a vhost of the same name with a conflicting
queue in it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology, plan_topology
from jobsys.ops.status import StatusReader
from jobsys.settings import Settings
from jobsys.topology.entities import desired_entities
from jobsys.topology.loader import load_topology_text
from tests.conftest import create_vhost, delete_vhost, settings_for_vhost
from tests.harness.fixtures import node_settings
from tests.harness.rabbit_node import RabbitNode

JOBSYS = str(Path(sys.executable).with_name("jobsys"))

TOPOLOGY = """\
version: 1
exchanges:
  m.jobs: {type: direct}
queues:
  m.work: {type: classic, message_ttl: 1h}
bindings:
  - {exchange: m.jobs, queue: m.work, routing_key: work}
job_types:
  work: {exchange: m.jobs, routing_key: work}
"""


@pytest.fixture
def twin_vhosts(
    running_own_broker: RabbitNode, broker_settings: Settings
) -> Iterator[tuple[Settings, Settings]]:
    """One vhost name on two brokers: (the test node's, the shared broker's). The shared one
    holds ``m.work`` with another TTL than the file's; the node's is empty."""
    name = f"jobsys-twin-{uuid.uuid4().hex[:8]}"
    running_own_broker.ctl("add_vhost", name)
    running_own_broker.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    create_vhost(name)
    try:
        # The node's settings keep the default management endpoint: 15672 on the AMQP host.
        own = node_settings(running_own_broker.url.rstrip("/") + "/" + name)
        assert own.management_url is None
        yield own, settings_for_vhost(broker_settings, name)
    finally:
        delete_vhost(name)
        running_own_broker.ensure_running()
        running_own_broker.ctl("delete_vhost", name)


@pytest.fixture
async def decoy(twin_vhosts: tuple[Settings, Settings]) -> AsyncIterator[Settings]:
    """The shared broker's twin vhost, holding a conflicting ``m.work``; yields the node's."""
    own, shared = twin_vhosts
    async with BrokerConnection(shared) as conn:
        channel = await conn.plain_channel()
        await channel.queue_declare("m.work", durable=True, arguments={"x-message-ttl": 5})
        await channel.close()
    yield own


async def test_plan_on_a_node_whose_host_port_15672_is_another_broker_probes_over_amqp(
    decoy: Settings,
) -> None:
    entities = desired_entities(load_topology_text(TOPOLOGY).topology)

    async with BrokerConnection(decoy) as conn:
        plan = await plan_topology(conn, entities)

    assert plan.method == "probe"
    assert not plan.has_conflicts, [i.describe() for i in plan.of("conflict")]
    assert {i.name for i in plan.of("create") if i.kind == "queue"} >= {"m.work", "m.work.dead"}
    assert "rabbit@" in plan.note and "probed over AMQP instead" in plan.note
    assert "another broker" in plan.note


async def test_apply_on_that_node_declares_there_and_reads_nothing_from_the_other_broker(
    decoy: Settings,
) -> None:
    loaded = load_topology_text(TOPOLOGY)

    async with BrokerConnection(decoy) as conn:
        result = await apply_topology(conn, loaded)
        again = await plan_topology(conn, desired_entities(loaded.topology))

    assert result.plan.method == "probe"
    assert {i.name for i in result.created if i.kind == "queue"} >= {"m.work", "m.work.dead"}
    assert not again.of("create") and not again.has_conflicts


async def test_status_on_that_node_reads_over_amqp_and_says_why(decoy: Settings) -> None:
    loaded = load_topology_text(TOPOLOGY)
    async with BrokerConnection(decoy) as conn:
        await apply_topology(conn, loaded, use_management=False)
    reader = StatusReader(decoy, loaded.topology, use_management=True)
    try:
        report = await reader.read()
    finally:
        await reader.close()

    assert report.source == "amqp"
    assert "another broker" in report.note and "read over AMQP instead" in report.note
    work = next(q for q in report.queues if q.name == "m.work")
    assert work.counts.exists and work.counts.ready == 0


def test_plan_cli_on_that_node_says_it_probed_and_why(decoy: Settings, tmp_path: Path) -> None:
    file = tmp_path / "topology.yaml"
    file.write_text(TOPOLOGY)

    result = subprocess.run(
        [JOBSYS, "topology", "plan", str(file)],
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if k != "JOBSYS_MANAGEMENT_URL"},
            "JOBSYS_URL": decoy.url,
        },
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "via probing over AMQP" in result.stdout
    assert "another broker" in result.stdout
    assert "~ queue m.work" not in result.stdout


@pytest.mark.management
async def test_the_shared_broker_and_its_own_api_are_recognised_as_one(
    vhost_settings: Settings,
) -> None:
    entities = desired_entities(load_topology_text(TOPOLOGY).topology)

    async with BrokerConnection(vhost_settings) as conn:
        plan = await plan_topology(conn, entities)
    reader = StatusReader(
        vhost_settings, load_topology_text(TOPOLOGY).topology, use_management=True
    )
    try:
        report = await reader.read()
    finally:
        await reader.close()

    assert plan.method == "management" and plan.note == ""
    assert report.source == "management"
