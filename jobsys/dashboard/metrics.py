"""``/metrics`` of the dashboard: queue depths as Prometheus gauges, from the same paced read
the pages use (a scrape never adds a broker read within the refresh interval).

Gauges (label ``queue`` is a work queue of the topology, ``level`` a delay level's queue):
``jobsys_queue_ready``, ``jobsys_queue_unacked`` and ``jobsys_queue_rate_*`` (management API
only), ``jobsys_queue_consumers``, ``jobsys_queue_oldest_job_age_seconds`` (management API,
classic queues with ready jobs), ``jobsys_dead_letter_jobs``, ``jobsys_delay_level_jobs``,
and ``jobsys_broker_up`` (0 when the last read failed; the other gauges are then left out).
With a token set, a scrape needs ``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from jobsys.dashboard.pages.common import dashboard_of
from jobsys.dashboard.source import StatusSnapshot, Unavailable


def families(snapshot: StatusSnapshot | None, now: float | None = None) -> Iterator[Metric]:
    """The gauges for ``snapshot`` (None: the broker could not be read)."""
    up = GaugeMetricFamily("jobsys_broker_up", "1 when the dashboard's last read succeeded")
    up.add_metric([], 0 if snapshot is None else 1)
    yield up
    if snapshot is None:
        return
    report = snapshot.report
    now = time.time() if now is None else now
    gauges = {
        name: GaugeMetricFamily(f"jobsys_{name}", help_text, labels=["queue"])
        for name, help_text in (
            ("queue_ready", "Jobs ready in the work queue"),
            ("queue_unacked", "Jobs delivered and not yet acked (management API only)"),
            ("queue_consumers", "Consumers on the work queue"),
            ("queue_oldest_job_age_seconds", "Age of the job at the head of the queue"),
            ("queue_rate_published", "Jobs published per second (management API)"),
            ("queue_rate_acked", "Jobs acked per second (management API)"),
            ("dead_letter_jobs", "Jobs in the work queue's dead-letter queue"),
        )
    }
    for queue in report.queues:
        counts, labels = queue.counts, [queue.name]
        values = {
            "queue_ready": counts.ready,
            "queue_unacked": counts.unacked,
            "queue_consumers": counts.consumers,
            "queue_oldest_job_age_seconds": (
                max(0.0, now - counts.head_published_s)
                if counts.head_published_s is not None
                else None
            ),
            "queue_rate_published": counts.rates.published if counts.rates else None,
            "queue_rate_acked": counts.rates.acked if counts.rates else None,
            "dead_letter_jobs": queue.dead_letter.total,
        }
        for name, value in values.items():
            if value is not None:
                gauges[name].add_metric(labels, value)
    yield from gauges.values()
    levels = GaugeMetricFamily(
        "jobsys_delay_level_jobs", "Jobs waiting in a delay level", labels=["level"]
    )
    for level in [*report.delay_levels, *report.legacy_levels]:
        if level.waiting is not None:
            levels.add_metric([level.name], level.waiting)
    yield levels


class _Once:
    def __init__(self, snapshot: StatusSnapshot | None) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return families(self.snapshot)


def exposition(snapshot: StatusSnapshot | None) -> bytes:
    """The Prometheus text format for ``snapshot``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Once(snapshot))
    return generate_latest(registry)


async def metrics_endpoint(request: Request) -> Response:
    """Serve the gauges (Bearer token needed when the dashboard has one)."""
    dashboard = dashboard_of(request)
    if dashboard.guard.session_of(request) is None:
        return PlainTextResponse(
            "the dashboard's token is needed: Authorization: Bearer TOKEN", 401
        )
    try:
        snapshot: StatusSnapshot | None = await dashboard.view.status()
    except Unavailable:
        snapshot = None
    return Response(exposition(snapshot), media_type=CONTENT_TYPE_LATEST)
