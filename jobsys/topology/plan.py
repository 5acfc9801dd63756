"""Plans: what a topology needs from the broker that the broker does not hold (pure).

A ``Plan`` lists, per exchange, queue and binding of a topology, whether ``apply`` would
create it, finds it matching, finds it with other properties (a conflict), only ensures it
(bindings, when AMQP probing cannot tell) or sees it on the broker but not in the file. It is
worked out from a management API listing (``compare`` over a ``VhostSnapshot``) or from probes
over AMQP, whose refusals ``parse_inequivalent`` reads; ``jobsys.ops.declare`` does the I/O.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from jobsys.topology.entities import ArgValue, BindingSpec, Entities, ExchangeSpec, QueueSpec

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
            return f"{sign} ensure {what}"
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
    #: The broker planned against (``BrokerFacts.describe``), and what fitting the file to it
    #: changed or what the broker will do by default (``broker_facts.fit_to_broker``).
    broker: str = ""
    notes: tuple[str, ...] = ()

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
            "broker": self.broker,
            "notes": list(self.notes),
            "counts": self.counts(),
            "items": [item.to_json() for item in self.items],
        }


@dataclass(frozen=True)
class ApplyResult:
    """What ``apply_topology`` did: the plan it followed, and what it declared."""

    plan: Plan
    created: tuple[PlanItem, ...] = field(default=())
    ensured: tuple[PlanItem, ...] = field(default=())


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


@dataclass(frozen=True)
class VhostSnapshot:
    """One vhost's exchanges, queues and bindings as the management API lists them."""

    exchanges: list[dict[str, Any]]
    queues: list[dict[str, Any]]
    bindings: list[dict[str, Any]]

    def exchange_properties(self, name: str) -> dict[str, ArgValue] | None:
        """Type, durable, auto_delete, internal and ``x-`` arguments of exchange ``name``
        (None when there is none), keyed like ``properties``."""
        raw = _find(self.exchanges, name)
        if raw is None:
            return None
        props: dict[str, ArgValue] = {
            "type": str(raw.get("type")),
            "durable": bool(raw.get("durable")),
            "auto_delete": bool(raw.get("auto_delete")),
            "internal": bool(raw.get("internal")),
        }
        props.update(_arguments(raw))
        return props

    def queue_properties(self, name: str) -> dict[str, ArgValue] | None:
        """Durable, auto_delete and ``x-`` arguments of queue ``name`` (None when there is
        none); ``x-queue-type`` comes from the queue's type when it was declared without."""
        raw = _find(self.queues, name)
        if raw is None:
            return None
        props: dict[str, ArgValue] = {
            "durable": bool(raw.get("durable")),
            "auto_delete": bool(raw.get("auto_delete")),
        }
        props.update(_arguments(raw))
        if "x-queue-type" not in props and raw.get("type"):
            props["x-queue-type"] = str(raw["type"])
        return props

    def binding_specs(self) -> list[BindingSpec]:
        """Every binding but the default exchange's implicit one per queue."""
        return [_binding_of(raw) for raw in self.bindings if raw.get("source")]

    def extra_exchanges(self, wanted: set[str]) -> list[str]:
        """Exchanges not in ``wanted``, leaving out the default exchange and ``amq.*``."""
        names = (str(raw.get("name", "")) for raw in self.exchanges)
        return [n for n in names if n and not n.startswith("amq.") and n not in wanted]

    def extra_queues(self, wanted: set[str]) -> list[str]:
        """Queues not in ``wanted``. Exclusive and server-named (``amq.*``) queues belong to
        running clients, not to a topology, and are left out."""
        return [
            str(raw.get("name"))
            for raw in self.queues
            if not raw.get("exclusive")
            and not str(raw.get("name", "")).startswith("amq.")
            and raw.get("name") not in wanted
        ]


def _find(items: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((item for item in items if item.get("name") == name), None)


def _arguments(raw: dict[str, Any]) -> dict[str, ArgValue]:
    arguments = raw.get("arguments") or {}
    return {str(k): v for k, v in arguments.items() if isinstance(v, str | int | bool)}


def _binding_of(raw: dict[str, Any]) -> BindingSpec:
    return BindingSpec(
        str(raw.get("source", "")),
        str(raw.get("destination", "")),
        "exchange" if raw.get("destination_type") == "exchange" else "queue",
        str(raw.get("routing_key", "")),
        _arguments(raw),
    )


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
