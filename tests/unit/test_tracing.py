"""Tracing of one job across publishes, attempts, retries, dead-lettering and replay.

The message flow is simulated exactly as the producer and worker drive it: header dicts pass
from ``publish_span`` to ``consume_span`` and back, the way they travel through the broker.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from jobsys.observe import tracing
from jobsys.observe.propagation import extract
from jobsys.observe.telemetry_setup import LoggedOnceSpanExporter, Telemetry, configure_from_env
from jobsys.observe.tracing import consume_span, publish_span
from jobsys.wire.headers import (
    HEADER_ATTEMPT,
    HEADER_JOB_ID,
    HEADER_PREVIOUS_ATTEMPT,
    HEADER_PUBLISHED_AT_MS,
)

JOB_ID = "5f0c8e3a-0000-4000-8000-000000000001"
QUEUE = "emails"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.use_tracer_provider(provider)
    try:
        yield memory
    finally:
        tracing.use_tracer_provider(None)


def _publish(
    headers: dict[str, Any], attempt: int, kind: tracing.PublishKind = "publish", **extra: Any
) -> dict[str, Any]:
    """Publish as the producer (or the worker's retry) does; returns the headers sent."""
    headers = {k: v for k, v in headers.items() if not k.startswith("x-")}
    headers[HEADER_ATTEMPT] = attempt
    headers[HEADER_JOB_ID] = JOB_ID
    headers[HEADER_PUBLISHED_AT_MS] = int(time.time() * 1000) - 250
    exchange = "jobsys.dead-letter" if kind == "dead_letter" else "demo.jobs"
    with publish_span(
        headers,
        job_type="send_email",
        job_id=JOB_ID,
        exchange=exchange,
        routing_key="email.send",
        message_id=f"m{attempt}-{kind}",
        attempt=attempt,
        kind=kind,
        **extra,
    ):
        pass
    return headers


def _attempt(headers: dict[str, Any], settled: str, then: Any = None) -> Any:
    """Run one attempt as the worker does; ``then`` publishes from inside it."""
    with consume_span(
        headers,
        job_type="send_email",
        job_id=JOB_ID,
        queue=QUEUE,
        attempt=headers[HEADER_ATTEMPT],
        message_id="m",
        published_at_ms=headers[HEADER_PUBLISHED_AT_MS],
        exchange="demo.jobs",
        routing_key="email.send",
    ) as attempt:
        error = None if settled == "ack" else RuntimeError("smtp server said no")
        attempt.set_outcome(settled, error)
        return then() if then is not None else None


def _by_name(spans: Sequence[ReadableSpan]) -> list[tuple[str, SpanKind]]:
    return [(s.name, s.kind) for s in spans]


def test_job_failing_twice_then_succeeding_is_one_trace_with_links(
    exporter: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer("caller", tracer_provider=_provider_of(exporter))
    with tracer.start_as_current_span("http request") as caller:
        sent = _publish({}, 1)
    first = sent
    second = _attempt(first, "retry", lambda: _publish(first, 2, "retry", delay_s=2.0))
    third = _attempt(second, "retry", lambda: _publish(second, 3, "retry", delay_s=4.0))
    _attempt(third, "ack")

    spans = [s for s in exporter.get_finished_spans() if s.name != "http request"]
    assert len(spans) == 6
    assert {s.context.trace_id for s in spans} == {caller.get_span_context().trace_id}
    publish, attempt1, retry1, attempt2, retry2, attempt3 = _in_flow_order(spans)

    assert publish.kind == SpanKind.PRODUCER and publish.name == "publish demo.jobs"
    assert publish.parent is not None
    assert publish.parent.span_id == caller.get_span_context().span_id
    assert [a.kind for a in (attempt1, attempt2, attempt3)] == [SpanKind.CONSUMER] * 3
    assert [r.kind for r in (retry1, retry2)] == [SpanKind.PRODUCER] * 2

    assert _parent_id(attempt1) == publish.context.span_id
    assert _parent_id(retry1) == attempt1.context.span_id
    assert _parent_id(attempt2) == retry1.context.span_id
    assert _parent_id(retry2) == attempt2.context.span_id
    assert _parent_id(attempt3) == retry2.context.span_id

    assert list(attempt1.links) == []
    assert [link.context.span_id for link in attempt2.links] == [attempt1.context.span_id]
    assert [link.context.span_id for link in attempt3.links] == [attempt2.context.span_id]

    assert [_attrs(a)["jobsys.job.outcome"] for a in (attempt1, attempt2, attempt3)] == [
        "retry",
        "retry",
        "ok",
    ]
    assert attempt1.status.status_code == StatusCode.ERROR
    assert attempt3.status.status_code == StatusCode.UNSET
    assert [_attrs(a)["jobsys.job.attempt"] for a in (attempt1, attempt2, attempt3)] == [
        1,
        2,
        3,
    ]
    assert _attrs(retry1)["jobsys.delay_s"] == 2.0
    assert _attrs(retry2)["jobsys.publish.kind"] == "retry"


def test_publish_span_carries_the_messaging_attributes_and_no_payload(
    exporter: InMemorySpanExporter,
) -> None:
    headers = _publish({"customer": "secret@example.com"}, 1, delay_s=30.0)
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "demo.jobs",
        "messaging.rabbitmq.destination.routing_key": "email.send",
        "messaging.message.id": "m1-publish",
        "jobsys.job.id": JOB_ID,
        "jobsys.job.type": "send_email",
        "jobsys.job.attempt": 1,
        "jobsys.publish.kind": "publish",
        "jobsys.delay_s": 30.0,
    }
    assert headers["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"


def test_consumer_span_records_queue_and_time_spent_queued(
    exporter: InMemorySpanExporter,
) -> None:
    headers = _publish({}, 1)
    _attempt(headers, "ack")
    consumer = next(s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER)
    attributes = _attrs(consumer)
    assert consumer.name == f"process {QUEUE}"
    assert attributes["messaging.destination.subscription.name"] == QUEUE
    assert attributes["messaging.system"] == "rabbitmq"
    assert attributes["jobsys.job.id"] == JOB_ID
    assert attributes["jobsys.job.type"] == "send_email"
    assert 200 <= attributes["jobsys.queued_ms"] < 60_000


def test_dead_lettered_job_trace_ends_in_its_dead_letter_publish(
    exporter: InMemorySpanExporter,
) -> None:
    first = _publish({}, 1)
    second = _attempt(first, "retry", lambda: _publish(first, 2, "retry"))
    dead = _attempt(second, "dead_letter", lambda: _publish(second, 2, "dead_letter"))

    spans = _in_flow_order(list(exporter.get_finished_spans()))
    assert len({s.context.trace_id for s in spans}) == 1
    last_attempt, dead_letter = spans[-2], spans[-1]
    assert dead_letter.kind == SpanKind.PRODUCER
    assert dead_letter.attributes is not None
    assert _attrs(dead_letter)["jobsys.publish.kind"] == "dead_letter"
    assert _attrs(dead_letter)["messaging.destination.name"] == "jobsys.dead-letter"
    assert _parent_id(dead_letter) == last_attempt.context.span_id
    assert last_attempt.attributes is not None
    assert _attrs(last_attempt)["jobsys.job.outcome"] == "dead_lettered"
    assert last_attempt.events[0].name == "exception"
    assert dead[HEADER_PREVIOUS_ATTEMPT].split("-")[2] == f"{last_attempt.context.span_id:016x}"


def test_replayed_job_continues_its_trace_and_links_to_its_last_attempt(
    exporter: InMemorySpanExporter,
) -> None:
    first = _publish({}, 1)
    dead = _attempt(first, "dead_letter", lambda: _publish(first, 1, "dead_letter"))
    # A replay runs in a separate process (jobsys dlq replay), outside any job's context.
    replayed = _publish(dead, 1, "replay", parent=extract(dead))
    _attempt(replayed, "ack")

    publish, attempt1, dead_letter, replay, attempt2 = _in_flow_order(
        list(exporter.get_finished_spans())
    )
    assert len({s.context.trace_id for s in (publish, attempt1, replay, attempt2)}) == 1
    assert _parent_id(replay) == dead_letter.context.span_id
    assert _parent_id(attempt2) == replay.context.span_id
    assert [link.context.span_id for link in attempt2.links] == [attempt1.context.span_id]


def test_publish_without_a_caller_trace_starts_a_new_trace(
    exporter: InMemorySpanExporter,
) -> None:
    _publish({}, 1)
    _publish({}, 1)
    first, second = exporter.get_finished_spans()
    assert first.parent is None and second.parent is None
    assert first.context.trace_id != second.context.trace_id


def test_failed_publish_marks_its_span_as_an_error_and_raises(
    exporter: InMemorySpanExporter,
) -> None:
    with (
        pytest.raises(ConnectionError),
        publish_span(
            {},
            job_type="send_email",
            job_id=JOB_ID,
            exchange="demo.jobs",
            routing_key="email.send",
            message_id="m",
            attempt=1,
        ),
    ):
        raise ConnectionError("lost")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None and _attrs(span)["error.type"] == "ConnectionError"


def test_message_without_trace_headers_gets_a_root_consumer_span(
    exporter: InMemorySpanExporter,
) -> None:
    _attempt({HEADER_ATTEMPT: 1, HEADER_PUBLISHED_AT_MS: None}, "ok")
    (span,) = exporter.get_finished_spans()
    assert span.parent is None and span.kind == SpanKind.CONSUMER


def test_trace_headers_arriving_as_bytes_are_understood(exporter: InMemorySpanExporter) -> None:
    headers = _publish({}, 1)
    as_bytes = {k: v.encode() if isinstance(v, str) else v for k, v in headers.items()}
    _attempt(as_bytes, "ack")
    publish, attempt = exporter.get_finished_spans()
    assert _parent_id(attempt) == publish.context.span_id


def test_malformed_previous_attempt_header_is_ignored(exporter: InMemorySpanExporter) -> None:
    headers = _publish({}, 1)
    headers[HEADER_PREVIOUS_ATTEMPT] = "00-not-a-span"
    _attempt(headers, "ack")
    consumer = exporter.get_finished_spans()[-1]
    assert list(consumer.links) == []


def test_without_an_sdk_the_trace_context_still_passes_through() -> None:
    tracing.use_tracer_provider(trace.NoOpTracerProvider())
    try:
        incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        headers = {"traceparent": incoming, HEADER_ATTEMPT: 1, HEADER_PUBLISHED_AT_MS: 1}
        republished = _attempt(headers, "retry", lambda: _publish(headers, 2, "retry"))
        assert republished["traceparent"] == incoming
    finally:
        tracing.use_tracer_provider(None)


class _BrokenProcessor(SpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise RuntimeError("instrumentation bug")


def test_failing_instrumentation_never_fails_the_job_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(_BrokenProcessor())
    tracing.use_tracer_provider(provider)
    try:
        with caplog.at_level(logging.WARNING, logger="jobsys.observe.tracing"):
            for attempt in (1, 2, 3):
                headers = _publish({}, attempt)
                _attempt(headers, "ack")
    finally:
        tracing.use_tracer_provider(None)
    assert [r.message for r in caplog.records].count(
        "tracing failed and is now off for this process; jobs are not affected"
    ) == 1


class _RaisingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise OSError("collector unreachable")


def test_raising_exporter_never_raises_into_the_caller_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(LoggedOnceSpanExporter(_RaisingExporter())))
    tracing.use_tracer_provider(provider)
    try:
        with caplog.at_level(logging.WARNING):
            for attempt in (1, 2, 3):
                _attempt(_publish({}, attempt), "ok")
    finally:
        tracing.use_tracer_provider(None)
    messages = [r.getMessage() for r in caplog.records if "collector unreachable" in r.getMessage()]
    assert len(messages) == 1


def _provider_of(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _in_flow_order(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    """Spans in the order the job went through them (parents before children)."""
    return sorted(spans, key=lambda s: s.start_time or 0)


def test_console_exporter_is_configured_from_otel_traces_exporter() -> None:
    telemetry = configure_from_env(
        "jobsys-worker", {"OTEL_TRACES_EXPORTER": "console"}, set_global=False
    )
    try:
        assert telemetry.tracer_provider is not None
        assert telemetry.meter_provider is None
        assert telemetry.tracer_provider.resource.attributes["service.name"] == "jobsys-worker"
    finally:
        telemetry.shutdown()


def test_no_otel_variables_and_exporter_none_configure_nothing() -> None:
    assert configure_from_env("jobsys-worker", {}, set_global=False) == Telemetry()
    none = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    assert configure_from_env("jobsys-worker", none, set_global=False) == Telemetry()
    disabled = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}
    assert configure_from_env("jobsys-worker", disabled, set_global=False) == Telemetry()


def test_otlp_without_the_optional_extra_says_how_to_install_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs whether or not the extra is installed here: a None entry in sys.modules makes its
    # import fail as it does where the extra is missing.
    for module in (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    ):
        monkeypatch.setitem(sys.modules, module, None)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    with caplog.at_level(logging.WARNING, logger="jobsys.observe.telemetry_setup"):
        telemetry = configure_from_env("jobsys-worker", env, set_global=False)
    assert telemetry == Telemetry()
    assert any("jobsys[otlp]" in r.getMessage() for r in caplog.records)


def test_importing_tracing_and_metrics_never_loads_the_sdk() -> None:
    code = (
        "import sys, jobsys.observe.tracing, jobsys.observe.metrics; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_default_exchange_is_an_empty_destination_name_as_the_conventions_ask(
    exporter: InMemorySpanExporter,
) -> None:
    with publish_span(
        {},
        job_type="send_email",
        job_id=JOB_ID,
        exchange="",
        routing_key="",
        message_id="m",
        attempt=1,
    ):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.name == "publish amq.default"
    assert _attrs(span)["messaging.destination.name"] == ""
    assert "messaging.rabbitmq.destination.routing_key" not in _attrs(span)


def _untraced_attempt() -> tracing.ConsumeSpan:
    return consume_span(None, job_type="t", job_id="j", queue="q", attempt=1)


def test_an_untraced_job_runs_in_a_context_of_its_own_hiding_the_workers_and_keeping_none() -> None:
    from opentelemetry import baggage
    from opentelemetry import context as otel_context

    # No SDK records and no trace context came: the span is skipped, the context is not.
    tracing.use_tracer_provider(trace.NoOpTracerProvider())
    try:
        ambient = otel_context.attach(baggage.set_baggage("worker", "w"))
        try:
            with _untraced_attempt():
                assert baggage.get_baggage("worker") is None  # not the worker's own
                # A handler that attaches and never detaches ...
                otel_context.attach(baggage.set_baggage("leaked", "1"))
            # ... leaves nothing behind for the runner's next job.
            assert baggage.get_baggage("leaked") is None
            assert baggage.get_baggage("worker") == "w"
        finally:
            otel_context.detach(ambient)
    finally:
        tracing.use_tracer_provider(None)
