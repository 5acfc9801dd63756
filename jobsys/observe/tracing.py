"""One OpenTelemetry trace per job: PRODUCER spans for publishes, CONSUMER spans for attempts.

The W3C ``traceparent``/``tracestate`` of the publishing span travel in the AMQP headers, so
every attempt, retry publish and dead-letter publish of a job share the trace id of its first
publish (which joins the caller's current trace). The chain of one job that fails twice::

    publish (PRODUCER) -> attempt 1 (CONSUMER) -> retry publish (PRODUCER)
        -> attempt 2 (CONSUMER, linked to attempt 1) -> retry publish -> attempt 3 (linked to 2)

A retry or dead-letter publish also writes ``jobsys-previous-attempt`` (the attempt's span
context, traceparent-style) so the next attempt, or a replay from the dead-letter queue, links
to the attempt before it.

Only the OpenTelemetry *API* is imported: with no SDK configured every span is a non-recording
one and attributes are never built. Instrumentation must never fail a job, so an exception
raised by the tracing machinery is logged once and tracing then turns itself off (an observer
that fails removes itself, as Trio's instruments do); the job goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, MutableMapping
from types import TracebackType
from typing import Any, Literal, Protocol

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from jobsys.observe import metrics
from jobsys.wire.envelope import HEADER_ATTEMPT, HEADER_JOB_ID, HEADER_PUBLISHED_AT_MS

log = logging.getLogger(__name__)

HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"
#: The span context of the attempt before this one, so attempts link up across retries.
HEADER_PREVIOUS_ATTEMPT = "jobsys-previous-attempt"

PublishKind = Literal["publish", "retry", "dead_letter", "replay"]
Outcome = Literal["ok", "retry", "dead_lettered", "requeued", "error"]

_INSTRUMENTATION_NAME = "jobsys"
#: How a span *name* shows the default exchange; its ``messaging.destination.name`` is "", as
#: RabbitMQ's semantic conventions ask.
_DEFAULT_EXCHANGE = "amq.default"


class _State:
    """The tracer in use and whether tracing switched itself off after a failure."""

    def __init__(self) -> None:
        self.tracer: trace.Tracer | None = None
        self.disabled = False


_state = _State()


def use_tracer_provider(provider: trace.TracerProvider | None) -> None:
    """Trace through ``provider`` instead of the global one (None: back to the global one).

    Also re-enables tracing after it switched itself off. Meant for tests and for programs
    that keep their own provider rather than setting the global one.
    """
    _state.tracer = provider.get_tracer(_INSTRUMENTATION_NAME) if provider is not None else None
    _state.disabled = False


def _tracer() -> trace.Tracer:
    tracer = _state.tracer
    if tracer is None:
        # A proxy when no SDK is set yet: it starts recording once a provider is installed.
        tracer = _state.tracer = trace.get_tracer(_INSTRUMENTATION_NAME)
    return tracer


def _recording(tracer: trace.Tracer) -> bool:
    """False for the API's no-op tracers, whose spans would drop every attribute anyway."""
    if isinstance(tracer, trace.NoOpTracer):
        return False
    if isinstance(tracer, trace.ProxyTracer):
        # Delegates to a no-op tracer until an SDK provider is installed.
        return not isinstance(getattr(tracer, "_tracer", None), trace.NoOpTracer)
    return True


def _instrumentation_failed(exc: BaseException) -> None:
    if not _state.disabled:
        _state.disabled = True
        log.warning(
            "tracing failed and is now off for this process; jobs are not affected",
            exc_info=exc,
        )


# -- propagation -------------------------------------------------------------------------------


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads AMQP headers, whose string values may arrive as bytes."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier.keys())


_GETTER = _HeaderGetter()


