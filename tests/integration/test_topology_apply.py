"""plan_topology / apply_topology against the real broker, through the management API and
through AMQP probing alone."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.broker.management import ManagementClient, management_endpoint
from jobsys.errors import TopologyConflictError, TopologyValidationError
from jobsys.ops.declare import apply_topology, plan_topology
from jobsys.settings import Settings
from jobsys.topology.definitions import export_definitions
from jobsys.topology.entities import desired_entities
from jobsys.topology.loader import LoadedTopology, load_topology_text
from jobsys.topology.plan import Plan, VhostSnapshot

BASE = """
version: 1
exchanges:
  t.jobs: {type: topic}
  t.fmt: {type: headers}
queues:
  t.reports: {type: classic, message_ttl: 1h, max_priority: 5}
  t.billing: {type: quorum}
bindings:
  - {exchange: t.jobs, queue: t.reports, routing_key: "report.#"}
  - {exchange: t.jobs, queue: t.billing, routing_key: "billing.*"}
  - {exchange: t.fmt, queue: t.reports, match: any, headers: {format: pdf, legacy: true}}
job_types:
  build_report: {exchange: t.jobs, routing_key: report.build}
  charge: {exchange: t.jobs, routing_key: billing.charge}
"""

BOTH_PATHS = pytest.mark.parametrize("use_management", [True, False], ids=["management", "probe"])


def load(text: str) -> LoadedTopology:
    return load_topology_text(text, "test.yaml")


@pytest.fixture
async def conn(vhost_settings: Settings) -> AsyncIterator[BrokerConnection]:
    async with BrokerConnection(vhost_settings) as connection:
        yield connection


async def snapshot(settings: Settings) -> VhostSnapshot:
    return await ManagementClient(management_endpoint(settings)).snapshot(settings.vhost)


def own_names(snap: VhostSnapshot) -> tuple[set[str], set[str]]:
    """Exchange and queue names in a snapshot, without the broker's own exchanges."""
    exchanges = {
        e["name"] for e in snap.exchanges if e["name"] and not e["name"].startswith("amq.")
    }
    return exchanges, {q["name"] for q in snap.queues}


def names(plan: Plan, action: str, kind: str) -> set[str]:
    return {item.name for item in plan.of(action) if item.kind == kind}  # type: ignore[arg-type]


