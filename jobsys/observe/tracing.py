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

import time
from collections.abc import Mapping, MutableMapping
from types import TracebackType
from typing import Any, Literal, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from jobsys.observe import conventions, metrics
from jobsys.observe.propagation import (
    carries_context,
    clear_trace_headers,
    extract,
    format_span_context,
    inject,
    injects_nothing,
    parse_span_context,
)
from jobsys.observe.tracer_state import (
    current_tracer,
    instrumentation_failed,
    recording,
    state,
)
from jobsys.observe.tracer_state import use_tracer_provider as use_tracer_provider
from jobsys.wire.headers import HEADER_PREVIOUS_ATTEMPT

PublishKind = Literal["publish", "retry", "dead_letter", "replay", "wait"]
#: How an attempt ended, as its span's ``jobsys.job.outcome`` and the metrics show it.
SpanOutcome = Literal["ok", "retry", "dead_lettered", "requeued", "waiting", "cancelled", "error"]
#: Settlement kinds (``jobsys.consume.outcome``) under their documented names: the one place
#: the two vocabularies meet.
SPAN_OUTCOMES: Mapping[str, SpanOutcome] = {
    "ack": "ok",
    "retry": "retry",
    "dead_letter": "dead_lettered",
    "requeue": "requeued",
    "wait": "waiting",
    "cancel": "cancelled",
}

#: The context a job runs in when nothing traces it (contexts are immutable: one serves all).
_EMPTY = Context()
#: How a span *name* shows the default exchange; its ``messaging.destination.name`` is "", as
#: RabbitMQ's semantic conventions ask.
_DEFAULT_EXCHANGE = "amq.default"


# -- PRODUCER spans ----------------------------------------------------------------------------


class _PublishAttributes(NamedTuple):
    """What a PRODUCER span says besides its job type (a tuple: built once per publish)."""

    job_id: str
    exchange: str
    routing_key: str
    message_id: str
    attempt: int
    delay_s: float | None


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
        attrs: _PublishAttributes,
    ) -> None:
        self._headers = headers
        self._kind = kind
        self._parent = parent
        self._job_type = job_type
        self._attrs = attrs
        self._name_exchange = attrs.exchange or _DEFAULT_EXCHANGE
        self._span: Span = trace.INVALID_SPAN

    def __enter__(self) -> Span:
        if state.disabled:
            return self._span
        try:
            parent = self._parent if self._parent is not None else otel_context.get_current()
            tracer = current_tracer()
            if not recording(tracer) and injects_nothing(parent):
                # No SDK and no trace to carry on: the span would be the invalid one and the
                # headers would get no trace context, so neither is made (a publish span's
                # enter and exit 6.4 -> 2.8 us here without an SDK; bench/README.md).
                clear_trace_headers(self._headers)
                return self._span
            span = tracer.start_span(
                conventions.span_name("publish", self._name_exchange),
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes=self._attributes() if recording(tracer) else None,
            )
            self._span = span
            previous = trace.get_current_span(parent).get_span_context()
            if self._kind in ("retry", "dead_letter") and previous.is_valid:
                # The parent of a retry or dead-letter publish is the attempt that failed.
                self._headers[HEADER_PREVIOUS_ATTEMPT] = format_span_context(previous)
            inject(self._headers, trace.set_span_in_context(span, parent))
        except Exception as exc:
            instrumentation_failed(exc)
        return self._span

    def _attributes(self) -> dict[str, Any]:
        a = self._attrs
        attributes = dict(
            conventions.publish_base(self._job_type, a.exchange, a.routing_key, self._kind)
        )
        attributes["messaging.message.id"] = a.message_id
        attributes["jobsys.job.id"] = a.job_id
        attributes["jobsys.job.attempt"] = a.attempt
        if a.delay_s is not None:
            attributes["jobsys.delay_s"] = float(a.delay_s)
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
            instrumentation_failed(failure)


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
        _PublishAttributes(job_id, exchange, routing_key, message_id, attempt, delay_s),
    )


# -- CONSUMER spans ----------------------------------------------------------------------------


class _ConsumeAttributes(NamedTuple):
    """What a CONSUMER span says about its attempt (a tuple: built once per attempt)."""

    job_type: str
    job_id: str
    queue: str
    attempt: int
    message_id: str | None
    published_at_ms: int | None
    exchange: str
    routing_key: str


