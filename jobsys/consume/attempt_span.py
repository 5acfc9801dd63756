"""One attempt of one delivery, from start to settlement, inside its consume span: the step a
worker's runner takes for each job, and the test kit (``jobsys.testing``) for each delivery it
hands out, so that both trace, record and settle a job the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from jobsys.consume.attempt import AttemptRunner, Delivery
from jobsys.consume.history import HistoryWriter
from jobsys.consume.outcome import Outcome
from jobsys.observe import tracing

#: Settles ``delivery`` as ``outcome`` from ``queue``; returns the outcome applied.
Settle = Callable[[Delivery, Outcome, str], Awaitable[Outcome]]


async def run_and_settle(
    delivery: Delivery,
    queue: str,
    runner: AttemptRunner,
    settle: Settle,
    history: HistoryWriter | None = None,
) -> Outcome:
    """Run ``delivery`` (identified) from ``queue`` and settle it; returns the outcome applied.
    The job's history events, when ``history`` is given, are recorded without waiting."""
    identity = delivery.identity
    message = delivery.message
    deliver = delivery.deliver
    # Settled inside the span: a retry or dead-letter publish is a child of the attempt.
    with tracing.consume_span(
        message.header.properties.headers,
        job_type=identity.job_type or "unknown",
        job_id=identity.job_id or "unknown",
        queue=queue,
        attempt=identity.attempt,
        message_id=message.header.properties.message_id,
        published_at_ms=identity.published_at_ms,
        exchange=deliver.exchange or "",
        routing_key=deliver.routing_key or "",
    ) as span:
        if history is not None:
            history.started(delivery, queue)
            began = asyncio.get_running_loop().time()
        outcome = await runner.run(delivery, queue)
        settled = await settle(delivery, outcome, queue)
        span.set_outcome(settled.kind, settled.error)
        if history is not None:
            history.settled(delivery, queue, settled, asyncio.get_running_loop().time() - began)
    return settled
