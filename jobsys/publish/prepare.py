"""Preparing a job for publishing, without any I/O (pure): the job type's route from the
topology, the payload validated and encoded, the priority and delay checked, the delay levels
worked out for a delayed job. Whatever can be refused is refused here, before a connection is
even needed; ``Producer.publish`` then only sends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from jobsys.duration import format_duration
from jobsys.errors import ConfigError, PayloadValidationError, UnknownJobTypeError
from jobsys.settings import DEFAULT_MAX_HEADER_BYTES
from jobsys.topology import delays
from jobsys.topology.check import MAX_ROUTING_KEY_BYTES
from jobsys.topology.model import Topology
from jobsys.topology.routing import route_job_type
from jobsys.wire.chain import then_job_type
from jobsys.wire.envelope import check_job_id, check_user_headers, encode_payload, new_job_id
from jobsys.wire.headers import (
    HEADER_DUE_AT_MS,
    HEADER_THEN,
    Origin,
    due_at_ms,
    identity_headers,
    now_ms,
    origin_headers,
)
from jobsys.wire.table import shown

__all__ = ["JobRequest", "JobRoute", "PreparedJob", "build_routes", "prepare_job"]


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One job for ``publish_many``: the arguments of ``publish``."""

    job_type: str
    payload: Any
    priority: int | None = None
    delay_s: float | None = None
    job_id: str | None = None
    headers: Mapping[str, Any] | None = None
    #: When the job is due: a timezone-aware datetime (instead of ``delay_s``).
    run_at: datetime | None = None
    #: The job type that receives the handler's return value as its payload once this job
    #: succeeded (a chain; ``jobsys.wire.chain``).
    then: str | None = None


@dataclass(frozen=True, slots=True)
class JobRoute:
    """Where a job type goes, worked out once per producer from the topology."""

    exchange: str
    routing_key: str
    priority: int | None
    static_headers: Mapping[str, Any]  # a headers exchange's match headers
    queues: tuple[str, ...]  # the work queues it reaches, as the broker would route it
    max_delay_s: float = 30 * 86400.0  # the longest delay the topology allows (delays.max_delay)
    #: Header names a binding on the job type's headers exchange matches on: a caller's header
    #: of that name could send the job to other queues.
    routed_on: frozenset[str] = frozenset()
    #: A queue it reaches that has no max_priority (a priority there would have no effect).
    unprioritised: str | None = None
    #: The lowest max_priority among the queues it reaches, and that queue.
    priority_limit: tuple[int, str] | None = None
    #: Why no job of this type can be sent as the topology describes it, if so.
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class PreparedJob:
    """A job ready to send: validated, encoded, with its targets."""

    job_id: str
    job_type: str
    body: bytes
    priority: int | None
    headers: dict[str, Any]
    #: (exchange, routing key, queues) per message; several only for a delayed fan-out.
    targets: tuple[tuple[str, str, tuple[str, ...]], ...]
    delay_s: float | None


def build_routes(topology: Topology) -> dict[str, JobRoute]:
    """Each job type's route, from the topology (pure)."""
    routes = {}
    for name, spec_ in topology.job_types.items():
        queues = tuple(route_job_type(topology, spec_))
        limits = [(topology.queues[q].max_priority, q) for q in queues if q in topology.queues]
        routes[name] = JobRoute(
            exchange=spec_.exchange,
            routing_key=spec_.routing_key,
            priority=spec_.priority,
            static_headers=dict(spec_.headers or {}),
            queues=queues,
            max_delay_s=topology.delays.max_delay,
            routed_on=frozenset(
                header
                for binding in topology.bindings
                if binding.exchange == spec_.exchange
                for header in binding.headers or {}
            ),
            unprioritised=next((q for limit, q in limits if limit is None), None),
            priority_limit=min(
                ((limit, q) for limit, q in limits if limit is not None), default=None
            ),
            problem=_routing_key_problem(name, spec_.routing_key),
        )
    return routes


