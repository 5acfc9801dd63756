"""Plan a topology against the live broker, and apply it (idempotent declares).

The plan itself (its items, the comparison with a management API listing, the reading of the
broker's refusals) is pure and lives in ``jobsys.topology.plan``; this module does the I/O.

``plan_topology`` reads the broker through the management API when it answers, and otherwise
probes over AMQP: a passive declare tells whether an entity exists, and redeclaring an
existing one with the desired arguments is a no-op when they match, or fails with
``PRECONDITION_FAILED`` naming the first differing argument with its current value. Probing
then redeclares with that current value to uncover the next difference, so a plan lists them
all, yet never creates or changes anything.

Probes run on plain aiormq channels of the connection, one per entity, never on aio-pika's
robust channels: a robust channel closed by the broker would try to restore itself by
repeating the failed declare, forever.

``apply_topology`` checks everything it can before the first declare (the broker version, and
every entity against what AMQP and the broker accept), plans, and declares nothing at all when
the plan has a conflict (``TopologyConflictError``). Should the broker refuse a declare
half-way, the error says exactly what was created and what was not (``ApplyProgress``).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiormq
import aiormq.abc
import aiormq.exceptions
from aiormq import spec

from jobsys.broker.connection import BrokerConnection, broker_errors, close_quietly
from jobsys.broker.management import (
    ManagementClient,
    ManagementUnavailable,
    management_endpoint,
)
from jobsys.broker.passive import node_down, reason_of, unreachable
from jobsys.errors import (
    AccessRefused,
    BrokerError,
    ConnectionFailed,
    JobsysError,
    TopologyChangedDuringApply,
    TopologyConflictError,
    TopologyError,
)
from jobsys.topology.broker_facts import BrokerFacts, accept_unlifted_limits, fit_to_broker
from jobsys.topology.entities import (
    ArgValue,
    BindingSpec,
    Entities,
    ExchangeSpec,
    QueueSpec,
    desired_entities,
)
from jobsys.topology.loader import LoadedTopology
from jobsys.topology.model import Topology
from jobsys.topology.own import OwnLayout
from jobsys.topology.plan import (
    ApplyResult,
    Difference,
    Kind,
    Plan,
    PlanItem,
    Spec,
    compare,
    parse_inequivalent,
    properties,
)
from jobsys.topology.progress import ApplyProgress

__all__ = [
    "apply_plan",
    "apply_topology",
    "broker_facts",
    "plan_for_broker",
    "plan_topology",
    "planned_entities",
]


async def plan_topology(
    conn: BrokerConnection, entities: Entities, *, use_management: bool = True
) -> Plan:
    """Compare ``entities`` with the broker ``conn`` is connected to.

    Uses the management API when ``use_management`` and it answers for the broker ``conn``
    reached (the same cluster name); otherwise probes over AMQP (extras are then unknown, and
    bindings are reported as "ensure") and says why in the plan's note. Never changes the
    broker.
    """
    note = "the management API was not used (--no-management)"
    if use_management:
        client = ManagementClient(management_endpoint(conn.settings))
        try:
            await client.confirm_same_broker(conn.amqp.server_properties)
            snapshot = await client.snapshot(conn.settings.vhost)
        except ManagementUnavailable as exc:
            note = f"{exc}; probed over AMQP instead"
        else:
            return Plan(compare(entities, snapshot), "management", extras_checked=True)
    items = await _probe_all(conn, entities)
    return Plan(tuple(items), "probe", extras_checked=False, note=note)


async def broker_facts(conn: BrokerConnection, *, use_management: bool = True) -> BrokerFacts:
    """What ``conn``'s broker is: version and cluster name from its server properties, and
    its running members from the management API (when it answers for this broker), else from
    the number of broker URLs given when there are several, else unknown."""
    with broker_errors(conn.settings):
        props = dict(conn.amqp.server_properties)
    if use_management:
        client = ManagementClient(management_endpoint(conn.settings))
        try:
            await client.confirm_same_broker(props)
            members = await client.running_nodes()
        except ManagementUnavailable:
            pass
        else:
            return BrokerFacts.from_server_properties(props, members, "management API")
    given = len(conn.settings.urls)
    if given > 1:
        return BrokerFacts.from_server_properties(props, given, "the broker URLs given")
    return BrokerFacts.from_server_properties(props)


async def planned_entities(
    conn: BrokerConnection, loaded: LoadedTopology, *, use_management: bool = True
) -> tuple[Entities, BrokerFacts, tuple[str, ...]]:
    """The entities of ``loaded`` fitted to ``conn``'s broker (``broker_facts.fit_to_broker``),
    after every check that needs the broker: its version, its cluster, what it accepts.
    Raises ``TopologyValidationError`` before anything is declared."""
    facts = await broker_facts(conn, use_management=use_management)
    loaded.check_broker_version(facts.version)
    loaded.check_cluster(facts)
    entities = desired_entities(loaded.topology, cluster=facts.is_cluster)
    fitted = fit_to_broker(entities, loaded.topology, facts)
    loaded.check_declarable(fitted.entities)
    return fitted.entities, facts, fitted.notes


async def plan_for_broker(
    conn: BrokerConnection, loaded: LoadedTopology, *, use_management: bool = True
) -> Plan:
    """``plan_topology`` for ``loaded`` fitted to the broker, naming the broker and the notes
    of the fit."""
    entities, facts, notes = await planned_entities(conn, loaded, use_management=use_management)
    plan = await plan_topology(conn, entities, use_management=use_management)
    return accept_unlifted_limits(replace(plan, broker=facts.describe(), notes=notes))


async def apply_topology(
    conn: BrokerConnection, loaded: LoadedTopology, *, use_management: bool = True
) -> ApplyResult:
    """Make the broker hold every entity of ``loaded``, changing nothing that exists.

    Raises ``TopologyValidationError`` when the broker version lacks a feature the file uses,
    the broker is a cluster and the file asks for classic queues, or an entity to declare is
    past what AMQP or the broker accepts, and ``TopologyConflictError`` when an entity exists
    with other properties: in each case before declaring anything. Existing entities the file
    does not mention are left alone.
    """
    plan = await plan_for_broker(conn, loaded, use_management=use_management)
    result = await apply_plan(conn, plan)
    await fill_permits(conn, loaded.topology, result)
    return result


async def fill_permits(conn: BrokerConnection, topology: Topology, result: ApplyResult) -> None:
    """Put ``max_running`` permits into each permits queue this apply created, and only there:
    permits held by running jobs are unacked, so nobody can count them in an existing queue, and
    filling it again would add to them. A permits queue is filled once, at its creation; a new
    limit is a new queue (its name carries the count)."""
    created = {item.name for item in result.created if item.kind == "queue"}
    own = OwnLayout(topology.namespace)
    wanted = {
        own.permits_queue(name, job_type.max_running): job_type.max_running
        for name, job_type in topology.job_types.items()
        if job_type.max_running is not None
    }
    for queue, count in wanted.items():
        if queue in created:
            await _publish_permits(conn, queue, count)


async def _publish_permits(conn: BrokerConnection, queue: str, count: int) -> None:
    channel = await conn.plain_channel()
    try:
        properties = spec.Basic.Properties(delivery_mode=2, message_type="jobsys.permit")
        confirms = [
            channel.basic_publish(
                str(number).encode(), routing_key=queue, properties=properties, mandatory=True
            )
            for number in range(1, count + 1)
        ]
        for confirm in asyncio.as_completed(confirms):
            outcome = await confirm
            if not isinstance(outcome, spec.Basic.Ack):
                raise TopologyError(
                    f"the broker did not take every permit of {queue}: delete the queue and run "
                    "`jobsys topology apply` again"
                )
    finally:
        await close_quietly(channel)


async def apply_plan(conn: BrokerConnection, plan: Plan) -> ApplyResult:
    """Declare what ``plan`` creates or ensures: exchanges, then queues, then bindings.

    A plan with a conflict declares nothing (``TopologyConflictError``). When the broker refuses
    a declare half-way (a permission the user lacks, an entity somebody changed since the
    plan), the error raised says exactly what was created before and what was not declared.
    """
    if plan.has_conflicts:
        raise TopologyConflictError([item.describe() for item in plan.of("conflict")])
    progress = ApplyProgress(
        tuple(
            item
            for kind in ("exchange", "queue", "binding")
            for item in plan.items
            if item.kind == kind and item.action in ("create", "ensure") and item.spec
        )
    )
    channel = await conn.plain_channel()
    try:
        for item in progress.items:
            await _declare_reporting(conn, channel, item, progress)
    finally:
        await close_quietly(channel)
    return ApplyResult(plan, created=progress.created, ensured=progress.ensured)


async def _declare_reporting(
    conn: BrokerConnection,
    channel: aiormq.abc.AbstractChannel,
    item: PlanItem,
    progress: ApplyProgress,
) -> None:
    assert item.spec is not None
    try:
        with broker_errors(conn.settings):
            try:
                await _declare(channel, item.spec)
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                raise _precondition_failed(item, reason_of(exc)) from None
    except JobsysError as exc:
        raise _stopped(exc, progress.report()) from None
    progress.advance()


def _precondition_failed(item: PlanItem, reason: str) -> JobsysError:
    if "inequivalent arg" in reason:
        # Somebody changed the broker between plan and declare.
        return TopologyConflictError([f"~ {reason}"])
    return BrokerError(f"the broker refused {item.kind} {item.name}: {reason}")


def _stopped(exc: JobsysError, report: str) -> JobsysError:
    """``exc``, of the same kind (so the exit code stays), telling how far apply got."""
    if isinstance(exc, TopologyConflictError):
        return TopologyChangedDuringApply(exc.diffs, report)
    message = f"{exc}\n{report}"
    if isinstance(exc, AccessRefused):
        return AccessRefused(message)
    if isinstance(exc, ConnectionFailed):
        return ConnectionFailed(message)
    return BrokerError(message)


# -- probing over AMQP -------------------------------------------------------------------------


async def _probe_all(conn: BrokerConnection, entities: Entities) -> list[PlanItem]:
    items: list[PlanItem] = []
    with broker_errors(conn.settings):
        for exchange in entities.exchanges:
            items.append(await _probe(conn, "exchange", exchange))
        for queue in entities.queues:
            items.append(await _probe(conn, "queue", queue))
    # Declaring a binding twice is a no-op, but AMQP has no way to ask whether one exists.
    items += [PlanItem("ensure", "binding", b.describe(), b) for b in entities.bindings]
    return items


#: Redeclares per entity before probing gives up uncovering further differences.
_MAX_PROBES = 16


async def _probe(conn: BrokerConnection, kind: Kind, spec: ExchangeSpec | QueueSpec) -> PlanItem:
    channel = await conn.plain_channel()
    try:
        await _declare(channel, spec, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        if node_down(reason_of(exc)):  # it exists: planning to create it would mislead
            raise unreachable(f"{kind} {spec.name!r}", reason_of(exc)) from None
        return PlanItem("create", kind, spec.name, spec)
    sent = properties(spec)
    differences: dict[str, Difference] = {}
    note = ""
    for _ in range(_MAX_PROBES):
        try:
            await _declare(channel, spec, passive=False, overrides=sent)
            break
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            channel = await conn.plain_channel()  # the broker closed the old one
            found = parse_inequivalent(reason_of(exc), sent)
            if found is None or found.argument in differences:
                # Not a difference probing can walk past: show the broker's own words.
                note = reason_of(exc).removeprefix("PRECONDITION_FAILED - ")
                break
            want = properties(spec).get(found.argument)
            differences[found.argument] = Difference(found.argument, found.current, want)
            _set_or_drop(sent, found.argument, found.current)
        except aiormq.exceptions.ChannelLockedResource:
            channel = await conn.plain_channel()
            note = "exclusive to another connection; cannot compare"
            break
    await close_quietly(channel)
    if differences or note:
        return PlanItem("conflict", kind, spec.name, spec, tuple(differences.values()), note)
    return PlanItem("match", kind, spec.name, spec)


def _set_or_drop(props: dict[str, ArgValue], key: str, value: ArgValue | None) -> None:
    if value is None:
        props.pop(key, None)
    else:
        props[key] = value


# -- declaring ---------------------------------------------------------------------------------


async def _declare(
    channel: aiormq.abc.AbstractChannel,
    spec: Spec,
    *,
    passive: bool = False,
    overrides: dict[str, ArgValue] | None = None,
) -> None:
    """Declare ``spec``; ``overrides`` (shaped like ``properties(spec)``) replace its values."""
    if isinstance(spec, BindingSpec):
        if spec.destination_type == "queue":
            await channel.queue_bind(
                spec.destination, spec.source, spec.routing_key, arguments=dict(spec.arguments)
            )
        else:
            await channel.exchange_bind(
                spec.destination, spec.source, spec.routing_key, arguments=dict(spec.arguments)
            )
        return
    props = properties(spec) if overrides is None else overrides
    arguments: dict[str, Any] = {k: v for k, v in props.items() if k.startswith("x-")}
    durable = bool(props.get("durable", True))
    auto_delete = bool(props.get("auto_delete", False))
    if isinstance(spec, ExchangeSpec):
        await channel.exchange_declare(
            spec.name,
            exchange_type=str(props.get("type", spec.type)),
            passive=passive,
            durable=durable,
            auto_delete=auto_delete,
            internal=bool(props.get("internal", False)),
            arguments=None if passive else arguments,
        )
    else:
        await channel.queue_declare(
            spec.name,
            passive=passive,
            durable=durable,
            auto_delete=auto_delete,
            arguments=None if passive else arguments,
        )
