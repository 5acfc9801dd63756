"""Plan (diff a topology against the live broker) and apply it (idempotent declares).

``plan_topology`` reads the broker through the management API when it answers, and otherwise
probes over AMQP: a passive declare tells whether an entity exists, and redeclaring an
existing one with the desired arguments is a no-op when they match, or fails with
``PRECONDITION_FAILED`` naming the first differing argument with its current value. Probing
then redeclares with that current value to uncover the next difference, so a plan lists them
all, yet never creates or changes anything.

Probes run on plain aiormq channels of the connection, one per entity, never on aio-pika's
robust channels: a robust channel closed by the broker would try to restore itself by
repeating the failed declare, forever.

``apply_topology`` validates against the broker version, plans, and declares nothing at all
when the plan has a conflict (``TopologyConflictError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import aiormq
import aiormq.abc
import aiormq.exceptions

from jobsys.broker.connection import BrokerConnection, translate_error
from jobsys.broker.management import (
    ManagementClient,
    ManagementUnavailable,
    VhostSnapshot,
    management_endpoint,
)
from jobsys.errors import ConnectionFailed, TopologyConflictError
from jobsys.topology.entities import (
    ArgValue,
    BindingSpec,
    Entities,
    ExchangeSpec,
    QueueSpec,
    desired_entities,
)
from jobsys.topology.loader import LoadedTopology

Action = Literal["create", "match", "conflict", "extra", "ensure"]
Kind = Literal["exchange", "queue", "binding"]
Method = Literal["management", "probe"]
Spec = ExchangeSpec | QueueSpec | BindingSpec

#: The plan's order of presentation.
ACTIONS: tuple[Action, ...] = ("create", "conflict", "ensure", "match", "extra")
_SIGN = {"create": "+", "match": "=", "conflict": "~", "extra": "-", "ensure": "*"}


@dataclass(frozen=True)
class Difference:
    """One property or argument the broker holds with another value than the file wants.

    ``None`` means "not set"."""

    argument: str
    current: ArgValue | None
    desired: ArgValue | None

    def describe(self) -> str:
        """``x-message-ttl is 1000, file wants 2000``."""
        return f"{self.argument} is {_shown(self.current)}, file wants {_shown(self.desired)}"


@dataclass(frozen=True)
class PlanItem:
    """What the plan says about one exchange, queue or binding."""

    action: Action
    kind: Kind
    name: str
    spec: Spec | None = None  # the desired entity; None for extras
    differences: tuple[Difference, ...] = ()
    note: str = ""

    def describe(self) -> str:
        """One line a person can read, starting with ``+ = ~ * -``."""
        sign = _SIGN[self.action]
        what = f"{self.kind} {self.name}"
        if self.action == "create":
            return f"{sign} create {what}{_summary(self.spec)}"
        if self.action == "match":
            return f"{sign} {what} matches"
        if self.action == "conflict":
            details = [d.describe() for d in self.differences]
            return f"{sign} {what}: {'; '.join([*details, self.note] if self.note else details)}"
        if self.action == "ensure":
            return f"{sign} ensure {what} (bindings are checked only through the management API)"
        return f"{sign} extra {what} (not in the file; apply leaves it alone)"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data: dict[str, Any] = {"action": self.action, "kind": self.kind, "name": self.name}
        if self.spec is not None:
            data["desired"] = asdict(self.spec)
        if self.differences:
            data["differences"] = [asdict(d) for d in self.differences]
        if self.note:
            data["note"] = self.note
        return data


@dataclass(frozen=True)
class Plan:
    """The difference between a topology and the broker, and how it was found."""

    items: tuple[PlanItem, ...]
    method: Method
    extras_checked: bool
    note: str = ""

    def of(self, action: Action) -> list[PlanItem]:
        """The items with ``action``, in declaration order."""
        return [item for item in self.items if item.action == action]

    @property
    def has_conflicts(self) -> bool:
        """True when the broker holds an entity of the file with other properties."""
        return any(item.action == "conflict" for item in self.items)

    @property
    def changes_nothing(self) -> bool:
        """True when apply would create nothing (bindings to ensure aside)."""
        return not self.of("create") and not self.has_conflicts

    def counts(self) -> dict[str, int]:
        """How many items each action has."""
        return {action: len(self.of(action)) for action in ACTIONS}

    def summary(self) -> str:
        """``2 to create, 0 conflicting, 40 matching, 1 extra``."""
        c = self.counts()
        parts = [
            f"{c['create']} to create",
            f"{c['conflict']} conflicting",
            f"{c['match']} matching",
        ]
        if c["ensure"]:
            parts.append(f"{c['ensure']} bindings to ensure")
        parts.append(f"{c['extra']} extra" if self.extras_checked else "extras not checked")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict for machines."""
        return {
            "method": self.method,
            "extras_checked": self.extras_checked,
            "note": self.note,
            "counts": self.counts(),
            "items": [item.to_json() for item in self.items],
        }