class _Propagation:
    """Whether the global propagator is the default W3C one, which jobsys then runs itself.

    The API's propagators go through generic getters and setters, a composite and a regular
    expression per message; reading and writing ``traceparent``/``tracestate`` directly does
    the same work in a fraction of the time. Any other propagator (B3, Jaeger, a custom one)
    is used as configured. Re-checked whenever the global propagator object changes.
    """

    def __init__(self) -> None:
        self.checked: TextMapPropagator | None = None
        self.fast = False
        self.baggage = False

    def fast_path(self) -> bool:
        textmap = propagate.get_global_textmap()
        if textmap is not self.checked:
            self.checked = textmap
            self.fast, self.baggage = _is_w3c(textmap)
        return self.fast


def _is_w3c(textmap: TextMapPropagator) -> tuple[bool, bool]:
    """(is it W3C trace context, possibly with W3C baggage; is baggage among them)."""
    parts: list[TextMapPropagator] = [textmap]
    if isinstance(textmap, CompositePropagator):
        parts = list(getattr(textmap, "_propagators", None) or ())
    kinds = [type(part) for part in parts]
    has_baggage = W3CBaggagePropagator in kinds
    others = [k for k in kinds if k not in (TraceContextTextMapPropagator, W3CBaggagePropagator)]
    return kinds.count(TraceContextTextMapPropagator) == 1 and not others, has_baggage


_propagation = _Propagation()
_MAX_TRACEPARENT = 512  # as the API's propagator
_MAX_TRACESTATE = 8192  # as the API's propagator
_HEX = frozenset("0123456789abcdef")


def inject(headers: MutableMapping[str, Any], context: Context | None = None) -> None:
    """Write ``traceparent``/``tracestate`` of ``context`` (default: the current one) into
    ``headers``, replacing any carried over from an earlier publish."""
    headers.pop(HEADER_TRACEPARENT, None)
    headers.pop(HEADER_TRACESTATE, None)
    if not _propagation.fast_path() or (_propagation.baggage and baggage.get_all(context)):
        propagate.inject(headers, context=context)
        return
    span_context = trace.get_current_span(context).get_span_context()
    if not span_context.is_valid:
        return
    headers[HEADER_TRACEPARENT] = format_span_context(span_context)
    if span_context.trace_state:
        headers[HEADER_TRACESTATE] = span_context.trace_state.to_header()


def extract(headers: Mapping[str, Any] | None) -> Context:
    """The trace context carried by a message's ``headers`` (empty when there is none)."""
    if not headers:
        return Context()
    if not _propagation.fast_path() or (_propagation.baggage and "baggage" in headers):
        return propagate.extract(headers, context=Context(), getter=_GETTER)
    span_context = _parse_traceparent(headers.get(HEADER_TRACEPARENT))
    if span_context is None:
        return Context()
    state = headers.get(HEADER_TRACESTATE)
    if isinstance(state, bytes):
        state = state.decode("utf-8", "replace")
    if isinstance(state, str) and len(state) <= _MAX_TRACESTATE:
        span_context = SpanContext(
            span_context.trace_id,
            span_context.span_id,
            is_remote=True,
            trace_flags=span_context.trace_flags,
            trace_state=TraceState.from_header([state]),
        )
    return trace.set_span_in_context(NonRecordingSpan(span_context), Context())


def _parse_traceparent(value: object) -> SpanContext | None:
    """A W3C ``traceparent`` as the API's propagator reads it; None when absent or invalid."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str) or len(value) > _MAX_TRACEPARENT:
        return None
    value = value.strip(" \t")
    version, trace_id, span_id, flags = value[:2], value[3:35], value[36:52], value[53:55]
    rest = value[55:]
    if (
        len(value) < 55
        or value[2] != "-"
        or value[35] != "-"
        or value[52] != "-"
        or version == "ff"
        or (rest and (version == "00" or rest[0] != "-"))
        or not _HEX.issuperset(value[:2] + trace_id + span_id + flags)
    ):
        return None
    span_context = SpanContext(
        int(trace_id, 16),
        int(span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(flags, 16)),
    )
    return span_context if span_context.is_valid else None


def format_span_context(span_context: SpanContext) -> str:
    """``span_context`` in traceparent form: ``00-<trace id>-<span id>-<flags>``."""
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}"
    )


def parse_span_context(value: object) -> SpanContext | None:
    """The span context written by ``format_span_context``; None when absent or malformed."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    parts = value.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    span_context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return span_context if span_context.is_valid else None


