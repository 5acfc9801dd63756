"""Configure the OpenTelemetry SDK from the standard ``OTEL_*`` variables, for jobsys's commands.

Only the command line imports this module (a library leaves SDK setup to its application):
``jobsys worker`` and ``jobsys publish`` call ``configure_from_env`` and shut the result down
when they stop.

- ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: comma-separated ``otlp``, ``console``
  or ``none``. When unset, ``otlp`` is used if an OTLP endpoint is set
  (``OTEL_EXPORTER_OTLP_ENDPOINT`` or the per-signal one) and nothing is exported otherwise, so
  a plain ``jobsys worker`` pays nothing for telemetry.
- ``otlp`` means OTLP over HTTP/protobuf and needs the optional extra ``jobsys[otlp]``; without
  it a clear line is logged and nothing is exported. The exporter reads its own
  ``OTEL_EXPORTER_OTLP_*`` settings; the SDK reads ``OTEL_SERVICE_NAME``,
  ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*`` and
  ``OTEL_METRIC_EXPORT_INTERVAL``.
- ``OTEL_SDK_DISABLED=true`` turns everything off.

Telemetry never fails a job: every exporter is wrapped so that an export error is logged once
and swallowed, and spans are exported from a background thread (``BatchSpanProcessor``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

log = logging.getLogger(__name__)

OTLP_HINT = "install the optional extra: pip install 'jobsys[otlp]'"


class _Once:
    """Logs the first failure of one exporter and stays quiet about the rest."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.logged = False

    def report(self, detail: str, exc: BaseException | None = None) -> None:
        if not self.logged:
            self.logged = True
            log.warning(
                "%s failed (%s); further failures are not logged and jobs are not affected",
                self.what,
                detail,
                exc_info=exc,
            )


class LoggedOnceSpanExporter(SpanExporter):
    """Wraps a span exporter: an exception or a failed export is logged once, never raised."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self._once = _Once(f"exporting spans with {type(inner).__name__}")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export ``spans`` through the wrapped exporter, swallowing its errors."""
        try:
            result = self.inner.export(spans)
        except Exception as exc:
            self._once.report(f"{type(exc).__name__}: {exc}", exc)
            return SpanExportResult.FAILURE
        if result is SpanExportResult.FAILURE:
            self._once.report("the exporter reported a failure")
        return result

    def shutdown(self) -> None:
        """Shut the wrapped exporter down, swallowing its errors."""
        try:
            self.inner.shutdown()
        except Exception as exc:
            self._once.report(f"shutdown: {type(exc).__name__}: {exc}", exc)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the wrapped exporter, swallowing its errors."""
        try:
            return self.inner.force_flush(timeout_millis)
        except Exception as exc:
            self._once.report(f"flush: {type(exc).__name__}: {exc}", exc)
            return False


class LoggedOnceMetricExporter(MetricExporter):
    """Wraps a metric exporter: an exception or a failed export is logged once, never raised."""

    def __init__(self, inner: MetricExporter) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self._once = _Once(f"exporting metrics with {type(inner).__name__}")

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Export through the wrapped exporter, swallowing its errors."""
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:
            self._once.report(f"{type(exc).__name__}: {exc}", exc)
            return MetricExportResult.FAILURE
        if result is MetricExportResult.FAILURE:
            self._once.report("the exporter reported a failure")
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Flush the wrapped exporter, swallowing its errors."""
        try:
            return self.inner.force_flush(timeout_millis)
        except Exception as exc:
            self._once.report(f"flush: {type(exc).__name__}: {exc}", exc)
            return False

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Shut the wrapped exporter down, swallowing its errors."""
        try:
            self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:
            self._once.report(f"shutdown: {type(exc).__name__}: {exc}", exc)


@dataclass
class Telemetry:
    """The providers ``configure_from_env`` installed (None where a signal is off)."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None

    def shutdown(self) -> None:
        """Flush what is buffered and stop exporting; never raises."""
        for provider in (self.tracer_provider, self.meter_provider):
            if provider is None:
                continue
            try:
                provider.shutdown()
            except Exception:
                log.warning("shutting telemetry down failed", exc_info=True)

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def configure_from_env(
    service_name: str, environ: Mapping[str, str] | None = None, *, set_global: bool = True
) -> Telemetry:
    """Install SDK providers as the ``OTEL_*`` variables ask; ``service_name`` is used when
    ``OTEL_SERVICE_NAME`` does not name the service. Returns what was installed."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Telemetry()
    resource = _resource(service_name)
    telemetry = Telemetry()
    span_exporters = [
        LoggedOnceSpanExporter(exporter) for exporter in _span_exporters(_wanted(env, "TRACES"))
    ]
    if span_exporters:
        tracer_provider = TracerProvider(resource=resource)
        for exporter in span_exporters:
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        telemetry.tracer_provider = tracer_provider
        if set_global:
            trace.set_tracer_provider(tracer_provider)
    metric_exporters = [
        LoggedOnceMetricExporter(exporter)
        for exporter in _metric_exporters(_wanted(env, "METRICS"))
    ]
    if metric_exporters:
        meter_provider = MeterProvider(
            resource=resource,
            metric_readers=[PeriodicExportingMetricReader(e) for e in metric_exporters],
        )
        telemetry.meter_provider = meter_provider
        if set_global:
            otel_metrics.set_meter_provider(meter_provider)
    return telemetry


def _resource(service_name: str) -> Resource:
    detected = Resource.create()
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        return detected.merge(Resource({"service.name": service_name}))
    return detected


def _wanted(env: Mapping[str, str], signal: str) -> list[str]:
    """Exporter names for ``signal`` (TRACES or METRICS), per the rules in the module doc."""
    raw = env.get(f"OTEL_{signal}_EXPORTER")
    if raw is None:
        has_endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"
        )
        return ["otlp"] if has_endpoint else []
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    return [name for name in names if name != "none"]


def _span_exporters(names: list[str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "console":
            # stderr: a command's stdout is its result (job ids, JSON), for scripts.
            exporters.append(ConsoleSpanExporter(out=sys.stderr))
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found, unused-ignore]
                    OTLPSpanExporter,
                )
            except ImportError:
                log.warning("OTEL_TRACES_EXPORTER=otlp: traces are not exported; %s", OTLP_HINT)
                continue
            exporters.append(OTLPSpanExporter())
        else:
            log.warning("OTEL_TRACES_EXPORTER: unknown exporter %r ignored (otlp, console)", name)
    return exporters


def _metric_exporters(names: list[str]) -> list[MetricExporter]:
    exporters: list[MetricExporter] = []
    for name in names:
        if name == "console":
            exporters.append(ConsoleMetricExporter(out=sys.stderr))
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[import-not-found, unused-ignore]
                    OTLPMetricExporter,
                )
            except ImportError:
                log.warning("OTEL_METRICS_EXPORTER=otlp: metrics are not exported; %s", OTLP_HINT)
                continue
            exporters.append(OTLPMetricExporter())
        else:
            log.warning("OTEL_METRICS_EXPORTER: unknown exporter %r ignored (otlp, console)", name)
    return exporters