@dataclass(frozen=True)
class ApplyResult:
    """What ``apply_topology`` did: the plan it followed, and what it declared."""

    plan: Plan
    created: tuple[PlanItem, ...] = field(default=())
    ensured: tuple[PlanItem, ...] = field(default=())


async def plan_topology(
    conn: BrokerConnection, entities: Entities, *, use_management: bool = True
) -> Plan:
    """Compare ``entities`` with the broker ``conn`` is connected to.

    Uses the management API when ``use_management`` and it answers; otherwise probes over
    AMQP (extras are then unknown, and bindings are reported as "ensure"). Never changes
    the broker.
    """
    note = "the management API was not used (--no-management)"
    if use_management:
        client = ManagementClient(management_endpoint(conn.settings))
        try:
            snapshot = await client.snapshot(conn.settings.vhost)
        except ManagementUnavailable as exc:
            note = f"{exc}; probed over AMQP instead"
        else:
            return Plan(compare(entities, snapshot), "management", extras_checked=True)
    items = await _probe_all(conn, entities)
    return Plan(tuple(items), "probe", extras_checked=False, note=note)


async def apply_topology(
    conn: BrokerConnection, loaded: LoadedTopology, *, use_management: bool = True
) -> ApplyResult:
    """Make the broker hold every entity of ``loaded``, changing nothing that exists.

    Raises ``TopologyValidationError`` when the broker version lacks a feature the file uses
    and ``TopologyConflictError`` (declaring nothing) when an entity exists with other
    properties. Existing entities the file does not mention are left alone.
    """
    loaded.check_broker_version(conn.server_version)
    plan = await plan_topology(
        conn, desired_entities(loaded.topology), use_management=use_management
    )
    if plan.has_conflicts:
        raise TopologyConflictError([item.describe() for item in plan.of("conflict")])
    to_declare = [item for item in plan.items if item.action in ("create", "ensure")]
    channel = await _open_channel(conn)
    try:
        for kind in ("exchange", "queue", "binding"):
            for item in to_declare:
                if item.kind == kind and item.spec is not None:
                    await _declare(channel, item.spec)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        # Somebody changed the broker between plan and declare.
        raise TopologyConflictError([f"~ {_reason(exc)}"]) from None
    except (Exception, asyncio.CancelledError) as exc:
        if isinstance(exc, asyncio.CancelledError) and _cancelled():
            raise
        raise translate_error(exc, conn.settings) from None
    finally:
        await _close_quietly(channel)
    return ApplyResult(
        plan,
        created=tuple(i for i in to_declare if i.action == "create"),
        ensured=tuple(i for i in to_declare if i.action == "ensure"),
    )


def properties(spec: ExchangeSpec | QueueSpec) -> dict[str, ArgValue]:
    """What the broker compares when ``spec`` is redeclared: its type (exchanges), durable,
    auto_delete, internal (exchanges) and the ``x-`` arguments, in one flat dict."""
    props: dict[str, ArgValue] = {}
    if isinstance(spec, ExchangeSpec):
        props["type"] = spec.type
    props["durable"] = spec.durable
    props["auto_delete"] = False
    if isinstance(spec, ExchangeSpec):
        props["internal"] = False
    props.update(spec.arguments)
    return props


