"""Everything a topology asks the broker to hold, as plain data (pure, no I/O).

One function, ``desired_entities``, turns a ``Topology`` into the exchanges, queues and
bindings that ``declare`` plans and applies, that ``export`` writes as RabbitMQ definitions,
and that workers and producers rely on: the user's own entities plus the dead-letter exchange,
one dead-letter queue per work queue, the delay levels and the due exchange, all named under
the topology's namespace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from jobsys.topology import delays
from jobsys.topology.fields import ttl_ms
from jobsys.topology.model import (
    DEAD_LETTER_EXCHANGE,
    Queue,
    Topology,
    dead_letter_queue_name,
)
from jobsys.topology.own import (
    REFILLER_KEY,
    STATE_KEY,
    TOKEN_KEY,
    OwnLayout,
    breaker_events_arguments,
    bucket_arguments,
    cancellations_arguments,
    history_arguments,
    last_value_arguments,
    leader_arguments,
    permits_arguments,
)

ArgValue = str | int | bool


@dataclass(frozen=True)
class ExchangeSpec:
    """An exchange as the broker sees it."""

    name: str
    type: str
    durable: bool = True
    arguments: dict[str, ArgValue] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueSpec:
    """A queue as the broker sees it; ``role`` says why jobsys wants it."""

    name: str
    durable: bool
    arguments: dict[str, ArgValue]
    role: Literal[
        "work",
        "dead-letter",
        "delay",
        "scheduler",
        "cancellations",
        "history",
        "permits",
        "breaker",
        "tokens",
    ]


@dataclass(frozen=True)
class BindingSpec:
    """A binding from exchange ``source`` to a queue or an exchange."""

    source: str
    destination: str
    destination_type: Literal["queue", "exchange"]
    routing_key: str
    arguments: dict[str, ArgValue] = field(default_factory=dict)

    def describe(self) -> str:
        """One line a person can read."""
        arrow = f"{self.source} -> {self.destination_type} {self.destination}"
        if self.arguments:
            return f"{arrow} (headers {self.arguments})"
        return f"{arrow} (key {self.routing_key!r})"


@dataclass(frozen=True)
class Entities:
    """The whole desired state."""

    exchanges: list[ExchangeSpec]
    queues: list[QueueSpec]
    bindings: list[BindingSpec]
    delay_levels: int

    def queue(self, name: str) -> QueueSpec:
        """The queue called ``name`` (KeyError if the topology has none)."""
        for spec in self.queues:
            if spec.name == name:
                return spec
        raise KeyError(name)


def user_bindings(topology: Topology) -> list[BindingSpec]:
    """The file's own bindings as ``BindingSpec``s (no derived dead-letter or delay ones)."""
    specs = []
    for binding in topology.bindings:
        arguments: dict[str, ArgValue] = {}
        if binding.headers is not None:
            arguments = {"x-match": binding.match or "all", **binding.headers}
        specs.append(
            BindingSpec(binding.exchange, binding.queue, "queue", binding.routing_key, arguments)
        )
    return specs


def work_queue_arguments(
    name: str, queue: Queue, dead_letter_exchange: str = DEAD_LETTER_EXCHANGE
) -> dict[str, ArgValue]:
    """The ``x-`` arguments of work queue ``name``. ``x-queue-type`` is always explicit so a
    vhost default can never change a queue's type underneath us."""
    args: dict[str, ArgValue] = {
        "x-queue-type": queue.type,
        "x-dead-letter-exchange": dead_letter_exchange,
        "x-dead-letter-routing-key": dead_letter_queue_name(name),
    }
    if queue.max_priority is not None:
        args["x-max-priority"] = queue.max_priority
    if queue.max_length is not None:
        args["x-max-length"] = queue.max_length
    if queue.max_length_bytes is not None:
        args["x-max-length-bytes"] = queue.max_length_bytes
    if queue.overflow is not None:
        args["x-overflow"] = queue.overflow
    if queue.message_ttl is not None:
        args["x-message-ttl"] = ttl_ms(queue.message_ttl)
    if queue.delivery_limit is not None:
        args["x-delivery-limit"] = queue.delivery_limit
    if queue.dead_letter_strategy is not None:
        args["x-dead-letter-strategy"] = queue.dead_letter_strategy
    if queue.replicas is not None:
        args["x-quorum-initial-group-size"] = queue.replicas
    if queue.consumer_timeout is not None:
        args["x-consumer-timeout"] = ttl_ms(queue.consumer_timeout)
    return args


def dead_letter_queue_arguments(queue: Queue) -> dict[str, ArgValue]:
    """The ``x-`` arguments of a work queue's dead-letter queue: its type and replicas."""
    args: dict[str, ArgValue] = {"x-queue-type": queue.type}
    if queue.replicas is not None:
        args["x-quorum-initial-group-size"] = queue.replicas
    return args


def _with_replicas(args: dict[str, ArgValue], replicas: int | None) -> dict[str, ArgValue]:
    if replicas is not None and args.get("x-queue-type") == "quorum":
        return {**args, "x-quorum-initial-group-size": replicas}
    return args


def _delay_level_arguments(
    layout: delays.DelayLayout, level: int, queue_type: str
) -> dict[str, ArgValue]:
    args: dict[str, ArgValue] = {
        "x-queue-type": queue_type,
        "x-message-ttl": delays.level_ttl_ms(level),
        "x-dead-letter-exchange": layout.level_exchange_after(level),
    }
    if queue_type == "quorum":
        # Without this a quorum queue dead-letters at most once: a node failure at the wrong
        # moment would drop a delayed job. At-least-once requires reject-publish overflow.
        args["x-dead-letter-strategy"] = "at-least-once"
        args["x-overflow"] = "reject-publish"
    return args


