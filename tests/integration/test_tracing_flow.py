"""One trace per job, end to end on a real broker: the producer, the worker's attempts, its
retry and dead-letter publishes, and a replay from the dead-letter queue, recorded by
OpenTelemetry's in-memory exporter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from jobsys.app import App, JobContext
from jobsys.consume.worker import Worker
from jobsys.observe import tracing
from jobsys.ops import dlq
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text
from tests.apps.worker_apps import apply, publish, wait_until
from tests.harness.running import running_worker

pytestmark = pytest.mark.timeout(60)

QUEUE = "tf.work"
TOPOLOGY_YAML = """\
version: 1
exchanges:
  tf.jobs: {type: direct}
queues:
  tf.work: {type: classic}
bindings:
  - {exchange: tf.jobs, queue: tf.work, routing_key: work}
job_types:
  flaky: {exchange: tf.jobs, routing_key: work, retry: {max_attempts: 3, delays: [1s]}}
  doomed: {exchange: tf.jobs, routing_key: work, retry: {max_attempts: 2, delays: [1s]}}
  until_replayed: {exchange: tf.jobs, routing_key: work, retry: {max_attempts: 1}}
"""

#: Jobs of ``until_replayed`` that may succeed now.
ALLOWED: set[str] = set()
app = App()


@app.handler("flaky")
async def flaky(payload: Any, ctx: JobContext) -> None:
    if ctx.attempt < 3:
        raise ConnectionError("the service is down")


@app.handler("doomed")
async def doomed(payload: Any) -> None:
    raise RuntimeError("never works")


@app.handler("until_replayed")
async def until_replayed(payload: Any, ctx: JobContext) -> None:
    if ctx.job_id not in ALLOWED:
        raise RuntimeError("not yet")


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


@pytest.fixture
async def loaded(vhost_settings: Settings) -> LoadedTopology:
    topology = load_topology_text(TOPOLOGY_YAML, "tracing-flow.yaml")
    await apply(vhost_settings, topology)
    ALLOWED.clear()
    return topology


@pytest.fixture
async def worker(
    vhost_settings: Settings, loaded: LoadedTopology, exporter: InMemorySpanExporter
) -> AsyncIterator[Worker]:
    async with running_worker(app, loaded, vhost_settings) as running:
        yield running


def _spans_of(exporter: InMemorySpanExporter, job_id: str) -> list[ReadableSpan]:
    """The job's spans, in the order they started."""
    spans = [
        span
        for span in exporter.get_finished_spans()
        if span.attributes is not None and span.attributes.get("jobsys.job.id") == job_id
    ]
    return sorted(spans, key=lambda span: span.start_time or 0)


async def _wait_for_spans(exporter: InMemorySpanExporter, job_id: str, count: int) -> None:
    await wait_until(
        lambda: len(_spans_of(exporter, job_id)) >= count, timeout_s=20, what=f"{count} spans"
    )


def _shape(spans: list[ReadableSpan]) -> list[tuple[SpanKind, Any, Any]]:
    """(kind, publish kind or attempt, outcome) of each span."""
    shape: list[tuple[SpanKind, Any, Any]] = []
    for span in spans:
        attrs = span.attributes or {}
        if span.kind == SpanKind.PRODUCER:
            shape.append((span.kind, attrs["jobsys.publish.kind"], None))
        else:
            shape.append((span.kind, attrs["jobsys.job.attempt"], attrs["jobsys.job.outcome"]))
    return shape


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _linked(span: ReadableSpan) -> list[int]:
    return [link.context.span_id for link in span.links]