# -- comparing with the management API's view ----------------------------------------------


def compare(entities: Entities, snapshot: VhostSnapshot) -> tuple[PlanItem, ...]:
    """Plan items for ``entities`` against a management API ``snapshot``, extras included.

    Arguments compare exactly, types included: ``1000`` and ``"1000"`` differ.
    """
    items = [
        _compare_one("exchange", e, snapshot.exchange_properties(e.name))
        for e in entities.exchanges
    ]
    items += [_compare_one("queue", q, snapshot.queue_properties(q.name)) for q in entities.queues]
    bound = {_binding_key(b) for b in snapshot.binding_specs()}
    items += [
        PlanItem("match" if _binding_key(b) in bound else "create", "binding", b.describe(), b)
        for b in entities.bindings
    ]
    wanted_exchanges = {e.name for e in entities.exchanges}
    items += [PlanItem("extra", "exchange", n) for n in snapshot.extra_exchanges(wanted_exchanges)]
    items += [
        PlanItem("extra", "queue", n)
        for n in snapshot.extra_queues({q.name for q in entities.queues})
    ]
    wanted_bindings = {_binding_key(b) for b in entities.bindings}
    items += [
        PlanItem("extra", "binding", b.describe())
        for b in snapshot.binding_specs()
        if _binding_key(b) not in wanted_bindings
    ]
    return tuple(items)


def _compare_one(
    kind: Kind, spec: ExchangeSpec | QueueSpec, current: dict[str, ArgValue] | None
) -> PlanItem:
    if current is None:
        return PlanItem("create", kind, spec.name, spec)
    desired = properties(spec)
    differences = tuple(
        Difference(key, current.get(key), desired.get(key))
        for key in [*desired, *(k for k in current if k not in desired)]
        if not _same(current.get(key), desired.get(key))
    )
    if differences:
        return PlanItem("conflict", kind, spec.name, spec, differences)
    return PlanItem("match", kind, spec.name, spec)


def _same(a: ArgValue | None, b: ArgValue | None) -> bool:
    # True == 1 in Python, but not to the broker.
    return type(a) is type(b) and a == b


def _binding_key(spec: BindingSpec) -> tuple[str, str, str, str, tuple[tuple[str, str], ...]]:
    args = tuple(sorted((k, repr(v)) for k, v in spec.arguments.items()))
    return (spec.source, spec.destination, spec.destination_type, spec.routing_key, args)


# -- probing over AMQP -------------------------------------------------------------------------


async def _probe_all(conn: BrokerConnection, entities: Entities) -> list[PlanItem]:
    items: list[PlanItem] = []
    try:
        for exchange in entities.exchanges:
            items.append(await _probe(conn, "exchange", exchange))
        for queue in entities.queues:
            items.append(await _probe(conn, "queue", queue))
    except (Exception, asyncio.CancelledError) as exc:
        if isinstance(exc, asyncio.CancelledError) and _cancelled():
            raise
        raise translate_error(exc, conn.settings) from None
    # Declaring a binding twice is a no-op, but AMQP has no way to ask whether one exists.
    items += [PlanItem("ensure", "binding", b.describe(), b) for b in entities.bindings]
    return items


#: Redeclares per entity before probing gives up uncovering further differences.
_MAX_PROBES = 16