# -- attributes that are the same for every job of a type on one route --------------------------

#: Attribute dicts keyed by what they depend on, built once and copied per span. A worker sees a
#: handful of keys; the bound only guards against a producer inventing job types without end.
_BASE_LIMIT = 1024
_publish_bases: dict[tuple[str, str, str, str], dict[str, Any]] = {}
_process_bases: dict[tuple[str, str, str, str], dict[str, Any]] = {}
_span_names: dict[tuple[str, str], str] = {}


def _publish_base(job_type: str, exchange: str, routing_key: str, kind: str) -> dict[str, Any]:
    key = (job_type, exchange, routing_key, kind)
    base = _publish_bases.get(key)
    if base is None:
        if len(_publish_bases) >= _BASE_LIMIT:
            _publish_bases.clear()
        base = _publish_bases[key] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": exchange,
            "jobsys.job.type": job_type,
            "jobsys.publish.kind": kind,
        }
        if routing_key:
            base["messaging.rabbitmq.destination.routing_key"] = routing_key
    return base


def _process_base(job_type: str, queue: str, exchange: str, routing_key: str) -> dict[str, Any]:
    key = (job_type, queue, exchange, routing_key)
    base = _process_bases.get(key)
    if base is None:
        if len(_process_bases) >= _BASE_LIMIT:
            _process_bases.clear()
        base = _process_bases[key] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": exchange,
            "messaging.destination.subscription.name": queue,
            "jobsys.job.type": job_type,
        }
        if routing_key:
            base["messaging.rabbitmq.destination.routing_key"] = routing_key
    return base


def _span_name(operation: str, destination: str) -> str:
    key = (operation, destination)
    name = _span_names.get(key)
    if name is None:
        if len(_span_names) >= _BASE_LIMIT:
            _span_names.clear()
        name = _span_names[key] = f"{operation} {destination}"
    return name


# -- PRODUCER spans ----------------------------------------------------------------------------


class PublishSpan:
    """Context manager around one publish; use it through ``publish_span``."""

    __slots__ = (
        "_attrs",
        "_headers",
        "_job_type",
        "_kind",
        "_name_exchange",
        "_parent",
        "_span",
    )

    def __init__(
        self,
        headers: MutableMapping[str, Any],
        kind: PublishKind,
        parent: Context | None,
        job_type: str,
        attrs: tuple[str, str, str, str, int, float | None],
    ) -> None:
        self._headers = headers
        self._kind = kind
        self._parent = parent
        self._job_type = job_type
        self._attrs = attrs
        self._name_exchange = attrs[1] or _DEFAULT_EXCHANGE
        self._span: Span = trace.INVALID_SPAN

    def __enter__(self) -> Span:
        if _state.disabled:
            return self._span
        try:
            parent = self._parent if self._parent is not None else otel_context.get_current()
            tracer = _tracer()
            span = tracer.start_span(
                _span_name("publish", self._name_exchange),
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes=self._attributes() if _recording(tracer) else None,
            )
            self._span = span
            previous = trace.get_current_span(parent).get_span_context()
            if self._kind in ("retry", "dead_letter") and previous.is_valid:
                # The parent of a retry or dead-letter publish is the attempt that failed.
                self._headers[HEADER_PREVIOUS_ATTEMPT] = format_span_context(previous)
            inject(self._headers, trace.set_span_in_context(span, parent))
        except Exception as exc:
            _instrumentation_failed(exc)
        return self._span

    def _attributes(self) -> dict[str, Any]:
        job_id, exchange, routing_key, message_id, attempt, delay_s = self._attrs
        attributes = dict(_publish_base(self._job_type, exchange, routing_key, self._kind))
        attributes["messaging.message.id"] = message_id
        attributes["jobsys.job.id"] = job_id
        attributes["jobsys.job.attempt"] = attempt
        if delay_s is not None:
            attributes["jobsys.delay_s"] = float(delay_s)
        return attributes

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            metrics.record_published(self._job_type, self._name_exchange, self._kind)
        span = self._span
        if span is trace.INVALID_SPAN:
            return
        try:
            if exc is not None and span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.set_attribute("error.type", type(exc).__qualname__)
            span.end()
        except Exception as failure:
            _instrumentation_failed(failure)


