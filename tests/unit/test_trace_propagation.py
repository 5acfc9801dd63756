"""The publish span's shortcut without an SDK, held to OpenTelemetry's own propagators: where
``injects_nothing`` says so, the API's ``propagate.inject`` writes nothing either, and a publish
span then only clears the trace headers an earlier publish left."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from jobsys.observe import tracing
from jobsys.observe.propagation import inject, injects_nothing

_VALID = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
)
_INVALID = trace.INVALID_SPAN_CONTEXT
_STALE = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "tracestate": "a=b"}


class _AlwaysWrites(TextMapPropagator):
    """A propagator of its own kind (as B3 or Jaeger would be): it writes even for no span."""

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        return context or Context()

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        setter.set(carrier, "x-custom-trace", "1")

    @property
    def fields(self) -> set[str]:
        return {"x-custom-trace"}


_PROPAGATORS: dict[str, TextMapPropagator] = {
    "w3c and baggage (the default)": CompositePropagator(
        [TraceContextTextMapPropagator(), W3CBaggagePropagator()]
    ),
    "w3c only": TraceContextTextMapPropagator(),
    "a custom one": _AlwaysWrites(),
}


@pytest.fixture
def textmap() -> Iterator[None]:
    before = propagate.get_global_textmap()
    yield
    propagate.set_global_textmap(before)


def _context(span: str, with_baggage: bool, other_key: bool) -> Context:
    ctx = Context()
    if span != "none":
        ctx = trace.set_span_in_context(
            NonRecordingSpan(_VALID if span == "valid" else _INVALID), ctx
        )
    if with_baggage:
        ctx = baggage.set_baggage("tenant", "acme", ctx)
    if other_key:
        ctx = otel_context.set_value("unrelated", 1, ctx)
    return ctx


def _added(headers: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in headers.items() if k not in _STALE}


@given(
    propagator=st.sampled_from(sorted(_PROPAGATORS)),
    span=st.sampled_from(["none", "valid", "invalid"]),
    with_baggage=st.booleans(),
    other_key=st.booleans(),
)
def test_injects_nothing_only_where_the_apis_propagators_write_nothing(
    propagator: str, span: str, with_baggage: bool, other_key: bool
) -> None:
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(_PROPAGATORS[propagator])
    try:
        ctx = _context(span, with_baggage, other_key)
        oracle: dict[str, Any] = {}
        propagate.inject(oracle, context=ctx)
        ours = dict(_STALE)
        inject(ours, ctx)
        assert ours == oracle  # the stale trace headers are gone, the rest as the API writes
        if injects_nothing(ctx):
            assert oracle == {}
    finally:
        propagate.set_global_textmap(before)


def test_an_untraced_caller_with_the_default_propagators_injects_nothing() -> None:
    assert injects_nothing(Context())
    assert injects_nothing(otel_context.set_value("unrelated", 1, Context()))
    assert not injects_nothing(_context("valid", False, False))
    assert not injects_nothing(_context("none", True, False))


def _published_headers(headers: dict[str, Any]) -> dict[str, Any]:
    with tracing.publish_span(
        headers,
        job_type="t",
        job_id="j",
        exchange="e",
        routing_key="k",
        message_id="m",
        attempt=1,
    ) as span:
        assert not span.is_recording()
    return headers


@pytest.mark.usefixtures("textmap")
@pytest.mark.parametrize("propagator", sorted(_PROPAGATORS))
@pytest.mark.parametrize(
    ("span", "with_baggage"), [("none", False), ("valid", False), ("none", True)]
)
def test_a_publish_without_an_sdk_writes_what_the_apis_propagators_write(
    propagator: str, span: str, with_baggage: bool
) -> None:
    propagate.set_global_textmap(_PROPAGATORS[propagator])
    tracing.use_tracer_provider(trace.NoOpTracerProvider())
    ctx = _context(span, with_baggage, False)
    token = otel_context.attach(ctx)
    try:
        published = _published_headers({**_STALE, "jobsys-attempt": 1})
    finally:
        otel_context.detach(token)
        tracing.use_tracer_provider(None)
    oracle: dict[str, Any] = {}
    propagate.inject(oracle, context=ctx)
    assert published == {**oracle, "jobsys-attempt": 1}
    if span == "valid" and propagator != "a custom one":
        assert published["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