async def _probe(conn: BrokerConnection, kind: Kind, spec: ExchangeSpec | QueueSpec) -> PlanItem:
    channel = await _open_channel(conn)
    try:
        await _declare(channel, spec, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return PlanItem("create", kind, spec.name, spec)
    sent = properties(spec)
    differences: dict[str, Difference] = {}
    note = ""
    for _ in range(_MAX_PROBES):
        try:
            await _declare(channel, spec, passive=False, overrides=sent)
            break
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            channel = await _open_channel(conn)  # the broker closed the old one
            found = parse_inequivalent(_reason(exc), sent)
            if found is None or found.argument in differences:
                # Not a difference probing can walk past: show the broker's own words.
                note = _reason(exc).removeprefix("PRECONDITION_FAILED - ")
                break
            want = properties(spec).get(found.argument)
            differences[found.argument] = Difference(found.argument, found.current, want)
            _set_or_drop(sent, found.argument, found.current)
        except aiormq.exceptions.ChannelLockedResource:
            channel = await _open_channel(conn)
            note = "exclusive to another connection; cannot compare"
            break
    await _close_quietly(channel)
    if differences or note:
        return PlanItem("conflict", kind, spec.name, spec, tuple(differences.values()), note)
    return PlanItem("match", kind, spec.name, spec)


@dataclass(frozen=True)
class Inequivalent:
    """What a ``PRECONDITION_FAILED - inequivalent arg`` error says: the argument and its
    current value on the broker (``None``: not set)."""

    argument: str
    current: ArgValue | None


_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?:queue|exchange) .*?: "
    r"received (?P<received>.+) but current is (?P<current>.+)$"
)
_TYPED = re.compile(r"^the value '(?P<value>.*)' of type '(?P<type>[a-z]+)'$")
_FLAGS = frozenset({"durable", "auto_delete", "internal", "exclusive"})
_INT_TYPES = frozenset(
    {"byte", "short", "signedint", "long", "unsignedbyte", "unsignedshort", "unsignedint"}
)


def parse_inequivalent(text: str, sent: dict[str, ArgValue]) -> Inequivalent | None:
    """Parse the broker's inequivalent-argument error. ``sent`` (the properties declared)
    gives the type when the broker shows a bare value. The broker names only the first
    differing argument per declare."""
    match = _INEQUIVALENT.search(text.strip().strip('"'))
    if match is None:
        return None
    arg, raw = match["arg"], match["current"].strip()
    if raw == "none":
        return Inequivalent(arg, None)
    typed = _TYPED.match(raw)
    if typed is not None:
        value, kind = typed["value"], typed["type"]
        if kind == "bool":
            return Inequivalent(arg, value == "true")
        if kind in _INT_TYPES and _is_int(value):
            return Inequivalent(arg, int(value))
        return Inequivalent(arg, value)
    value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == "'" else raw
    like = sent.get(arg)
    if arg in _FLAGS or isinstance(like, bool):
        return Inequivalent(arg, value == "true")
    if isinstance(like, int) and _is_int(value):
        return Inequivalent(arg, int(value))
    return Inequivalent(arg, value)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _set_or_drop(properties: dict[str, ArgValue], key: str, value: ArgValue | None) -> None:
    if value is None:
        properties.pop(key, None)
    else:
        properties[key] = value


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


async def _open_channel(conn: BrokerConnection) -> aiormq.abc.AbstractChannel:
    """A plain (not robust) channel on ``conn``'s current AMQP connection."""
    transport = conn.connection.transport
    if transport is None:  # the robust connection is between reconnects
        raise ConnectionFailed(f"lost the connection to {conn.settings.masked_url}")
    amqp: aiormq.abc.AbstractConnection = transport.connection
    try:
        return await amqp.channel()
    except (Exception, asyncio.CancelledError) as exc:
        if isinstance(exc, asyncio.CancelledError) and _cancelled():
            raise
        raise translate_error(exc, conn.settings) from None


async def _close_quietly(channel: aiormq.abc.AbstractChannel) -> None:
    if not channel.is_closed:
        with contextlib.suppress(aiormq.exceptions.AMQPError):  # the broker closed it first
            await channel.close()


def _reason(exc: BaseException) -> str:
    text = next((a for a in exc.args if isinstance(a, str)), str(exc))
    return text.strip('"')


def _cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _shown(value: ArgValue | None) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else repr(value)


def _summary(spec: Spec | None) -> str:
    if isinstance(spec, ExchangeSpec):
        return f" ({spec.type}{'' if spec.durable else ', transient'})"
    if isinstance(spec, QueueSpec):
        shown = ", ".join(f"{k}={_shown(v)}" for k, v in spec.arguments.items())
        return f" ({shown}{'' if spec.durable else ', transient'})"
    return ""