def _add_own(
    topology: Topology,
    delay_type: str,
    exchanges: list[ExchangeSpec],
    queues: list[QueueSpec],
    bindings: list[BindingSpec],
) -> None:
    """The cancellations stream (every topology), and the scheduler's queues (a topology with
    schedules; of ``delay_type``, like the levels: quorum for a cluster)."""
    own = OwnLayout(topology.namespace)
    exchanges.append(ExchangeSpec(name=own.cancel_exchange, type="fanout"))
    queues.append(QueueSpec(own.cancellations, True, cancellations_arguments(), "cancellations"))
    bindings.append(BindingSpec(own.cancel_exchange, own.cancellations, "queue", ""))
    if topology.history is not None:
        history = history_arguments(topology.history.max_age, topology.history.max_bytes)
        exchanges.append(ExchangeSpec(name=own.history_exchange, type="fanout"))
        queues.append(QueueSpec(own.history, True, history, "history"))
        bindings.append(BindingSpec(own.history_exchange, own.history, "queue", ""))
    for name, job_type in topology.job_types.items():
        if job_type.max_running is not None:
            permits = own.permits_queue(name, job_type.max_running)
            queues.append(QueueSpec(permits, True, permits_arguments(), "permits"))
    limited = {n: jt.burst for n, jt in topology.job_types.items() if jt.rate_limit is not None}
    if limited:
        exchanges.append(ExchangeSpec(name=own.tokens_exchange, type="direct"))
        election = leader_arguments("classic")
        queues.append(QueueSpec(own.refiller_queue, True, election, "tokens"))
        bindings.append(BindingSpec(own.tokens_exchange, own.refiller_queue, "queue", REFILLER_KEY))
    for name, burst in limited.items():
        bucket = own.tokens_queue(name)
        queues.append(QueueSpec(bucket, True, bucket_arguments(burst), "tokens"))
        bindings.append(BindingSpec(own.tokens_exchange, bucket, "queue", name))
    breakers = [name for name, jt in topology.job_types.items() if jt.breaker is not None]
    if breakers:
        exchanges.append(ExchangeSpec(name=own.breaker_exchange, type="direct"))
        events = own.breaker_events
        queues.append(QueueSpec(events, True, breaker_events_arguments(), "breaker"))
        bindings += [BindingSpec(own.breaker_exchange, events, "queue", n) for n in breakers]
    for name in breakers:
        queue = own.breaker_queue(name)
        queues.append(QueueSpec(queue, True, last_value_arguments("classic"), "breaker"))
        bindings.append(BindingSpec(own.breaker_exchange, queue, "queue", name))
    if not topology.schedules:
        return
    kind = delay_type
    replicas = topology.delays.replicas
    exchanges.append(ExchangeSpec(name=own.scheduler_exchange, type="direct"))
    leader = _with_replicas(leader_arguments(kind), replicas)
    queues.append(QueueSpec(own.leader_queue, True, leader, "scheduler"))
    bindings.append(BindingSpec(own.scheduler_exchange, own.leader_queue, "queue", TOKEN_KEY))
    for name in (own.state_queue, own.status_queue):
        last_value = _with_replicas(last_value_arguments(kind), replicas)
        queues.append(QueueSpec(name, True, last_value, "scheduler"))
        bindings.append(BindingSpec(own.scheduler_exchange, name, "queue", STATE_KEY))


def desired_entities(topology: Topology, *, cluster: bool = False) -> Entities:
    """Every exchange, queue and binding the topology needs, in declaration order; ``cluster``
    when the broker runs more than one node (``Delays.resolved_type``)."""
    layout = topology.delay_layout
    delay_type = topology.delays.resolved_type(cluster=cluster)
    dead_letter_exchange = topology.dead_letter_exchange
    exchanges = [
        ExchangeSpec(name=name, type=ex.type, durable=ex.durable)
        for name, ex in topology.exchanges.items()
    ]
    exchanges.append(ExchangeSpec(name=dead_letter_exchange, type="direct"))
    exchanges.append(ExchangeSpec(name=layout.due_exchange, type="topic"))
    exchanges += [
        ExchangeSpec(name=layout.level_name(level), type="topic") for level in range(delays.LEVELS)
    ]

    queues: list[QueueSpec] = []
    bindings: list[BindingSpec] = []
    for name, queue in topology.queues.items():
        arguments = work_queue_arguments(name, queue, dead_letter_exchange)
        queues.append(QueueSpec(name, queue.durable, arguments, role="work"))
        dlq = dead_letter_queue_name(name)
        queues.append(QueueSpec(dlq, True, dead_letter_queue_arguments(queue), role="dead-letter"))
        bindings.append(BindingSpec(dead_letter_exchange, dlq, "queue", dlq))
        bindings.append(
            BindingSpec(layout.due_exchange, name, "queue", delays.delivery_binding_key(name))
        )

    for level in range(delays.LEVELS):
        level_queue = layout.level_name(level)
        queues.append(
            QueueSpec(
                level_queue,
                True,
                _with_replicas(
                    _delay_level_arguments(layout, level, delay_type),
                    topology.delays.replicas,
                ),
                role="delay",
            )
        )
        bindings.append(
            BindingSpec(level_queue, level_queue, "queue", delays.wait_binding_key(level))
        )
        bindings.append(
            BindingSpec(
                level_queue,
                layout.level_exchange_after(level),
                "exchange",
                delays.skip_binding_key(level),
            )
        )

    _add_own(topology, delay_type, exchanges, queues, bindings)
    bindings += user_bindings(topology)
    return Entities(
        exchanges=exchanges, queues=queues, bindings=bindings, delay_levels=delays.LEVELS
    )
