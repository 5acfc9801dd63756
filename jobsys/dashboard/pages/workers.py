"""The workers page: the connections to the vhost and the consumer pools each holds, from the
management API (the page says so when the API is off: AMQP cannot list other clients)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobsys.dashboard.pages import Page
from jobsys.dashboard.pages.common import dashboard_of, is_htmx, readers_only
from jobsys.dashboard.source import Unavailable


@readers_only
async def workers(request: Request) -> Response:
    """Connections, workers first, each with its pools."""
    dashboard = dashboard_of(request)
    try:
        found, error = await dashboard.view.connections(), None
    except Unavailable as exc:
        found, error = None, str(exc)
    return dashboard.renderer.page(
        request,
        "workers.html",
        {"found": found, "error": error, "queues": set(dashboard.topology.queues)},
        status=503 if error and not is_htmx(request) else 200,
        partial="_workers.html",
    )


def page() -> Page:
    """The workers page, at ``/workers``."""
    return Page("Workers", "/workers", [Route("/workers", workers, name="workers")])
