"""Checks that relate one part of a topology to another, or to a broker version (pure).

Each check yields ``Problem``s with the key path they concern, so the loader can report every
problem at once as ``file:line:column: path: message``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field

from jobsys.duration import format_duration
from jobsys.topology import delays
from jobsys.topology.model import (
    DEAD_LETTER_SUFFIX,
    RESERVED_PREFIX,
    JobType,
    Topology,
)
from jobsys.topology.own import OwnLayout
from jobsys.topology.routing import route_job_type
from jobsys.topology.source import printable

Path = tuple[str | int, ...]
#: The broker's default consumer_timeout; a job's own deadline must end before it does, or the
#: broker closes the whole channel and requeues everything on it.
BROKER_CONSUMER_TIMEOUT_S = 30 * 60.0
MAX_ROUTING_KEY_BYTES = 255
_DOTTED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
#: Declared names a "not declared" message lists before it says "and N more".
_NAMES_SHOWN = 10


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a topology, at ``path`` (keys and list indexes from the root)."""

    path: Path
    message: str


@dataclass(frozen=True)
class Malformed:
    """Names the file declares whose entries are malformed (and so are not in the
    ``Topology``): a reference to another name can then be told what the file really has."""

    exchanges: Collection[str] = field(default=())
    queues: Collection[str] = field(default=())
    job_types: Collection[str] = field(default=())


def check_topology(topology: Topology, malformed: Malformed | None = None) -> list[Problem]:
    """Every cross-reference problem of ``topology``; empty when it is consistent.
    ``malformed`` names entries of the file left out of ``topology`` for their shape."""
    known = malformed or Malformed()
    return [
        *_check_names(topology),
        *_check_queues(topology),
        *_check_delays(topology),
        *_check_bindings(topology, known),
        *_check_job_types(topology, known),
        *_check_schedules(topology, known),
        *_check_history(topology, known),
        *_check_pools(topology, known),
    ]


def check_broker_support(topology: Topology, version: tuple[int, ...]) -> list[Problem]:
    """Problems with arguments that broker ``version`` does not support."""
    problems = []
    shown = ".".join(str(part) for part in version)
    for name, queue in topology.queues.items():
        if queue.consumer_timeout is not None and version < (3, 12):
            problems.append(
                Problem(
                    ("queues", name, "consumer_timeout"),
                    f"RabbitMQ {shown} ignores a queue's consumer timeout (x-consumer-timeout "
                    "needs 3.12 or later); drop consumer_timeout, or raise the server's "
                    "consumer_timeout setting",
                )
            )
        if queue.type == "quorum" and queue.max_priority is not None and version < (4, 0):
            problems.append(
                Problem(
                    ("queues", name, "max_priority"),
                    f"RabbitMQ {shown} does not support priorities on quorum queues "
                    "(needs 4.0 or later); use a classic queue or drop max_priority",
                )
            )
    return problems


def _check_names(topology: Topology) -> Iterator[Problem]:
    layout = topology.delay_layout
    derived = {
        layout.due_exchange,
        topology.dead_letter_exchange,
        *OwnLayout(topology.namespace).derived_names(),
    }
    waits = f"{topology.namespace}.wait."
    for section in ("exchanges", "queues"):
        for name in getattr(topology, section):
            if name.startswith((RESERVED_PREFIX, "amq.")):
                yield Problem(
                    (section, name),
                    f"name {name!r} is reserved (names starting with {RESERVED_PREFIX!r} or "
                    "'amq.' belong to jobsys and RabbitMQ)",
                )
            elif name in derived or name.startswith(waits):
                yield Problem(
                    (section, name),
                    f"name {name!r} is one jobsys derives for namespace "
                    f"{topology.namespace!r} ({waits}*, {layout.due_exchange}, "
                    f"{topology.dead_letter_exchange}, {topology.namespace}.scheduler*, "
                    f"{topology.namespace}.cancel*, {topology.namespace}.history*)",
                )
    for name in topology.queues:
        if (
            name.endswith(DEAD_LETTER_SUFFIX)
            and name[: -len(DEAD_LETTER_SUFFIX)] in topology.queues
        ):
            yield Problem(
                ("queues", name),
                f"queue {name!r} clashes with the dead-letter queue of queue "
                f"{name[: -len(DEAD_LETTER_SUFFIX)]!r}",
            )
    for name in topology.queues:
        # A delayed job's routing key is one word per delay bit, then the queue's name; the
        # broker refuses routing keys over 255 bytes.
        key_bytes = len(delays.delivery_binding_key(name).encode("utf-8"))
        if key_bytes > MAX_ROUTING_KEY_BYTES:
            yield Problem(
                ("queues", name),
                f"queue name is too long for delayed jobs: their routing key would be "
                f"{key_bytes} bytes, {delays.LEVELS * 2} of them the delay (RabbitMQ allows "
                f"{MAX_ROUTING_KEY_BYTES}); shorten the name",
            )