def publish_span(
    headers: MutableMapping[str, Any],
    *,
    job_type: str,
    job_id: str,
    exchange: str,
    routing_key: str,
    message_id: str,
    attempt: int,
    delay_s: float | None = None,
    kind: PublishKind = "publish",
    parent: Context | None = None,
) -> PublishSpan:
    """A PRODUCER span around one publish; writes the trace context into ``headers``.

    Enter it *before* the message is built from ``headers``. ``parent`` defaults to the
    current context: the caller's trace for a first publish, the running attempt for a retry
    or dead-letter publish. For a replay pass ``extract(dead_lettered_headers)`` so the replay
    continues the job's trace. A failed publish (an exception leaving the block) marks the span
    as an error; a successful one counts in ``jobsys.jobs.published``.
    """
    return PublishSpan(
        headers,
        kind,
        parent,
        job_type,
        (job_id, exchange, routing_key, message_id, attempt, delay_s),
    )


# -- CONSUMER spans ----------------------------------------------------------------------------


class Attempt:
    """One run of a job's handler: its CONSUMER span, and the outcome the worker settles on.

    Use it through ``consume_span``; call ``set_outcome`` once the worker has decided.
    """

    __slots__ = ("_headers", "_info", "_outcome", "_started", "_token", "error", "span")

    def __init__(self, headers: Mapping[str, Any] | None, info: tuple[Any, ...]) -> None:
        self._headers = headers
        self._info = info
        self._outcome: Outcome | None = None
        self._started = 0.0
        self._token: object | None = None
        self.error: BaseException | None = None
        #: The attempt's span (non-recording when no SDK is configured).
        self.span: Span = trace.INVALID_SPAN

    def set_outcome(self, outcome: Outcome, error: BaseException | None = None) -> None:
        """Record how the attempt ended (``ok``, ``retry``, ``dead_lettered``, ``requeued``)
        and, for a failure, the handler's exception (its type and message, never a payload)."""
        self._outcome = outcome
        self.error = error

    @property
    def context(self) -> Context:
        """A context whose current span is this attempt: an explicit parent for publishes made
        outside the ``with`` block."""
        return trace.set_span_in_context(self.span)

    def __enter__(self) -> Attempt:
        job_type, _job_id, queue, _attempt, _message_id, published_at_ms, _exchange, _key = (
            self._info
        )
        self._started = time.monotonic()
        queued_s = (time.time() * 1000 - published_at_ms) / 1000 if published_at_ms else None
        metrics.record_started(job_type, queue, queued_s)
        if _state.disabled:
            return self
        try:
            self._start_span(queue, queued_s)
        except Exception as exc:
            _instrumentation_failed(exc)
        return self

    def _start_span(self, queue: str, queued_s: float | None) -> None:
        headers = self._headers or {}
        parent = extract(headers)
        previous = parse_span_context(headers.get(HEADER_PREVIOUS_ATTEMPT))
        links = [Link(previous)] if previous else None
        tracer = _tracer()
        # Attributes go in with the span (samplers see them); building them is skipped when
        # nothing records, which is the whole cost of tracing without an SDK.
        attributes = self._attributes(queue, queued_s) if _recording(tracer) else None
        span = tracer.start_span(
            _span_name("process", queue),
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
        )
        self.span = span
        # Current while the handler runs: its own spans and any retry publish become children.
        self._token = otel_context.attach(trace.set_span_in_context(span, parent))

    def _attributes(self, queue: str, queued_s: float | None) -> dict[str, Any]:
        job_type, job_id, _queue, attempt, message_id, _published, exchange, key = self._info
        attributes = dict(_process_base(job_type, queue, exchange, key))
        attributes["jobsys.job.id"] = job_id
        attributes["jobsys.job.attempt"] = attempt
        if message_id:
            attributes["messaging.message.id"] = message_id
        if queued_s is not None:
            attributes["jobsys.queued_ms"] = max(0.0, queued_s * 1000)
        return attributes

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        outcome: Outcome = self._outcome or ("error" if exc is not None else "ok")
        job_type, queue = self._info[0], self._info[2]
        metrics.record_finished(job_type, queue, outcome, time.monotonic() - self._started)
        try:
            if self._token is not None:
                otel_context.detach(self._token)  # type: ignore[arg-type]
            self._end_span(outcome, exc if exc is not None else self.error)
        except Exception as failure:
            _instrumentation_failed(failure)

    def _end_span(self, outcome: Outcome, error: BaseException | None) -> None:
        span = self.span
        if span is trace.INVALID_SPAN:
            return
        if span.is_recording():
            span.set_attribute("jobsys.job.outcome", outcome)
            if error is not None:
                span.record_exception(error)
                span.set_attribute("error.type", type(error).__qualname__)
            if outcome != "ok" and outcome != "requeued":
                span.set_status(
                    Status(StatusCode.ERROR, type(error).__name__ if error else outcome)
                )
        span.end()