class ConsumeSpan:
    """One run of a job's handler: its CONSUMER span, and how the worker settled it.

    Use it through ``consume_span``; call ``set_outcome`` once the delivery is settled.
    """

    __slots__ = ("_headers", "_info", "_outcome", "_started", "_token", "error", "span")

    def __init__(self, headers: Mapping[str, Any] | None, info: _ConsumeAttributes) -> None:
        self._headers = headers
        self._info = info
        self._outcome: SpanOutcome | None = None
        self._started = 0.0
        self._token: object | None = None
        self.error: BaseException | None = None
        #: The attempt's span (non-recording when no SDK is configured).
        self.span: Span = trace.INVALID_SPAN

    def set_outcome(self, settled: str, error: BaseException | None = None) -> None:
        """Record how the delivery was settled (``ack``, ``retry``, ``dead_letter``,
        ``requeue``; shown as ``ok``, ``retry``, ``dead_lettered``, ``requeued``) and, for a
        failure, the exception (its type and message, never a payload)."""
        self._outcome = SPAN_OUTCOMES.get(settled, "error")
        self.error = error

    @property
    def context(self) -> Context:
        """A context whose current span is this attempt: an explicit parent for publishes made
        outside the ``with`` block."""
        return trace.set_span_in_context(self.span)

    def __enter__(self) -> ConsumeSpan:
        info = self._info
        self._started = time.monotonic()
        published = info.published_at_ms
        queued_s = (time.time() * 1000 - published) / 1000 if published else None
        metrics.record_started(info.job_type, info.queue, queued_s)
        if state.disabled:
            return self
        try:
            if not recording(current_tracer()) and not carries_context(self._headers):
                # No SDK and no trace to carry on: the span would be the invalid one, so it is
                # not made (bench/README.md). The job still runs in a context of its own,
                # empty as its span's would be: nothing the worker's code had attached
                # reaches the handler's publishes, and nothing a handler attaches and never
                # detaches reaches the next job of its runner.
                self._token = otel_context.attach(_EMPTY)
                return self
            self._start_span(info.queue, queued_s)
        except Exception as exc:
            instrumentation_failed(exc)
        return self

    def _start_span(self, queue: str, queued_s: float | None) -> None:
        headers = self._headers or {}
        parent = extract(headers)
        previous = parse_span_context(headers.get(HEADER_PREVIOUS_ATTEMPT))
        links = [Link(previous)] if previous else None
        tracer = current_tracer()
        # Attributes go in with the span (samplers see them); building them is skipped when
        # nothing records, which is the whole cost of tracing without an SDK.
        attributes = self._attributes(queue, queued_s) if recording(tracer) else None
        span = tracer.start_span(
            conventions.span_name("process", queue),
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
        )
        self.span = span
        # Current while the handler runs: its own spans and any retry publish become children.
        self._token = otel_context.attach(trace.set_span_in_context(span, parent))

    def _attributes(self, queue: str, queued_s: float | None) -> dict[str, Any]:
        info = self._info
        attributes = dict(
            conventions.process_base(info.job_type, queue, info.exchange, info.routing_key)
        )
        attributes["jobsys.job.id"] = info.job_id
        attributes["jobsys.job.attempt"] = info.attempt
        if info.message_id:
            attributes["messaging.message.id"] = info.message_id
        if queued_s is not None:
            attributes["jobsys.queued_ms"] = max(0.0, queued_s * 1000)
        return attributes

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        outcome: SpanOutcome = self._outcome or ("error" if exc is not None else "ok")
        info = self._info
        metrics.record_finished(
            info.job_type, info.queue, outcome, time.monotonic() - self._started
        )
        try:
            if self._token is not None:
                otel_context.detach(self._token)  # type: ignore[arg-type]
            self._end_span(outcome, exc if exc is not None else self.error)
        except Exception as failure:
            instrumentation_failed(failure)

    def _end_span(self, outcome: SpanOutcome, error: BaseException | None) -> None:
        span = self.span
        if span is trace.INVALID_SPAN:
            return
        if span.is_recording():
            span.set_attribute("jobsys.job.outcome", outcome)
            if error is not None:
                span.record_exception(error)
                span.set_attribute("error.type", type(error).__qualname__)
            if outcome not in ("ok", "requeued", "waiting", "cancelled"):
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
) -> ConsumeSpan:
    """A CONSUMER span for one attempt, child of the publish that delivered it, linked to the
    attempt before it; current while the block runs.

    Also feeds the metrics: started, in flight, publish-to-start latency (``published_at_ms``),
    handler duration and the outcome counters. Set the outcome with ``ConsumeSpan.set_outcome``
    before the block ends; without it the attempt counts as ``ok`` (``error`` when an exception
    leaves the block).
    """
    return ConsumeSpan(
        headers,
        _ConsumeAttributes(
            job_type, job_id, queue, attempt, message_id, published_at_ms, exchange, routing_key
        ),
    )
