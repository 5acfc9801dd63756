"""jobsys's OpenTelemetry metrics, through the metrics API only.

Instruments (attributes ``job_type`` and ``queue``, or ``exchange`` for publishes):

- ``jobsys.jobs.published`` counter (also ``kind``: publish, retry, dead_letter, replay)
- ``jobsys.jobs.started``, ``jobsys.jobs.succeeded``, ``jobsys.jobs.retried``,
  ``jobsys.jobs.dead_lettered`` counters
- ``jobsys.handler.duration`` histogram, seconds (also ``outcome``)
- ``jobsys.queue.latency`` histogram, seconds from publish to the start of an attempt
- ``jobsys.jobs.in_flight`` observable up-down counter

With no SDK configured the instruments are the API's no-ops. Recording never raises: the first
failure is logged and metrics then stay off for the process, so a job is never failed by them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Observation

log = logging.getLogger(__name__)

_INSTRUMENTATION_NAME = "jobsys"

#: Which outcome counter an attempt's outcome feeds.
_OUTCOME_COUNTERS = {
    "ok": "succeeded",
    "retry": "retried",
    "dead_lettered": "dead_lettered",
}


class _Instruments:
    """Every instrument, created once from one meter."""

    def __init__(self, meter: otel_metrics.Meter) -> None:
        self.published = meter.create_counter(
            "jobsys.jobs.published", unit="{job}", description="Jobs published and confirmed"
        )
        self.started = meter.create_counter(
            "jobsys.jobs.started", unit="{job}", description="Attempts started"
        )
        self.succeeded = meter.create_counter(
            "jobsys.jobs.succeeded", unit="{job}", description="Attempts that succeeded"
        )
        self.retried = meter.create_counter(
            "jobsys.jobs.retried", unit="{job}", description="Attempts that failed and retry"
        )
        self.dead_lettered = meter.create_counter(
            "jobsys.jobs.dead_lettered",
            unit="{job}",
            description="Jobs sent to a dead-letter queue",
        )
        self.duration = meter.create_histogram(
            "jobsys.handler.duration", unit="s", description="Time a handler ran, per attempt"
        )
        self.latency = meter.create_histogram(
            "jobsys.queue.latency",
            unit="s",
            description="Time from publish to the start of an attempt (delays included)",
        )
        # Observed at collection time from a plain count, so a job start or end costs one
        # dict update instead of two SDK measurements.
        self.in_flight = meter.create_observable_up_down_counter(
            "jobsys.jobs.in_flight",
            callbacks=[_observe_in_flight],
            unit="{job}",
            description="Attempts running now",
        )


class _State:
    def __init__(self) -> None:
        self.instruments: _Instruments | None = None
        self.disabled = False
        #: Attempts running now, by (job type, queue).
        self.in_flight: dict[tuple[str, str], int] = {}


_state = _State()


def _observe_in_flight(options: CallbackOptions) -> Iterable[Observation]:
    # list() copies in one step under the GIL: the reader thread never sees a dict mid-change.
    for (job_type, queue), count in list(_state.in_flight.items()):
        yield Observation(count, {"job_type": job_type, "queue": queue})


def use_meter_provider(provider: otel_metrics.MeterProvider | None) -> None:
    """Record through ``provider`` instead of the global one (None: back to the global one).

    Also re-enables metrics after they switched themselves off. Meant for tests and for
    programs that keep their own provider.
    """
    meter = (
        provider.get_meter(_INSTRUMENTATION_NAME)
        if provider is not None
        else otel_metrics.get_meter(_INSTRUMENTATION_NAME)
    )
    _state.instruments = _Instruments(meter)
    _state.disabled = False


def _instruments() -> _Instruments:
    instruments = _state.instruments
    if instruments is None:
        # The API's proxy meter: a no-op until an SDK provider is set, then the real thing.
        instruments = _state.instruments = _Instruments(
            otel_metrics.get_meter(_INSTRUMENTATION_NAME)
        )
    return instruments


def _failed(exc: BaseException) -> None:
    if not _state.disabled:
        _state.disabled = True
        log.warning(
            "recording metrics failed; metrics are now off for this process, jobs are not affected",
            exc_info=exc,
        )


def record_published(job_type: str, exchange: str, kind: str = "publish") -> None:
    """Count one confirmed publish of ``job_type`` to ``exchange``."""
    if _state.disabled:
        return
    try:
        _instruments().published.add(1, {"job_type": job_type, "exchange": exchange, "kind": kind})
    except Exception as exc:
        _failed(exc)


def record_started(job_type: str, queue: str, queued_s: float | None) -> None:
    """Count an attempt that starts now, after ``queued_s`` seconds since its publish."""
    if _state.disabled:
        return
    try:
        instruments = _instruments()
        attributes: dict[str, Any] = {"job_type": job_type, "queue": queue}
        instruments.started.add(1, attributes)
        key = (job_type, queue)
        _state.in_flight[key] = _state.in_flight.get(key, 0) + 1
        if queued_s is not None:
            # Clocks of producer and worker differ a little; a negative wait means "none".
            instruments.latency.record(max(0.0, queued_s), attributes)
    except Exception as exc:
        _failed(exc)


def record_finished(job_type: str, queue: str, outcome: str, duration_s: float) -> None:
    """Record the end of an attempt started with ``record_started``: its duration, and the
    counter its ``outcome`` (``ok``, ``retry``, ``dead_lettered``, ``requeued``, ``error``)
    feeds."""
    if _state.disabled:
        return
    try:
        instruments = _instruments()
        attributes: dict[str, Any] = {"job_type": job_type, "queue": queue}
        key = (job_type, queue)
        _state.in_flight[key] = _state.in_flight.get(key, 0) - 1
        instruments.duration.record(
            duration_s, {"job_type": job_type, "queue": queue, "outcome": outcome}
        )
        counter_name = _OUTCOME_COUNTERS.get(outcome)
        if counter_name is not None:
            getattr(instruments, counter_name).add(1, attributes)
    except Exception as exc:
        _failed(exc)


def record_dead_lettered(job_type: str, queue: str) -> None:
    """Count a job dead-lettered without running (undecodable, unknown type, bad payload).

    Jobs dead-lettered at the end of an attempt are counted by ``record_finished``.
    """
    if _state.disabled:
        return
    try:
        _instruments().dead_lettered.add(1, {"job_type": job_type, "queue": queue})
    except Exception as exc:
        _failed(exc)