def consume_span(
    headers: Mapping[str, Any] | None,
    *,
    job_type: str,
    job_id: str,
    queue: str,
    attempt: int,
    message_id: str | None = None,
    published_at_ms: int | None = None,
    exchange: str = "",
    routing_key: str = "",
) -> Attempt:
    """A CONSUMER span for one attempt, child of the publish that delivered it, linked to the
    attempt before it; current while the block runs.

    Also feeds the metrics: started, in flight, publish-to-start latency (``published_at_ms``),
    handler duration and the outcome counters. Set the outcome with ``Attempt.set_outcome``
    before the block ends; without it the attempt counts as ``ok`` (``error`` when an exception
    leaves the block).
    """
    return Attempt(
        headers,
        (job_type, job_id, queue, attempt, message_id, published_at_ms, exchange, routing_key),
    )


class Delivery(Protocol):
    """What ``consume_span_for`` reads of a delivery (aio-pika's ``IncomingMessage`` fits)."""

    @property
    def headers(self) -> Mapping[str, Any] | None: ...
    @property
    def type(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def exchange(self) -> str | None: ...
    @property
    def routing_key(self) -> str | None: ...


def consume_span_for(message: Delivery, queue: str) -> Attempt:
    """``consume_span`` for a raw delivery from ``queue``, before it is decoded: the job id,
    attempt and publish time come from jobsys's headers (``unknown`` where missing, so even an
    undecodable message gets its span)."""
    headers = message.headers or {}
    job_id = headers.get(HEADER_JOB_ID)
    if isinstance(job_id, bytes):
        job_id = job_id.decode("utf-8", "replace")
    return consume_span(
        headers,
        job_type=message.type or "unknown",
        job_id=job_id if isinstance(job_id, str) and job_id else "unknown",
        queue=queue,
        attempt=_positive_int(headers.get(HEADER_ATTEMPT)) or 1,
        message_id=message.message_id,
        published_at_ms=_positive_int(headers.get(HEADER_PUBLISHED_AT_MS)),
        exchange=message.exchange or "",
        routing_key=message.routing_key or "",
    )


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
