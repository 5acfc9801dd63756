"""W3C trace context in AMQP headers: ``traceparent``/``tracestate`` written and read.

Under the default propagator (W3C trace context, optionally with W3C baggage) jobsys reads and
writes the two headers itself: the API's propagators go through generic getters and setters, a
composite and a regular expression per message, and doing the same work directly costs a
fraction of that. Any other propagator (B3, Jaeger, a custom one) is used as configured. Also
here: the traceparent-style form of a span context that links an attempt to the one before it.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"


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
    clear_trace_headers(headers)
    if not _propagation.fast_path() or (_propagation.baggage and baggage.get_all(context)):
        propagate.inject(headers, context=context)
        return
    span_context = trace.get_current_span(context).get_span_context()
    if not span_context.is_valid:
        return
    headers[HEADER_TRACEPARENT] = format_span_context(span_context)
    if span_context.trace_state:
        headers[HEADER_TRACESTATE] = span_context.trace_state.to_header()


def clear_trace_headers(headers: MutableMapping[str, Any]) -> None:
    """Remove ``traceparent``/``tracestate`` carried over from an earlier publish."""
    headers.pop(HEADER_TRACEPARENT, None)
    headers.pop(HEADER_TRACESTATE, None)


def injects_nothing(context: Context | None) -> bool:
    """Whether ``inject(headers, context)`` would only clear the trace headers: the
    propagators are W3C's and ``context`` holds neither a valid span nor baggage."""
    if not _propagation.fast_path():
        return False
    if context is not None and not context:
        return True  # an empty context (nothing traces the caller) holds neither
    if _propagation.baggage and baggage.get_all(context):
        return False
    return not trace.get_current_span(context).get_span_context().is_valid


def carries_context(headers: Mapping[str, Any] | None) -> bool:
    """Whether ``extract`` may find a trace context or baggage in ``headers``: False only
    when the propagators are W3C's and none of their headers is there."""
    if not headers:
        return False
    if not _propagation.fast_path():
        return True
    return HEADER_TRACEPARENT in headers or (_propagation.baggage and "baggage" in headers)


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


def current_trace_id(headers: Mapping[str, Any] | None) -> str | None:
    """The W3C trace id (32 hex digits) of the trace the running code belongs to: the current
    span's, else the one ``headers`` carry (``traceparent``); None when there is neither."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid and headers:
        span_context = _parse_traceparent(headers.get("traceparent")) or span_context
    return format(span_context.trace_id, "032x") if span_context.is_valid else None
