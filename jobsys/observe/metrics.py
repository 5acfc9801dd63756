"""jobsys's OpenTelemetry metrics, through the metrics API only.

Instruments (attributes ``job_type`` and ``queue``, or ``exchange`` for publishes):

- ``jobsys.jobs.published`` counter (also ``kind``: publish, retry, dead_letter, replay)
- ``jobsys.jobs.started``, ``jobsys.jobs.succeeded``, ``jobsys.jobs.retried``,
  ``jobsys.jobs.dead_lettered`` counters
- ``jobsys.handler.duration`` histogram, seconds (also ``outcome``)
- ``jobsys.queue.latency`` histogram, seconds from publish to the start of an attempt
- ``jobsys.jobs.in_flight`` up-down counter
- ``jobsys.jobs.held_back`` counter (``job_type``, ``reason``: ``breaker`` or ``max_running``):
  jobs sent back to wait unrun by a limit of their type
- ``jobsys.breaker.open`` up-down counter (``job_type``): 1 while this process's circuit breaker
  of the type is open or half-open, else 0

The counters and the in-flight gauge are plain per-process counts, reported to OpenTelemetry as
observable (asynchronous) instruments when a reader collects: a job costs a few dict updates
instead of an SDK measurement each, which matters on a worker's hot path. Only the two
histograms are measured per job. With no SDK configured the callbacks never run.

``set_histogram_sink`` sends the two histograms' measurements to a second place too, and
``counts`` reads the counters; ``jobsys.observe.prometheus`` serves both to Prometheus.

Recording never raises: the first failure is logged and metrics then stay off for the process,
so a job is never failed by them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Observation

log = logging.getLogger(__name__)

_INSTRUMENTATION_NAME = "jobsys"

#: Which counter an attempt's outcome feeds.
_OUTCOME_COUNTERS = {"ok": "succeeded", "retry": "retried", "dead_lettered": "dead_lettered"}
_PER_QUEUE = ("job_type", "queue")
_PER_EXCHANGE = ("job_type", "exchange", "kind")
#: Cached attribute dicts per histogram before the cache starts over (a guard, not a limit).
_ATTRIBUTE_SETS = 1024


class _Counts:
    """Cumulative counts since the provider was installed, by attribute values."""

    def __init__(self) -> None:
        self.published: dict[tuple[str, ...], int] = {}
        self.started: dict[tuple[str, ...], int] = {}
        self.succeeded: dict[tuple[str, ...], int] = {}
        self.retried: dict[tuple[str, ...], int] = {}
        self.dead_lettered: dict[tuple[str, ...], int] = {}
        self.in_flight: dict[tuple[str, ...], int] = {}
        self.held_back: dict[tuple[str, ...], int] = {}
        self.breaker_open: dict[tuple[str, ...], int] = {}


def _observer(
    counts: dict[tuple[str, ...], int], names: tuple[str, ...]
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        # list() copies in one step under the GIL: the reader's thread never sees a dict that
        # is changing size.
        return [
            Observation(value, dict(zip(names, key, strict=True)))
            for key, value in list(counts.items())
        ]

    return observe


class _Instruments:
    """Every instrument, created once from one meter, and the counts they report."""

    def __init__(self, meter: otel_metrics.Meter) -> None:
        self.counts = counts = _Counts()
        for name, store, names, description in (
            ("published", counts.published, _PER_EXCHANGE, "Jobs published and confirmed"),
            ("started", counts.started, _PER_QUEUE, "Attempts started"),
            ("succeeded", counts.succeeded, _PER_QUEUE, "Attempts that succeeded"),
            ("retried", counts.retried, _PER_QUEUE, "Attempts that failed and will retry"),
            ("dead_lettered", counts.dead_lettered, _PER_QUEUE, "Jobs dead-lettered"),
        ):
            meter.create_observable_counter(
                f"jobsys.jobs.{name}",
                callbacks=[_observer(store, names)],
                unit="{job}",
                description=description,
            )
        meter.create_observable_up_down_counter(
            "jobsys.jobs.in_flight",
            callbacks=[_observer(counts.in_flight, _PER_QUEUE)],
            unit="{job}",
            description="Attempts running now",
        )
        meter.create_observable_counter(
            "jobsys.jobs.held_back",
            callbacks=[_observer(counts.held_back, ("job_type", "reason"))],
            unit="{job}",
            description="Jobs sent back to wait unrun by a limit of their type",
        )
        meter.create_observable_up_down_counter(
            "jobsys.breaker.open",
            callbacks=[_observer(counts.breaker_open, ("job_type",))],
            unit="{breaker}",
            description="1 while this process's circuit breaker of the job type is not closed",
        )
        self.duration = meter.create_histogram(
            "jobsys.handler.duration", unit="s", description="Time a handler ran, per attempt"
        )
        self.latency = meter.create_histogram(
            "jobsys.queue.latency",
            unit="s",
            description="Time from publish to the start of an attempt (delays included)",
        )
        # Histogram attributes built once per key: the SDK copies them, never changes them.
        self.latency_attributes: dict[tuple[str, str], dict[str, str]] = {}
        self.duration_attributes: dict[tuple[str, str, str], dict[str, str]] = {}

    def latency_attributes_of(self, job_type: str, queue: str) -> dict[str, str]:
        """The latency histogram's attributes for ``job_type`` on ``queue``."""
        key = (job_type, queue)
        attributes = self.latency_attributes.get(key)
        if attributes is None:
            if len(self.latency_attributes) >= _ATTRIBUTE_SETS:
                self.latency_attributes.clear()
            attributes = self.latency_attributes[key] = {"job_type": job_type, "queue": queue}
        return attributes

    def duration_attributes_of(self, job_type: str, queue: str, outcome: str) -> dict[str, str]:
        """The duration histogram's attributes for one outcome of ``job_type`` on ``queue``."""
        key = (job_type, queue, outcome)
        attributes = self.duration_attributes.get(key)
        if attributes is None:
            if len(self.duration_attributes) >= _ATTRIBUTE_SETS:
                self.duration_attributes.clear()
            attributes = self.duration_attributes[key] = {
                "job_type": job_type,
                "queue": queue,
                "outcome": outcome,
            }
        return attributes