def _check_queues(topology: Topology) -> Iterator[Problem]:
    for name, queue in topology.queues.items():
        path: Path = ("queues", name)
        if queue.type == "quorum" and not queue.durable:
            yield Problem((*path, "durable"), "quorum queues are always durable")
        if queue.type == "classic" and queue.delivery_limit is not None:
            yield Problem((*path, "delivery_limit"), "delivery_limit needs a quorum queue")
        if queue.type == "classic" and queue.replicas is not None:
            yield Problem(
                (*path, "replicas"), "replicas needs a quorum queue (classic queues have one)"
            )
        if queue.type == "classic" and queue.overflow == "reject-publish":
            # Delayed jobs and retries reach a queue by the broker's own dead-lettering, and a
            # full classic queue under reject-publish drops those without a trace (checked on
            # RabbitMQ 3.10, from classic and quorum at-least-once delay levels alike).
            yield Problem(
                (*path, "overflow"),
                "a full classic queue under reject-publish silently drops the delayed jobs and "
                "retries that reach it; use reject-publish-dlx (refused publishes still fail "
                "with QueueFullError, and the broker keeps a copy in the dead-letter queue), "
                "drop-head, or a quorum queue",
            )
        if queue.type == "quorum" and queue.overflow == "reject-publish-dlx":
            yield Problem(
                (*path, "overflow"),
                "quorum queues do not support reject-publish-dlx; use reject-publish",
            )
        if queue.dead_letter_strategy == "at-least-once":
            if queue.type != "quorum":
                yield Problem(
                    (*path, "dead_letter_strategy"),
                    "at-least-once dead-lettering needs a quorum queue",
                )
            elif queue.overflow != "reject-publish":
                yield Problem(
                    (*path, "dead_letter_strategy"),
                    "at-least-once dead-lettering needs overflow: reject-publish",
                )
        if (
            queue.overflow is not None
            and queue.max_length is None
            and queue.max_length_bytes is None
        ):
            yield Problem(
                (*path, "overflow"), "overflow has no effect without max_length or max_length_bytes"
            )


def _check_delays(topology: Topology) -> Iterator[Problem]:
    if topology.delays.queue_type == "classic" and topology.delays.replicas is not None:
        yield Problem(
            ("delays", "replicas"),
            "replicas needs quorum delay levels (delays: {queue_type: quorum}, or leave "
            "queue_type out: replicas then make them quorum)",
        )


def _check_bindings(topology: Topology, malformed: Malformed) -> Iterator[Problem]:
    for index, binding in enumerate(topology.bindings):
        path: Path = ("bindings", index)
        exchange = topology.exchanges.get(binding.exchange)
        if exchange is None:
            yield Problem(
                (*path, "exchange"),
                _not_declared(
                    "exchange", binding.exchange, topology.exchanges, malformed.exchanges
                ),
            )
        if binding.queue not in topology.queues:
            yield Problem(
                (*path, "queue"),
                _not_declared("queue", binding.queue, topology.queues, malformed.queues),
            )
        if exchange is None:
            continue
        if exchange.type == "headers" and not binding.headers:
            yield Problem(path, f"binding on headers exchange {binding.exchange!r} needs headers")
        if exchange.type != "headers" and (binding.headers or binding.match):
            yield Problem(
                (*path, "headers" if binding.headers else "match"),
                f"headers and match only apply to headers exchanges; {binding.exchange!r} is "
                f"{exchange.type}",
            )


def _check_job_types(topology: Topology, malformed: Malformed) -> Iterator[Problem]:
    for name, job_type in topology.job_types.items():
        path: Path = ("job_types", name)
        exchange = topology.exchanges.get(job_type.exchange)
        if exchange is None:
            yield Problem(
                (*path, "exchange"),
                _not_declared(
                    "exchange", job_type.exchange, topology.exchanges, malformed.exchanges
                ),
            )
            continue
        for i, dotted in enumerate(job_type.retry.dont_retry):
            if not _DOTTED_NAME.match(dotted):
                yield Problem(
                    (*path, "retry", "dont_retry", i),
                    f"{dotted!r} is not an exception name (e.g. myapp.errors.Permanent)",
                )
        yield from _check_retry_delays(topology, name, job_type)
        queues = route_job_type(topology, job_type)
        yield from _check_timeout(topology, path, job_type, queues)
        if not queues:
            yield Problem(path, _unroutable_message(topology, name, job_type))
            continue
        yield from _check_priority(topology, path, job_type, queues)


