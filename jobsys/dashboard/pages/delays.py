"""The delay levels page: how many jobs wait in each level (delayed jobs and retries in their
backoff), refreshed live."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobsys.dashboard.pages import Page
from jobsys.dashboard.pages.common import dashboard_of, is_htmx, readers_only
from jobsys.dashboard.source import Unavailable


@readers_only
async def delays(request: Request) -> Response:
    """Every delay level with its TTL and the jobs waiting in it."""
    dashboard = dashboard_of(request)
    try:
        snapshot, error = await dashboard.view.status(), None
    except Unavailable as exc:
        snapshot, error = None, str(exc)
    return dashboard.renderer.page(
        request,
        "delays.html",
        {"snapshot": snapshot, "error": error},
        status=503 if error and not is_htmx(request) else 200,
        partial="_delays.html",
    )


def page() -> Page:
    """The delay levels page, at ``/delays``."""
    return Page("Delay levels", "/delays", [Route("/delays", delays, name="delays")])