class HistogramSink(Protocol):
    """A second place the two per-job histograms go (the Prometheus exporter): called on the
    job's thread, so it must be cheap and must not block."""

    def observe_latency(self, job_type: str, queue: str, seconds: float) -> None:
        """One attempt started ``seconds`` after its publish."""

    def observe_duration(self, job_type: str, queue: str, outcome: str, seconds: float) -> None:
        """One attempt's handler ran ``seconds`` and ended with ``outcome``."""


class _State:
    def __init__(self) -> None:
        self.instruments: _Instruments | None = None
        self.disabled = False
        self.sink: HistogramSink | None = None


_state = _State()


def use_meter_provider(provider: otel_metrics.MeterProvider | None) -> None:
    """Record through ``provider`` instead of the global one (None: back to the global one);
    counting starts afresh.

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


def set_histogram_sink(sink: HistogramSink | None) -> None:
    """Send the per-job histogram measurements to ``sink`` too (None: stop)."""
    _state.sink = sink


#: The counters ``counts`` reports, with the names of their attributes.
COUNTERS: dict[str, tuple[str, ...]] = {
    "published": _PER_EXCHANGE,
    "started": _PER_QUEUE,
    "succeeded": _PER_QUEUE,
    "retried": _PER_QUEUE,
    "dead_lettered": _PER_QUEUE,
    "in_flight": _PER_QUEUE,
}


def counts() -> dict[str, list[tuple[dict[str, str], int]]]:
    """Every counter (and the in-flight gauge) now: per name in ``COUNTERS``, each attribute
    set with its value. Safe to call from another thread (each store is copied in one step)."""
    stores = _instruments().counts
    return {
        name: [
            (dict(zip(attributes, key, strict=True)), value)
            for key, value in list(getattr(stores, name).items())
        ]
        for name, attributes in COUNTERS.items()
    }


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


def _add(store: dict[tuple[str, ...], int], key: tuple[str, ...], amount: int = 1) -> None:
    store[key] = store.get(key, 0) + amount


def record_held_back(job_type: str, reason: str) -> None:
    """Count a job of ``job_type`` sent back to wait unrun (``reason``: ``breaker`` or
    ``max_running``)."""
    if _state.disabled:
        return
    try:
        _add(_instruments().counts.held_back, (job_type, reason))
    except Exception as exc:
        _failed(exc)


def record_breaker(job_type: str, is_open: bool) -> None:
    """Note whether this process's circuit breaker of ``job_type`` is open (or half-open)."""
    if _state.disabled:
        return
    try:
        _instruments().counts.breaker_open[(job_type,)] = int(is_open)
    except Exception as exc:
        _failed(exc)


def record_published(job_type: str, exchange: str, kind: str = "publish") -> None:
    """Count one confirmed publish of ``job_type`` to ``exchange``."""
    if _state.disabled:
        return
    try:
        _add(_instruments().counts.published, (job_type, exchange, kind))
    except Exception as exc:
        _failed(exc)


def record_started(job_type: str, queue: str, queued_s: float | None) -> None:
    """Count an attempt that starts now, after ``queued_s`` seconds since its publish."""
    if _state.disabled:
        return
    try:
        instruments = _instruments()
        key = (job_type, queue)
        _add(instruments.counts.started, key)
        _add(instruments.counts.in_flight, key)
        if queued_s is not None:
            # Clocks of producer and worker differ a little; a negative wait means "none".
            waited = max(0.0, queued_s)
            instruments.latency.record(waited, instruments.latency_attributes_of(job_type, queue))
            if _state.sink is not None:
                _state.sink.observe_latency(job_type, queue, waited)
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
        key = (job_type, queue)
        _add(instruments.counts.in_flight, key, -1)
        instruments.duration.record(
            duration_s, instruments.duration_attributes_of(job_type, queue, outcome)
        )
        if _state.sink is not None:
            _state.sink.observe_duration(job_type, queue, outcome, duration_s)
        counter = _OUTCOME_COUNTERS.get(outcome)
        if counter is not None:
            _add(getattr(instruments.counts, counter), key)
    except Exception as exc:
        _failed(exc)