async def test_job_failing_twice_then_succeeding_is_one_trace_of_publishes_and_attempts(
    vhost_settings: Settings,
    loaded: LoadedTopology,
    worker: Worker,
    exporter: InMemorySpanExporter,
) -> None:
    [job_id] = await publish(vhost_settings, loaded, "flaky", [{}])
    await _wait_for_spans(exporter, job_id, 6)
    spans = _spans_of(exporter, job_id)
    assert _shape(spans) == [
        (SpanKind.PRODUCER, "publish", None),
        (SpanKind.CONSUMER, 1, "retry"),
        (SpanKind.PRODUCER, "retry", None),
        (SpanKind.CONSUMER, 2, "retry"),
        (SpanKind.PRODUCER, "retry", None),
        (SpanKind.CONSUMER, 3, "ok"),
    ]
    assert len({span.context.trace_id for span in spans}) == 1
    sent, attempt1, retry1, attempt2, retry2, attempt3 = spans
    assert _parent(attempt1) == sent.context.span_id
    assert _parent(retry1) == attempt1.context.span_id
    assert _parent(attempt2) == retry1.context.span_id
    assert _parent(retry2) == attempt2.context.span_id
    assert _parent(attempt3) == retry2.context.span_id
    assert _linked(attempt1) == []
    assert _linked(attempt2) == [attempt1.context.span_id]
    assert _linked(attempt3) == [attempt2.context.span_id]

    assert sent.name == "publish tf.jobs"
    assert sent.attributes is not None
    assert sent.attributes["messaging.rabbitmq.destination.routing_key"] == "work"
    for retry in (retry1, retry2):
        assert retry.name == "publish jobsys.wait.00"
        assert retry.attributes is not None
        assert retry.attributes["jobsys.delay_s"] == 1.0
    assert [r.attributes["jobsys.job.attempt"] for r in (retry1, retry2)] == [2, 3]  # type: ignore[index]
    for attempt in (attempt1, attempt2, attempt3):
        assert attempt.name == f"process {QUEUE}"
        assert attempt.attributes is not None
        assert attempt.attributes["messaging.destination.subscription.name"] == QUEUE
        assert attempt.attributes["jobsys.job.type"] == "flaky"
        assert attempt.attributes["messaging.system"] == "rabbitmq"
    assert attempt1.events[0].name == "exception"
    assert attempt1.attributes is not None
    assert attempt1.attributes["error.type"] == "ConnectionError"


async def test_a_dead_lettered_jobs_trace_ends_in_its_dead_letter_publish(
    vhost_settings: Settings,
    loaded: LoadedTopology,
    worker: Worker,
    exporter: InMemorySpanExporter,
) -> None:
    [job_id] = await publish(vhost_settings, loaded, "doomed", [{}])
    await _wait_for_spans(exporter, job_id, 5)
    spans = _spans_of(exporter, job_id)
    assert _shape(spans) == [
        (SpanKind.PRODUCER, "publish", None),
        (SpanKind.CONSUMER, 1, "retry"),
        (SpanKind.PRODUCER, "retry", None),
        (SpanKind.CONSUMER, 2, "dead_lettered"),
        (SpanKind.PRODUCER, "dead_letter", None),
    ]
    assert len({span.context.trace_id for span in spans}) == 1
    last_attempt, dead_letter = spans[3], spans[4]
    assert _parent(dead_letter) == last_attempt.context.span_id
    assert dead_letter.name == "publish jobsys.dead-letter"


async def test_a_replayed_job_continues_its_trace_from_the_dead_letter_publish(
    vhost_settings: Settings,
    loaded: LoadedTopology,
    worker: Worker,
    exporter: InMemorySpanExporter,
) -> None:
    [job_id] = await publish(vhost_settings, loaded, "until_replayed", [{}])
    await _wait_for_spans(exporter, job_id, 3)
    ALLOWED.add(job_id)
    async with Producer(vhost_settings, loaded) as producer:
        progress = await dlq.replay(producer, QUEUE)
    assert progress.replayed == 1
    await _wait_for_spans(exporter, job_id, 5)
    spans = _spans_of(exporter, job_id)
    assert _shape(spans) == [
        (SpanKind.PRODUCER, "publish", None),
        (SpanKind.CONSUMER, 1, "dead_lettered"),
        (SpanKind.PRODUCER, "dead_letter", None),
        (SpanKind.PRODUCER, "replay", None),
        (SpanKind.CONSUMER, 1, "ok"),
    ]
    assert len({span.context.trace_id for span in spans}) == 1
    _, failed, dead_letter, replay, replayed = spans
    assert _parent(replay) == dead_letter.context.span_id
    assert _parent(replayed) == replay.context.span_id
    assert _linked(replayed) == [failed.context.span_id]
    assert replay.name == "publish jobsys.due"
