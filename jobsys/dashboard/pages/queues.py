"""The queues page: per work queue ready, unacked, consumers, rates, the oldest job's age and
the dead-letter depth, refreshed live."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobsys.dashboard.pages import Page
from jobsys.dashboard.pages.common import dashboard_of, is_htmx, readers_only
from jobsys.dashboard.source import Unavailable


@readers_only
async def queues(request: Request) -> Response:
    """Every work queue of the topology with its counts."""
    dashboard = dashboard_of(request)
    try:
        snapshot, error = await dashboard.view.status(), None
    except Unavailable as exc:
        snapshot, error = None, str(exc)
    return dashboard.renderer.page(
        request,
        "queues.html",
        {"snapshot": snapshot, "error": error},
        status=503 if error and not is_htmx(request) else 200,
        partial="_queues.html",
    )


def page() -> Page:
    """The queues page, at ``/``."""
    return Page("Queues", "/", [Route("/", queues, name="queues")])
