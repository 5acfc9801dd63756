"""The worker's Prometheus exposition, the Grafana dashboard and scrape config shipped in docs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from jobsys.observe import metrics
from jobsys.observe.prometheus import job_metrics_registry

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def fresh_metrics() -> Iterator[None]:
    metrics.use_meter_provider(None)
    yield
    metrics.set_histogram_sink(None)
    metrics.use_meter_provider(None)


def test_counters_and_histograms_reach_the_exposition(fresh_metrics: None) -> None:
    registry = job_metrics_registry()
    metrics.record_published("send", "jobs")
    for outcome in ("ok", "ok", "retry", "dead_lettered"):
        metrics.record_started("send", "work", 0.02)
        metrics.record_finished("send", "work", outcome, 0.3)
    metrics.record_started("send", "work", None)  # still running, no publish time

    text = generate_latest(registry).decode()

    labels = 'job_type="send",queue="work"'
    assert f"jobsys_jobs_started_total{{{labels}}} 5.0" in text
    assert f"jobsys_jobs_succeeded_total{{{labels}}} 2.0" in text
    assert f"jobsys_jobs_retried_total{{{labels}}} 1.0" in text
    assert f"jobsys_jobs_dead_lettered_total{{{labels}}} 1.0" in text
    assert f"jobsys_jobs_in_flight{{{labels}}} 1.0" in text
    assert 'jobsys_jobs_published_total{exchange="jobs",job_type="send",kind="publish"} 1.0' in (
        text
    )
    assert (
        'jobsys_queue_latency_seconds_bucket{job_type="send",le="0.025",queue="work"} 4.0' in text
    )
    assert (
        'jobsys_handler_duration_seconds_count{job_type="send",outcome="ok",queue="work"} 2.0'
        in text
    )


def test_a_sink_that_raises_turns_metrics_off_and_never_fails_the_job(
    fresh_metrics: None,
) -> None:
    class Broken:
        def observe_latency(self, *args: object) -> None:
            raise RuntimeError("sink broke")

        def observe_duration(self, *args: object) -> None:
            raise RuntimeError("sink broke")

    metrics.set_histogram_sink(Broken())
    metrics.record_started("send", "work", 0.1)  # must not raise
    metrics.record_finished("send", "work", "ok", 0.1)


def test_the_grafana_dashboard_is_valid_json_and_queries_metrics_that_exist() -> None:
    board = json.loads((DOCS / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    names = set(re.findall(r"\b(jobsys_[a-z_]+)", " ".join(exprs)))

    known = {
        "jobsys_jobs_published_total",
        "jobsys_jobs_started_total",
        "jobsys_jobs_succeeded_total",
        "jobsys_jobs_retried_total",
        "jobsys_jobs_dead_lettered_total",
        "jobsys_jobs_in_flight",
        "jobsys_handler_duration_seconds_bucket",
        "jobsys_queue_latency_seconds_bucket",
        "jobsys_queue_ready",
        "jobsys_queue_unacked",
        "jobsys_queue_consumers",
        "jobsys_queue_oldest_job_age_seconds",
        "jobsys_dead_letter_jobs",
        "jobsys_delay_level_jobs",
        "jobsys_broker_up",
    }
    assert board["title"] and exprs
    assert names and names <= known, names - known


def test_the_scrape_config_in_the_docs_names_both_kinds_of_target() -> None:
    text = (DOCS / "observability.md").read_text(encoding="utf-8")
    assert "scrape_configs:" in text
    assert "job_name: jobsys-workers" in text and "job_name: jobsys-dashboard" in text