def _check_timeout(
    topology: Topology, path: Path, job_type: JobType, queues: Collection[str]
) -> Iterator[Problem]:
    """A job's deadline must end before the broker's consumer timeout of every queue it
    reaches (the queue's ``consumer_timeout``, else the server's default 30m)."""
    limits = [
        (topology.queues[q].consumer_timeout or BROKER_CONSUMER_TIMEOUT_S, q)
        for q in queues
        if q in topology.queues
    ]
    limit, queue = min(limits, default=(BROKER_CONSUMER_TIMEOUT_S, ""))
    if 0 < job_type.timeout < limit:
        return
    if limit == BROKER_CONSUMER_TIMEOUT_S:
        message = "timeout must be above 0 and below 30m, the broker's default consumer_timeout"
    else:
        message = (
            f"timeout must be above 0 and below {format_duration(limit)}, the "
            f"consumer_timeout of queue {queue!r}"
        )
    yield Problem((*path, "timeout"), message)


def _check_schedules(topology: Topology, malformed: Malformed) -> Iterator[Problem]:
    for name, schedule in topology.schedules.items():
        if schedule.job_type not in topology.job_types:
            yield Problem(
                ("schedules", name, "job_type"),
                _not_declared(
                    "job type", schedule.job_type, topology.job_types, malformed.job_types
                ),
            )


def _check_history(topology: Topology, malformed: Malformed) -> Iterator[Problem]:
    if topology.history is None or topology.history.queues is None:
        return
    for index, queue in enumerate(topology.history.queues):
        if queue not in topology.queues:
            yield Problem(
                ("history", "queues", index),
                _not_declared("queue", queue, topology.queues, malformed.queues),
            )


def _check_pools(topology: Topology, malformed: Malformed) -> Iterator[Problem]:
    for name, pool in topology.pools.items():
        for queue in pool.queues:
            if queue not in topology.queues:
                yield Problem(
                    ("pools", name, "queues", queue),
                    _not_declared("queue", queue, topology.queues, malformed.queues),
                )


def _check_retry_delays(topology: Topology, name: str, job_type: JobType) -> Iterator[Problem]:
    retry = job_type.retry
    longest = max(retry.delays) if retry.delays else (retry.backoff.max if retry.backoff else 0.0)
    if longest > topology.delays.max_delay:
        yield Problem(
            ("job_types", name, "retry"),
            f"a retry delay of {format_duration(longest)} is longer than delays.max_delay "
            f"({format_duration(topology.delays.max_delay)})",
        )


def _check_priority(
    topology: Topology, path: Path, job_type: JobType, queues: list[str]
) -> Iterator[Problem]:
    if not job_type.priority:
        return
    for queue_name in queues:
        queue = topology.queues.get(queue_name)
        if queue is None:
            continue  # a binding names a queue the file lacks; that binding is reported
        limit = queue.max_priority
        if limit is None:
            yield Problem(
                (*path, "priority"),
                f"priority {job_type.priority} has no effect: queue {queue_name!r} has no "
                "max_priority",
            )
        elif job_type.priority > limit:
            yield Problem(
                (*path, "priority"),
                f"priority {job_type.priority} is above max_priority {limit} of queue "
                f"{queue_name!r}",
            )


def _unroutable_message(topology: Topology, name: str, job_type: JobType) -> str:
    on_exchange = [b for b in topology.bindings if b.exchange == job_type.exchange]
    if on_exchange:
        shown = ", ".join(
            f"{b.headers!r} -> {b.queue}" if b.headers else f"{b.routing_key!r} -> {b.queue}"
            for b in on_exchange
        )
        bound = f"; bindings on {job_type.exchange!r}: {shown}"
    else:
        bound = f"; exchange {job_type.exchange!r} has no bindings"
    what = (
        f"headers {job_type.headers!r}"
        if topology.exchanges[job_type.exchange].type == "headers"
        else f"routing key {job_type.routing_key!r}"
    )
    return f"job type {name!r} reaches no queue (exchange {job_type.exchange!r}, {what}){bound}"


def _not_declared(
    kind: str, name: str, declared: Mapping[str, object], malformed: Collection[str]
) -> str:
    """``exchange 'job' is not declared; did you mean 'jobs'? (declared: jobs, ...)``: what the
    file does declare, well formed and malformed apart, and the near name when one is close."""
    message = f"{kind} {name!r} is not declared"
    close = difflib.get_close_matches(name, [*declared, *malformed], n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    parts = []
    if declared:
        parts.append(f"declared: {_some(declared)}")
    if malformed:
        parts.append(f"declared but malformed: {_some(malformed)}")
    return f"{message} ({'; '.join(parts) or 'none are declared'})"


def _some(names: Collection[str]) -> str:
    shown = sorted(names)
    listed = ", ".join(printable(n) for n in shown[:_NAMES_SHOWN])
    more = len(shown) - _NAMES_SHOWN
    return f"{listed} and {more} more" if more > 0 else listed
