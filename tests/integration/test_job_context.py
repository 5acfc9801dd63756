"""What a handler's ``JobContext`` says about its job, on the real broker: priority, trace id,
redelivery, attempt and due time."""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from jobsys.app import App, JobContext
from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import load_topology_text
from tests.harness.running import running_worker

TOPOLOGY = """
version: 1
exchanges:
  ctx.jobs: {type: direct}
queues:
  ctx.work: {type: classic, max_priority: 5}
bindings:
  - {exchange: ctx.jobs, queue: ctx.work, routing_key: work}
job_types:
  look: {exchange: ctx.jobs, routing_key: work, timeout: 10s}
"""


async def test_a_handler_sees_the_priority_and_the_trace_of_its_job(
    vhost_settings: Settings,
) -> None:
    loaded = load_topology_text(TOPOLOGY)
    async with BrokerConnection(vhost_settings) as conn:
        await apply_topology(conn, loaded, use_management=False)
    seen: dict[str, JobContext] = {}
    done = asyncio.Event()
    app = App()

    @app.handler("look")
    async def look(payload: dict[str, Any], ctx: JobContext) -> None:
        seen[payload["name"]] = ctx
        if len(seen) == 2:
            done.set()

    tracer = TracerProvider().get_tracer("test")
    async with Producer(vhost_settings, loaded) as producer:
        with tracer.start_as_current_span("request") as span:
            expected_trace = format(span.get_span_context().trace_id, "032x")
            await producer.publish("look", {"name": "traced"}, priority=4)
        await producer.publish("look", {"name": "plain"})
    async with running_worker(app, loaded, vhost_settings):
        await asyncio.wait_for(done.wait(), 15)

    traced, plain = seen["traced"], seen["plain"]
    assert traced.priority == 4 and plain.priority is None
    assert traced.trace_id == expected_trace
    assert plain.trace_id is None or plain.trace_id != expected_trace
    assert traced.attempt == plain.attempt == 1
    assert traced.redelivered is plain.redelivered is False
    assert traced.due_at is None
    assert trace.get_current_span() is trace.INVALID_SPAN
