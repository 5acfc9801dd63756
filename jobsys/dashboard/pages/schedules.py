"""The schedules page: each schedule's timing, next fire and last fire, and which scheduler
leads, refreshed live. Reading it peeks at the scheduler's status record and never disturbs the
leader (``jobsys.schedule.status``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobsys.dashboard.pages import Page
from jobsys.dashboard.pages.common import dashboard_of, is_htmx, readers_only
from jobsys.dashboard.source import Unavailable


@readers_only
async def schedules(request: Request) -> Response:
    """Every schedule of the topology with its next and last fire."""
    dashboard = dashboard_of(request)
    try:
        snapshot, error = await dashboard.view.schedules(), None
    except Unavailable as exc:
        snapshot, error = None, str(exc)
    return dashboard.renderer.page(
        request,
        "schedules.html",
        {"snapshot": snapshot, "error": error},
        status=503 if error and not is_htmx(request) else 200,
        partial="_schedules.html",
    )


def page() -> Page:
    """The schedules page, at ``/schedules``."""
    return Page("Schedules", "/schedules", [Route("/schedules", schedules, name="schedules")])
