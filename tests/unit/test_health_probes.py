"""``/livez`` and ``/readyz``: how a worker's state maps to the answers, and the WSGI app that
serves them beside the metrics (no broker, no socket)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from jobsys.observe.health import Health, live_limit_s, worker_health
from jobsys.observe.prometheus import probes_and_metrics

HEALTHY = dict(blocked_s=0.0, heartbeat_s=20, started=True, stopping=False, connected=True)


def test_a_started_connected_worker_is_live_and_ready() -> None:
    assert worker_health(**HEALTHY) == Health(live=True, ready=True, detail="consuming")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"started": False}, "starting"),
        ({"stopping": True}, "draining: taking no new jobs"),
        ({"connected": False}, "reconnecting to the broker"),
        ({"started": False, "connected": False, "stopping": True}, "draining: taking no new jobs"),
    ],
)
def test_starting_draining_and_reconnecting_are_live_but_not_ready(
    change: dict[str, Any], detail: str
) -> None:
    assert worker_health(**{**HEALTHY, **change}) == Health(live=True, ready=False, detail=detail)


def test_a_loop_frozen_past_twice_the_heartbeat_is_neither_live_nor_ready() -> None:
    at_limit = worker_health(**{**HEALTHY, "blocked_s": 40.0})
    past = worker_health(**{**HEALTHY, "blocked_s": 40.5, "stopping": True})
    assert at_limit.live
    assert not past.live and not past.ready
    assert past.detail == "the event loop has not turned for 40s (limit 40s)"


def test_the_live_limit_has_a_floor_for_short_or_no_heartbeats() -> None:
    assert live_limit_s(0) == 10.0
    assert live_limit_s(1) == 10.0
    assert live_limit_s(60) == 120.0


def _call(app: Any, path: str) -> tuple[str, dict[str, str], bytes]:
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got["status"], got["headers"] = status, dict(headers)

    body: Iterable[bytes] = app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, start_response)
    return got["status"], got["headers"], b"".join(body)


def _metrics_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"jobsys_jobs_started_total 1\n"]


@pytest.mark.parametrize(
    ("health", "path", "status", "body"),
    [
        (Health(True, True, "consuming"), "/livez", "200 OK", b"ok: consuming\n"),
        (Health(True, True, "consuming"), "/readyz", "200 OK", b"ok: consuming\n"),
        (Health(True, False, "starting"), "/livez", "200 OK", b"ok: starting\n"),
        (
            Health(True, False, "starting"),
            "/readyz",
            "503 Service Unavailable",
            b"not ready: starting\n",
        ),
        (
            Health(False, False, "frozen"),
            "/livez",
            "503 Service Unavailable",
            b"not live: frozen\n",
        ),
    ],
)
def test_the_probes_answer_200_or_503_with_the_reason(
    health: Health, path: str, status: str, body: bytes
) -> None:
    got_status, headers, got_body = _call(probes_and_metrics(_metrics_app, lambda: health), path)
    assert (got_status, got_body) == (status, body)
    assert headers["Content-Length"] == str(len(body))


@pytest.mark.parametrize("path", ["/metrics", "/", "/livez/", "/LIVEZ", "/readyz?x", "/%0a"])
def test_every_other_path_is_the_metrics(path: str) -> None:
    def unhealthy() -> Health:
        raise AssertionError("the health source was asked for a metrics path")

    status, _, body = _call(probes_and_metrics(_metrics_app, unhealthy), path)
    assert (status, body) == ("200 OK", b"jobsys_jobs_started_total 1\n")


def test_a_health_source_that_raises_is_a_503_saying_it_cannot_tell() -> None:
    def broken() -> Health:
        raise RuntimeError("secret detail\x1b[2J")

    for path in ("/livez", "/readyz"):
        status, _, body = _call(probes_and_metrics(_metrics_app, broken), path)
        assert status == "503 Service Unavailable"
        assert body.endswith(b": health unknown: RuntimeError\n")
        assert b"secret" not in body