async def publish(conn: BrokerConnection, queue: str, count: int) -> None:
    channel = await conn.channel()
    for i in range(count):
        await channel.default_exchange.publish(
            aio_pika.Message(f"job {i}".encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue,
        )
    await channel.close()


async def message_count(conn: BrokerConnection, queue: str) -> int:
    channel = await conn.channel()
    declared = await channel.declare_queue(queue, passive=True)
    await channel.close()
    count = declared.declaration_result.message_count
    assert count is not None
    return count


@BOTH_PATHS
@pytest.mark.management
async def test_apply_creates_exactly_what_plan_announced_and_a_second_apply_changes_nothing(
    conn: BrokerConnection, vhost_settings: Settings, use_management: bool
) -> None:
    loaded = load(BASE)
    entities = desired_entities(loaded.topology)
    before = await plan_topology(conn, entities, use_management=use_management)
    assert before.method == ("management" if use_management else "probe")
    assert not before.of("match") and not before.has_conflicts
    assert own_names(await snapshot(vhost_settings)) == (set(), set())

    result = await apply_topology(conn, loaded, use_management=use_management)

    assert result.created == tuple(before.of("create"))
    exchanges, queues = own_names(await snapshot(vhost_settings))
    assert exchanges == names(before, "create", "exchange")
    assert queues == names(before, "create", "queue")
    assert "t.reports.dead" in queues and "jobsys.wait.00" in queues
    bindings = [b for b in (await snapshot(vhost_settings)).bindings if b["source"]]
    announced = before.of("create" if use_management else "ensure")
    assert len(bindings) == len([i for i in announced if i.kind == "binding"])
    assert len(bindings) == len(entities.bindings)

    after = await plan_topology(conn, entities, use_management=use_management)
    assert not after.of("create") and not after.has_conflicts
    assert len(after.of("match")) + len(after.of("ensure")) == len(after.items)
    again = await apply_topology(conn, loaded, use_management=use_management)
    assert again.created == ()
    assert own_names(await snapshot(vhost_settings)) == (exchanges, queues)


@BOTH_PATHS
@pytest.mark.parametrize(
    ("change", "queue", "expected"),
    [
        (
            ("message_ttl: 1h", "message_ttl: 2h"),
            "t.reports",
            "x-message-ttl is 3600000, file wants 7200000",
        ),
        (
            ("t.billing: {type: quorum}", "t.billing: {type: classic}"),
            "t.billing",
            "x-queue-type is 'quorum', file wants 'classic'",
        ),
    ],
    ids=["ttl", "queue-type"],
)
@pytest.mark.management
async def test_changed_argument_is_a_conflict_that_leaves_queue_and_messages_untouched(
    conn: BrokerConnection,
    vhost_settings: Settings,
    use_management: bool,
    change: tuple[str, str],
    queue: str,
    expected: str,
) -> None:
    await apply_topology(conn, load(BASE), use_management=use_management)
    await publish(conn, queue, 7)
    original = await snapshot(vhost_settings)
    transport = conn.connection.transport
    # The changed file also adds a queue: a conflict anywhere means nothing is declared.
    changed = BASE.replace(*change).replace("queues:\n", "queues:\n  t.new: {type: classic}\n")

    with pytest.raises(TopologyConflictError) as caught:
        await apply_topology(conn, load(changed), use_management=use_management)

    assert [line for line in caught.value.diffs if expected in line], caught.value.diffs
    assert all(queue in line for line in caught.value.diffs)
    assert await message_count(conn, queue) == 7
    now = await snapshot(vhost_settings)
    assert now.queue_properties(queue) == original.queue_properties(queue)
    assert "t.new" not in own_names(now)[1]
    # The probes' channel errors never reached the robust connection: no reconnect happened.
    assert conn.connection.transport is transport and not conn.connection.is_closed


@BOTH_PATHS
async def test_every_differing_argument_is_reported_though_the_broker_names_one_per_declare(
    conn: BrokerConnection, use_management: bool
) -> None:
    await apply_topology(conn, load(BASE), use_management=use_management)
    changed = BASE.replace("message_ttl: 1h, max_priority: 5", "message_ttl: 2h")

    plan = await plan_topology(
        conn, desired_entities(load(changed).topology), use_management=use_management
    )

    [conflict] = plan.of("conflict")
    found = {d.argument: (d.current, d.desired) for d in conflict.differences}
    assert found == {"x-message-ttl": (3600000, 7200000), "x-max-priority": (5, None)}
    assert conflict.describe() == (
        "~ queue t.reports: x-message-ttl is 3600000, file wants 7200000; "
        "x-max-priority is 5, file wants not set"
    )


@pytest.mark.management
async def test_validation_against_the_broker_version_fails_before_anything_is_declared(
    conn: BrokerConnection, vhost_settings: Settings
) -> None:
    if conn.server_version >= (4, 0):
        pytest.skip("this broker supports priorities on quorum queues; nothing to refuse")
    text = BASE.replace("t.billing: {type: quorum}", "t.billing: {type: quorum, max_priority: 3}")

    with pytest.raises(TopologyValidationError) as caught:
        await apply_topology(conn, load(text))

    assert "test.yaml:" in str(caught.value) and "max_priority" in str(caught.value)
    assert own_names(await snapshot(vhost_settings)) == (set(), set())


@pytest.mark.management
async def test_entities_not_in_the_file_are_listed_as_extras_and_left_alone(
    conn: BrokerConnection, vhost_settings: Settings
) -> None:
    channel = await conn.channel()
    await channel.declare_exchange("old.x", aio_pika.ExchangeType.FANOUT, durable=True)
    old = await channel.declare_queue("old.stuff", durable=True)
    await old.bind("old.x", routing_key="")
    await channel.close()

    plan = await plan_topology(conn, desired_entities(load(BASE).topology))
    await apply_topology(conn, load(BASE))

    extras = {(item.kind, item.name) for item in plan.of("extra")}
    assert extras == {
        ("exchange", "old.x"),
        ("queue", "old.stuff"),
        ("binding", "old.x -> queue old.stuff (key '')"),
    }
    assert plan.extras_checked
    exchanges, queues = own_names(await snapshot(vhost_settings))
    assert "old.x" in exchanges and "old.stuff" in queues


async def test_unreachable_management_api_falls_back_to_probing_without_showing_the_password(
    vhost_settings: Settings,
) -> None:
    settings = vhost_settings.with_overrides(management_url="http://guest:hunter2@127.0.0.1:9/")
    async with BrokerConnection(settings) as conn:
        plan = await plan_topology(conn, desired_entities(load(BASE).topology))

    assert plan.method == "probe" and not plan.extras_checked
    assert "unreachable" in plan.note and "127.0.0.1:9" in plan.note
    assert "hunter2" not in plan.note


@BOTH_PATHS
@pytest.mark.management
async def test_exported_definitions_loaded_by_the_broker_match_the_plan_exactly(
    conn: BrokerConnection, vhost_settings: Settings, use_management: bool
) -> None:
    entities = desired_entities(load(BASE).topology)
    client = ManagementClient(management_endpoint(vhost_settings))

    await client.load_definitions(
        vhost_settings.vhost, export_definitions(entities, vhost_settings.vhost)
    )
    plan = await plan_topology(conn, entities, use_management=use_management)

    assert not plan.of("create") and not plan.has_conflicts and not plan.of("extra")
    assert len(plan.of("match")) + len(plan.of("ensure")) == len(plan.items)
