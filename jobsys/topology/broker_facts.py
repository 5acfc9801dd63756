"""What the broker a topology is planned against is, and how the plan fits it (pure, no I/O).

``BrokerFacts`` comes from the server properties every AMQP connection receives (product,
version, cluster name) and, where known, the number of running cluster members (the management
API's node list, or the number of broker URLs given). ``fit_to_broker`` then adapts what
``desired_entities`` derived from the file, by version and by cluster:

- RabbitMQ >= 4.0 gives every quorum queue a delivery limit of 20 by default: a message
  requeued 20 times is dead-lettered (or dropped, without a dead-letter exchange). jobsys's dead-
  letter queues are read by requeueing (``dlq peek``) and the scheduler's queues pass tokens by
  requeueing, so both are declared with ``x-delivery-limit: -1`` (no limit, the 3.13 behaviour)
  there. Work queues keep the broker's limit unless the file sets one: a job requeued 20 times
  (workers crashing on it) lands in its dead-letter queue, dead-lettered by the broker.
- RabbitMQ >= 4.0 prioritises quorum queues without an argument (two levels: 0-4 normal, 5 and
  above high, served 2:1); ``x-max-priority`` is not sent to a quorum queue there.
- ``consumer_timeout`` on a queue becomes ``x-consumer-timeout``, which RabbitMQ honours from
  3.12 (``check_broker_support`` refuses it before: 3.10 accepts the argument and ignores it).
- On a cluster (more than one member), classic work queues and classic delay levels are refused:
  a classic queue lives on one node, and its jobs are lost or stuck when that node is. Delay
  levels whose type the file leaves out are quorum there (``desired_entities(cluster=True)``,
  ``Delays.resolved_type``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from jobsys.topology import limits
from jobsys.topology.entities import ArgValue, Entities, QueueSpec
from jobsys.topology.model import Topology
from jobsys.topology.plan import Difference, Plan, PlanItem

#: RabbitMQ's delivery limit for quorum queues without one, from 4.0 on.
QUORUM_DEFAULT_DELIVERY_LIMIT = 20
#: ``x-delivery-limit`` for "no limit" (4.0 and later).
NO_DELIVERY_LIMIT = limits.NO_DELIVERY_LIMIT


@dataclass(frozen=True)
class BrokerFacts:
    """The broker as its server properties (and, where known, its member count) describe it."""

    product: str
    version: tuple[int, ...]
    cluster_name: str = ""
    #: Running cluster members; None when unknown.
    members: int | None = None
    #: Where ``members`` comes from, as a person reads it.
    members_source: str = ""

    @classmethod
    def from_server_properties(
        cls, props: Mapping[str, Any], members: int | None = None, members_source: str = ""
    ) -> BrokerFacts:
        """Read ``product``, ``version`` and ``cluster_name`` (bytes or text) from the
        ``connection.start`` properties; anything missing or unreadable reads as empty/zero."""
        return cls(
            product=_text(props.get("product")),
            version=parse_version(_text(props.get("version"))),
            cluster_name=_text(props.get("cluster_name")),
            members=members,
            members_source=members_source,
        )

    @property
    def shown_version(self) -> str:
        """``3.10.8``."""
        return ".".join(str(part) for part in self.version) or "?"

    @property
    def is_cluster(self) -> bool:
        """True when more than one member is known to run."""
        return self.members is not None and self.members > 1

    @property
    def quorum_delivery_limit_default(self) -> int | None:
        """The delivery limit a quorum queue gets without ``x-delivery-limit`` (None: none)."""
        return QUORUM_DEFAULT_DELIVERY_LIMIT if self.version >= (4, 0) else None

    @property
    def quorum_priorities(self) -> bool:
        """Whether quorum queues prioritise messages (4.0 and later)."""
        return self.version >= (4, 0)

    @property
    def per_queue_consumer_timeout(self) -> bool:
        """Whether ``x-consumer-timeout`` on a queue is honoured (3.12 and later)."""
        return self.version >= (3, 12)

    def describe(self) -> str:
        """``RabbitMQ 3.10.8, cluster rabbit@host of 3 nodes (management API)``."""
        text = f"{self.product or 'broker'} {self.shown_version}"
        if self.cluster_name:
            text += f", cluster {self.cluster_name}"
        if self.members is not None:
            noun = "node" if self.members == 1 else "nodes"
            text += f" of {self.members} {noun}"
            if self.members_source:
                text += f" ({self.members_source})"
        return text


def parse_version(text: str) -> tuple[int, ...]:
    """``"4.1.4"`` -> ``(4, 1, 4)``; a suffix (``3.13.0-rc.2``, ``4.0.0+beta``) is dropped, a
    part without digits reads as 0; nothing readable gives ``()``."""
    numbers: list[int] = []
    for part in text.split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        numbers.append(int(digits) if digits else 0)
        if len(digits) < len(part):
            break  # a suffix ends the version
    return tuple(numbers) if any(numbers) else ()


@dataclass(frozen=True)
class Fitted:
    """``desired_entities`` adapted to one broker, and what a person should know about it."""

    entities: Entities
    notes: tuple[str, ...]


def fit_to_broker(entities: Entities, topology: Topology, facts: BrokerFacts) -> Fitted:
    """Adapt ``entities`` to ``facts`` (module docstring); ``notes`` say what changed and what
    the broker will do by default."""
    notes: list[str] = []
    queues = [_fit_queue(spec, topology, facts, notes) for spec in entities.queues]
    _note_work_queue_limits(topology, facts, notes)
    _note_replicas(topology, facts, notes)
    _note_flow_control_queues(queues, facts, notes)
    if topology.delays.queue_type is None and topology.delays.replicas is None:
        if facts.is_cluster:
            notes.append(
                "the delay levels (and the scheduler's queues) are quorum on this cluster: "
                "delays.queue_type is not set"
            )
        elif facts.members is None:
            # AMQP does not say how many nodes a broker has: without the management API and
            # with one URL, a cluster would get classic levels, each on one node.
            notes.append(
                "the delay levels are classic: the broker's node count is unknown (no "
                "management API answered, one broker URL given); on a cluster give every "
                "node's URL, or set delays: {queue_type: quorum}"
            )
    return Fitted(replace(entities, queues=queues), tuple(notes))


def _note_flow_control_queues(
    queues: list[QueueSpec], facts: BrokerFacts, notes: list[str]
) -> None:
    # The permits, token buckets and breaker state of max_running, rate_limit and breaker are
    # small classic queues (jobsys.consume.permits, rates, breaker); they hold no job, but on
    # a cluster each still lives on one node.
    if not facts.is_cluster:
        return
    names = [
        spec.name
        for spec in queues
        if spec.role in ("permits", "tokens", "breaker")
        and spec.arguments.get("x-queue-type") == "classic"
    ]
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        notes.append(
            f"{shown}: the flow-control queues of max_running, rate_limit and breaker are "
            "classic queues, each on one node of the cluster and unavailable while that node "
            "is down; they hold permits and counters, never jobs"
        )


def cluster_problems(topology: Topology, facts: BrokerFacts) -> list[tuple[tuple[str, ...], str]]:
    """Where the file asks for classic queues that would hold jobs on a cluster, as (path in
    the file, message) pairs; none on a single node."""
    if not facts.is_cluster:
        return []
    where = f"on a cluster of {facts.members} nodes"
    problems: list[tuple[tuple[str, ...], str]] = [
        (
            ("queues", name, "type"),
            f"{where} a classic queue lives on one node: its jobs are lost or stuck while that "
            "node is down; use type: quorum (replicated) for work queues",
        )
        for name, queue in topology.queues.items()
        if queue.type == "classic"
    ]
    if topology.delays.queue_type == "classic":
        problems.append(
            (
                ("delays", "queue_type"),
                f"{where} the classic delay levels live on one node each: delayed jobs and "
                "retries waiting there are lost with it; set delays: {queue_type: quorum}, or "
                "leave queue_type out (quorum is then chosen on a cluster)",
            )
        )
    return problems


def _fit_queue(
    spec: QueueSpec, topology: Topology, facts: BrokerFacts, notes: list[str]
) -> QueueSpec:
    args: dict[str, ArgValue] = dict(spec.arguments)
    quorum = args.get("x-queue-type") == "quorum"
    if quorum and facts.quorum_priorities and "x-max-priority" in args:
        del args["x-max-priority"]
        notes.append(
            f"queue {spec.name}: RabbitMQ {facts.shown_version} prioritises quorum queues "
            "without x-max-priority, in two levels (0-4 normal, 5 and above high, served 2:1)"
        )
    if (
        quorum
        and facts.quorum_delivery_limit_default is not None
        and spec.role in ("dead-letter", "scheduler")
        and "x-delivery-limit" not in args
    ):
        # Peeking a dead-letter queue and passing the scheduler's token both requeue: under
        # the default limit the 21st requeue would drop the message.
        args["x-delivery-limit"] = NO_DELIVERY_LIMIT
    return replace(spec, arguments=args)


def _note_work_queue_limits(topology: Topology, facts: BrokerFacts, notes: list[str]) -> None:
    limit = facts.quorum_delivery_limit_default
    if limit is None:
        return
    for name, queue in topology.queues.items():
        if queue.type == "quorum" and queue.delivery_limit is None:
            notes.append(
                f"queue {name}: RabbitMQ {facts.shown_version} dead-letters a job requeued "
                f"{limit} times (workers crashing or stopping on it) into {name}.dead, without "
                "jobsys's error record (its x-death says delivery_limit); set delivery_limit "
                "to choose another limit"
            )


def _note_replicas(topology: Topology, facts: BrokerFacts, notes: list[str]) -> None:
    if facts.members is None:
        return
    wanted = [(f"queue {name}", q.replicas) for name, q in topology.queues.items()]
    wanted.append(("the delay levels", topology.delays.replicas))
    for what, replicas in wanted:
        if replicas is not None and replicas > facts.members:
            notes.append(
                f"{what}: {replicas} replicas asked for, but the cluster runs "
                f"{facts.members} node{'s' if facts.members != 1 else ''}: the broker places "
                "one per node"
            )
        elif replicas is not None and facts.is_cluster and replicas % 2 == 0:
            notes.append(
                f"{what}: {replicas} replicas tolerate no more node losses than "
                f"{replicas - 1}; an odd count is the usual choice"
            )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


_LIFTED = (Difference("x-delivery-limit", None, NO_DELIVERY_LIMIT),)


def accept_unlifted_limits(plan: Plan) -> Plan:
    """``plan`` where a queue differs only by lacking the ``x-delivery-limit: -1`` the fit
    added (a dead-letter or scheduler queue declared before the broker ran 4.0): a match, and
    a note saying how to lift the limit, instead of a conflict that would stop ``apply``; a
    queue argument cannot change without recreating the queue."""
    items: list[PlanItem] = []
    names: list[str] = []
    for item in plan.items:
        if item.action == "conflict" and item.kind == "queue" and item.differences == _LIFTED:
            items.append(replace(item, action="match", differences=()))
            names.append(item.name)
        else:
            items.append(item)
    if not names:
        return plan
    note = (
        f"{', '.join(names)} exist{'s' if len(names) == 1 else ''} without x-delivery-limit: -1 "
        "(declared before RabbitMQ 4.0): the broker's limit of 20 requeues applies, so lift it "
        'with a policy (docs/operations.md, "Running on a cluster")'
    )
    return replace(plan, items=tuple(items), notes=(*plan.notes, note))