def _routing_key_problem(job_type: str, routing_key: str) -> str | None:
    # The topology model bounds routing keys in characters; AMQP bounds them in bytes.
    size = len(routing_key.encode("utf-8"))
    if size <= MAX_ROUTING_KEY_BYTES:
        return None
    return (
        f"the routing key of job type {job_type!r} is {size} bytes; AMQP allows at most "
        f"{MAX_ROUTING_KEY_BYTES}: shorten it in the topology"
    )


def prepare_job(
    request: JobRequest,
    routes: Mapping[str, JobRoute],
    models: Mapping[str, type[BaseModel]],
    max_bytes: int,
    layout: delays.DelayLayout,
    *,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> PreparedJob:
    """Validate and encode ``request`` (pure); raises ``UnknownJobTypeError``,
    ``PayloadValidationError``, ``PayloadTooLargeError`` or ``ConfigError``. ``max_bytes``
    bounds the encoded payload, ``max_header_bytes`` the caller's encoded headers."""
    if not isinstance(request, JobRequest):
        raise PayloadValidationError(
            f"a job to publish must be a JobRequest, got {type(request).__name__}"
        )
    route = routes.get(request.job_type) if isinstance(request.job_type, str) else None
    if route is None:
        known = ", ".join(sorted(routes)) or "none"
        raise UnknownJobTypeError(
            f"unknown job type {shown(request.job_type, 80)}; the topology knows: {known}"
        )
    if route.problem is not None:
        raise ConfigError(route.problem)
    payload = request.payload
    model = models.get(request.job_type)
    if model is not None:
        payload = _validated(model, request.job_type, payload)
    body = encode_payload(payload, max_bytes)
    priority = route.priority if request.priority is None else request.priority
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255
    ):
        raise ConfigError(f"priority must be an integer from 0 to 255, got {shown(priority, 40)}")
    if request.priority:
        # The topology's own priority was checked when it was loaded; the caller's is here.
        _check_priority(request.job_type, route, request.priority)
    job_id = new_job_id() if request.job_id is None else check_job_id(request.job_id)
    headers = check_user_headers(
        request.headers, max_bytes=max_header_bytes, routed_on=route.routed_on
    )
    if route.static_headers:
        # A headers exchange routes on these, so they win over the caller's.
        headers.update(route.static_headers)
    if request.then is not None:
        headers[HEADER_THEN] = then_job_type(request.then, routes)
    now = now_ms()
    run_at_ms = None if request.run_at is None else _run_at_ms(request, route)
    wanted_s = request.delay_s if run_at_ms is None else max(0, run_at_ms - now) / 1000
    targets, delay_s = _targets(route, wanted_s, layout)
    if delay_s is not None:
        # A delayed job arrives through the delivery exchange; its dead-letter record must
        # still name the exchange and routing key it was published for.
        headers.update(origin_headers(Origin(route.exchange, route.routing_key)))
        headers[HEADER_DUE_AT_MS] = due_at_ms(delay_s, now)
    if run_at_ms is not None:
        # The moment asked for, exactly: the levels round the wait up to whole seconds, and a
        # worker never starts the job before this (a moment already past runs at once).
        headers[HEADER_DUE_AT_MS] = run_at_ms
    return PreparedJob(
        job_id=job_id,
        job_type=request.job_type,
        body=body,
        priority=priority,
        headers=identity_headers(headers, job_id=job_id),
        targets=targets,
        delay_s=delay_s,
    )


