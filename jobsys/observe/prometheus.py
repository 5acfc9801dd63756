"""The worker's job metrics in Prometheus's format: ``jobsys worker --metrics-port N``
(needs ``prometheus-client``: ``pip install 'jobsys[prometheus]'``).

Served on its own small HTTP listener (prometheus-client's, in a daemon thread), one per worker
process. Under ``--processes P`` process slot i listens on port N+i: each process is its own
scrape target (Prometheus sums them), and a replacement process takes its slot's port.

Why prometheus-client and not the OpenTelemetry Prometheus exporter: the counters and the
in-flight gauge are read from ``jobsys.observe.metrics.counts`` when Prometheus scrapes, so they
cost a job nothing more than today; only the two histograms are observed per job, in
prometheus-client's lock-light histograms with buckets in seconds. The OpenTelemetry exporter
would run every measurement through the SDK's aggregation (attribute hashing, exemplars, locks)
and needs views to get second-sized buckets; bench/README.md has the per-job figures of both.

Metrics (labels ``job_type``, ``queue``; ``exchange`` and ``kind`` for publishes):
``jobsys_jobs_published_total``, ``jobsys_jobs_started_total``, ``jobsys_jobs_succeeded_total``,
``jobsys_jobs_retried_total``, ``jobsys_jobs_dead_lettered_total``, ``jobsys_jobs_in_flight``,
``jobsys_handler_duration_seconds`` (also ``outcome``), ``jobsys_queue_latency_seconds``
(publish to the start of an attempt, delays included).
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from jobsys.errors import ConfigError
from jobsys.observe import metrics
from jobsys.observe.health import HealthSource

#: Seconds from publish to start: from a few milliseconds to an hour's backoff.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Seconds a handler runs: from a millisecond to a long report.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

_HELP = {
    "published": "Jobs published and confirmed (kind: publish, retry, dead_letter, replay)",
    "started": "Attempts started",
    "succeeded": "Attempts that succeeded",
    "retried": "Attempts that failed and will retry",
    "dead_lettered": "Jobs dead-lettered",
}


class CountsCollector:
    """Reads jobsys's counters when Prometheus scrapes."""

    def collect(self) -> Iterator[Metric]:
        """One family per counter, and the in-flight gauge."""
        now = metrics.counts()
        for name, help_text in _HELP.items():
            labels = list(metrics.COUNTERS[name])
            family = CounterMetricFamily(f"jobsys_jobs_{name}", help_text, labels=labels)
            for attributes, value in now[name]:
                family.add_metric([attributes[label] for label in labels], value)
            yield family
        labels = list(metrics.COUNTERS["in_flight"])
        gauge = GaugeMetricFamily("jobsys_jobs_in_flight", "Attempts running now", labels=labels)
        for attributes, value in now["in_flight"]:
            gauge.add_metric([attributes[label] for label in labels], value)
        yield gauge


class HistogramsSink:
    """The two per-job histograms, observed through label children cached per key."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "jobsys_queue_latency_seconds",
            "Time from publish to the start of an attempt (delays included)",
            ["job_type", "queue"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.duration = Histogram(
            "jobsys_handler_duration_seconds",
            "Time a handler ran, per attempt",
            ["job_type", "queue", "outcome"],
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self._latency: dict[tuple[str, str], Any] = {}
        self._duration: dict[tuple[str, str, str], Any] = {}

    def observe_latency(self, job_type: str, queue: str, seconds: float) -> None:
        """Observe one attempt's wait."""
        key = (job_type, queue)
        child = self._latency.get(key)
        if child is None:
            child = self._latency[key] = self.latency.labels(job_type, queue)
        child.observe(seconds)

    def observe_duration(self, job_type: str, queue: str, outcome: str, seconds: float) -> None:
        """Observe one attempt's run time."""
        key = (job_type, queue, outcome)
        child = self._duration.get(key)
        if child is None:
            child = self._duration[key] = self.duration.labels(job_type, queue, outcome)
        child.observe(seconds)


@dataclass
class MetricsServer:
    """A running metrics listener; ``close`` stops it and detaches the histograms."""

    host: str
    port: int
    _server: Any

    def close(self) -> None:
        """Stop serving."""
        metrics.set_histogram_sink(None)
        self._server.shutdown()
        self._server.server_close()


def job_metrics_registry() -> CollectorRegistry:
    """A registry holding jobsys's job metrics (and sending the histograms into it)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CountsCollector())
    metrics.set_histogram_sink(HistogramsSink(registry))
    return registry


#: The probe paths, and what each reports (``Health.live``, ``Health.ready``).
LIVE_PATH, READY_PATH = "/livez", "/readyz"


def probes_and_metrics(metrics_app: WSGIApplication, health: HealthSource) -> WSGIApplication:
    """``/livez`` and ``/readyz`` (200 or 503, with one line saying why), every other path the
    metrics as prometheus-client serves them."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in (LIVE_PATH, READY_PATH):
            return metrics_app(environ, start_response)
        try:
            state = health()
            ok, detail = (state.live if path == LIVE_PATH else state.ready), state.detail
        except Exception as exc:  # a probe must answer, and say why it cannot tell
            ok, detail = False, f"health unknown: {type(exc).__name__}"
        body = f"{'ok' if ok else 'not ' + path[1:-1]}: {detail}\n".encode()
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the process open


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes every few seconds are not news."""


def serve_metrics(host: str, port: int, health: HealthSource | None = None) -> MetricsServer:
    """Serve the job metrics at ``http://host:port/metrics`` (and, with ``health``, the probes
    ``/livez`` and ``/readyz``) from a daemon thread; ``ConfigError`` when the address cannot be
    bound (taken, or not an address of this machine)."""
    registry = job_metrics_registry()
    app: WSGIApplication = make_wsgi_app(registry)
    if health is not None:
        app = probes_and_metrics(app, health)
    try:
        family, address = _best_family(host, port)
        server_class = type("_BoundServer", (_Server,), {"address_family": family})
        server: WSGIServer = make_server(
            address, port, app, server_class, handler_class=_QuietHandler
        )
    except OSError as exc:
        metrics.set_histogram_sink(None)
        reason = "the port is taken" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {reason}") from None
    threading.Thread(target=server.serve_forever, name="jobsys-metrics", daemon=True).start()
    return MetricsServer(host, port, server)


def _best_family(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    # As prometheus-client does: an IPv6 address needs an AF_INET6 socket.
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = info[0]
    return family, str(sockaddr[0])
