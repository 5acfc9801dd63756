"""jobsys's metrics, read back with the SDK's in-memory metric reader."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from jobsys.observe import metrics, tracing
from jobsys.wire.headers import HEADER_PUBLISHED_AT_MS, now_ms


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    memory = InMemoryMetricReader()
    metrics.use_meter_provider(MeterProvider(metric_readers=[memory]))
    try:
        yield memory
    finally:
        metrics.use_meter_provider(None)


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def _value(points: dict[str, list[Any]], name: str, **attributes: str) -> Any:
    matching = [p for p in points.get(name, []) if dict(p.attributes) == attributes]
    assert len(matching) == 1, f"{name} {attributes}: {points.get(name)}"
    return matching[0]


def test_each_outcome_feeds_its_own_counter_by_job_type_and_queue(
    reader: InMemoryMetricReader,
) -> None:
    for outcome in ("ok", "ok", "retry", "dead_lettered", "requeued"):
        metrics.record_started("send_email", "emails", 0.5)
        metrics.record_finished("send_email", "emails", outcome, 0.01)
    points = _points(reader)
    labels = {"job_type": "send_email", "queue": "emails"}
    assert _value(points, "jobsys.jobs.started", **labels).value == 5
    assert _value(points, "jobsys.jobs.succeeded", **labels).value == 2
    assert _value(points, "jobsys.jobs.retried", **labels).value == 1
    assert _value(points, "jobsys.jobs.dead_lettered", **labels).value == 1
    assert _value(points, "jobsys.jobs.in_flight", **labels).value == 0


def test_in_flight_counts_attempts_that_have_not_finished(reader: InMemoryMetricReader) -> None:
    metrics.record_started("report", "reports", None)
    metrics.record_started("report", "reports", None)
    metrics.record_finished("report", "reports", "ok", 1.0)
    points = _points(reader)
    assert _value(points, "jobsys.jobs.in_flight", job_type="report", queue="reports").value == 1


def test_handler_duration_and_queue_latency_are_histograms_in_seconds(
    reader: InMemoryMetricReader,
) -> None:
    metrics.record_started("report", "reports", 2.5)
    metrics.record_started("report", "reports", -0.2)  # producer clock ahead of the worker's
    metrics.record_finished("report", "reports", "retry", 0.25)
    points = _points(reader)
    latency = _value(points, "jobsys.queue.latency", job_type="report", queue="reports")
    assert (latency.count, latency.sum, latency.min) == (2, 2.5, 0.0)
    duration = _value(
        points, "jobsys.handler.duration", job_type="report", queue="reports", outcome="retry"
    )
    assert (duration.count, duration.sum) == (1, 0.25)


def test_publishes_are_counted_by_job_type_exchange_and_kind(
    reader: InMemoryMetricReader,
) -> None:
    metrics.record_published("send_email", "demo.jobs")
    metrics.record_published("send_email", "demo.jobs")
    metrics.record_published("send_email", "jobsys.wait.01", "retry")
    points = _points(reader)
    first = _value(
        points, "jobsys.jobs.published", job_type="send_email", exchange="demo.jobs", kind="publish"
    )
    assert first.value == 2


def test_spans_feed_the_metrics_without_a_tracer_configured(reader: InMemoryMetricReader) -> None:
    headers: dict[str, Any] = {HEADER_PUBLISHED_AT_MS: now_ms() - 1000}
    with tracing.publish_span(
        headers,
        job_type="send_email",
        job_id="j",
        exchange="demo.jobs",
        routing_key="email.send",
        message_id="m",
        attempt=1,
    ):
        pass
    with tracing.consume_span(
        headers,
        job_type="send_email",
        job_id="j",
        queue="emails",
        attempt=1,
        published_at_ms=headers[HEADER_PUBLISHED_AT_MS],
    ) as attempt:
        attempt.set_outcome("retry", RuntimeError("later"))
    points = _points(reader)
    labels = {"job_type": "send_email", "queue": "emails"}
    assert _value(points, "jobsys.jobs.retried", **labels).value == 1
    assert _value(points, "jobsys.queue.latency", **labels).sum >= 0.9
    published = _value(
        points, "jobsys.jobs.published", job_type="send_email", exchange="demo.jobs", kind="publish"
    )
    assert published.value == 1


class _BrokenMeterProvider(MeterProvider):
    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("metrics bug")


def test_failing_metrics_never_raise_and_are_logged_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Instruments are built lazily from the global meter; make that build fail.
    monkeypatch.setattr(otel_metrics, "get_meter", _BrokenMeterProvider().get_meter)
    monkeypatch.setattr(metrics, "_state", metrics._State())
    with caplog.at_level(logging.WARNING, logger="jobsys.observe.metrics"):
        for _ in range(3):
            metrics.record_started("a", "q", 0.1)
            metrics.record_finished("a", "q", "ok", 0.1)
    assert len([r for r in caplog.records if r.name == "jobsys.observe.metrics"]) == 1