def _run_at_ms(request: JobRequest, route: JobRoute) -> int:
    """``request.run_at`` in whole ms since the epoch, rounded up (never early); refuses a naive
    or non-datetime value, one given with ``delay_s``, and one further off than the topology's
    ``delays.max_delay`` allows."""
    run_at = request.run_at
    if request.delay_s is not None:
        raise ConfigError("give either delay_s or run_at, not both")
    if not isinstance(run_at, datetime):
        raise ConfigError(
            f"run_at must be a datetime with a timezone, got {type(run_at).__name__} "
            f"{shown(run_at, 60)}"
        )
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        raise ConfigError(
            f"run_at {run_at.isoformat()} has no timezone, so the moment it names is unknown: "
            "pass an aware datetime, e.g. datetime(..., tzinfo=ZoneInfo('Europe/Berlin')) or "
            "datetime.now(UTC) + timedelta(...)"
        )
    try:
        ms = math.ceil(run_at.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        ms = None
    if ms is None or (ms - now_ms()) / 1000 > route.max_delay_s:
        raise ConfigError(
            f"run_at {run_at.isoformat()} is further off than delays.max_delay "
            f"({format_duration(route.max_delay_s)}) in the topology allows; publish it later, "
            "or raise delays.max_delay (at most about 17 years)"
        )
    return ms if ms > 0 else 1


def _check_priority(job_type: str, route: JobRoute, priority: int) -> None:
    """Refuse a priority that the queues of ``route`` would ignore or cap, as the topology
    check refuses a job type's own (``jobsys.topology.check``)."""
    if route.unprioritised is not None:
        raise ConfigError(
            f"priority {priority} has no effect: queue {route.unprioritised!r} has no "
            f"max_priority (job type {job_type!r})"
        )
    if route.priority_limit is not None and priority > route.priority_limit[0]:
        limit, queue = route.priority_limit
        raise ConfigError(
            f"priority {priority} is above max_priority {limit} of queue {queue!r} "
            f"(job type {job_type!r})"
        )


def _validated(model: type[BaseModel], job_type: str, payload: Any) -> Any:
    try:
        instance = payload if isinstance(payload, model) else model.model_validate(payload)
        return instance.model_dump(mode="json")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(step) for step in error['loc']) or '(payload)'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise PayloadValidationError(
            f"payload for job type {job_type!r} is invalid: {problems}"
        ) from None
    except Exception as exc:
        # The model's own code failed (a validator or serializer raising what pydantic does
        # not wrap): the payload cannot be validated, so the job is not sent. The cause stays
        # chained for the traceback.
        raise PayloadValidationError(
            f"payload for job type {job_type!r} could not be validated by "
            f"{model.__name__}: {type(exc).__name__}: {exc}; it was not published"
        ) from exc


def _targets(
    route: JobRoute, delay_s: float | None, layout: delays.DelayLayout
) -> tuple[tuple[tuple[str, str, tuple[str, ...]], ...], float | None]:
    if delay_s is None:
        return ((route.exchange, route.routing_key, route.queues),), None
    if isinstance(delay_s, bool) or not isinstance(delay_s, int | float):
        raise ConfigError(f"a delay must be a number of seconds, got {shown(delay_s)}")
    if delay_s == 0:
        return ((route.exchange, route.routing_key, route.queues),), None
    if isinstance(delay_s, int) and not -(2**53) <= delay_s <= 2**53:
        # Beyond a float's exact range; math on it could overflow, and no topology holds it.
        raise ConfigError(
            "a delay must be zero or more seconds"
            if delay_s < 0
            else f"a delay of more than 2**53 seconds is longer than delays.max_delay "
            f"({format_duration(route.max_delay_s)}) in the topology"
        )
    if math.isfinite(delay_s) and delay_s > route.max_delay_s:
        raise ConfigError(
            f"a delay of {format_duration(delay_s)} is longer than delays.max_delay "
            f"({format_duration(route.max_delay_s)}) in the topology"
        )
    # Through the delay levels a job reaches its queues by name, so one message per queue.
    plans = [(queue, layout.route(queue, delay_s)) for queue in route.queues]
    if not plans:
        raise ConfigError("this job type reaches no queue, so it cannot be delayed")
    targets = tuple((plan.exchange, plan.routing_key, (queue,)) for queue, plan in plans)
    return targets, plans[0][1].delay_s
