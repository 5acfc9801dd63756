"""The dashboard as an ASGI app: ``create_app`` puts the pages, the login, ``/metrics`` and the
static files together behind the security headers (and, on loopback, the Host check)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from jobsys.dashboard.config import DashboardConfig
from jobsys.dashboard.metrics import metrics_endpoint
from jobsys.dashboard.pages import Page, default_pages
from jobsys.dashboard.pages.common import (
    MAX_FORM_BYTES,
    Dashboard,
    base_context,
    dashboard_of,
)
from jobsys.dashboard.render import Renderer
from jobsys.dashboard.security import (
    SESSION_COOKIE,
    SESSION_TTL_S,
    ASGIApp,
    CsrfTokens,
    Guard,
    Receive,
    Scope,
    Send,
    loopback_hosts,
    security_headers,
)
from jobsys.dashboard.source import BrokerView
from jobsys.settings import Settings
from jobsys.topology.model import Topology

STATIC = Path(__file__).parent / "static"


def _next_path(raw: str | None) -> str:
    # Only a path on this server: an absolute or scheme-relative URL would be an open redirect.
    if raw and raw.startswith("/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return "/"


async def login_page(request: Request) -> Response:
    """The token form."""
    dashboard = dashboard_of(request)
    if dashboard.guard.open:
        return RedirectResponse("/", status_code=303)
    return dashboard.renderer.page(
        request,
        "login.html",
        {"next": _next_path(request.query_params.get("next")), "error": None},
    )


async def login(request: Request) -> Response:
    """Check the token; a right one starts a session."""
    dashboard = dashboard_of(request)
    if dashboard.guard.open:
        return RedirectResponse("/", status_code=303)
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_FORM_BYTES:
        return PlainTextResponse("the form is missing or too large", 413)
    form = await request.form(max_files=0, max_fields=4, max_part_size=MAX_FORM_BYTES)
    token, target = form.get("token"), form.get("next")
    target = _next_path(target if isinstance(target, str) else None)
    if dashboard.guard.throttled():
        error = "too many wrong tokens lately: wait a minute and try again"
    elif not dashboard.guard.check_token(token if isinstance(token, str) else None):
        error = "wrong token"
    else:
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            dashboard.guard.login(),
            max_age=int(SESSION_TTL_S),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response
    return dashboard.renderer.page(
        request, "login.html", {"next": target, "error": error}, status=401
    )


async def logout(request: Request) -> Response:
    """End the session."""
    dashboard_of(request).guard.logout(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


class DashboardApp:
    """The ASGI app, with the ``Dashboard`` it serves (its view counts the broker reads)."""

    def __init__(self, asgi: ASGIApp, dashboard: Dashboard) -> None:
        self.asgi = asgi
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.asgi(scope, receive, send)


def create_app(
    config: DashboardConfig,
    settings: Settings,
    topology: Topology,
    *,
    extra_pages: Sequence[Page] = (),
) -> DashboardApp:
    """The dashboard for ``topology`` on the broker of ``settings``; ``extra_pages`` are added
    to the navigation after the built-in ones."""
    pages = [*default_pages(), *extra_pages]
    view = BrokerView(
        settings, topology, refresh_s=config.refresh_s, use_management=config.use_management
    )
    dashboard = Dashboard(
        config=config,
        topology=topology,
        view=view,
        guard=Guard(config.token),
        csrf=CsrfTokens(),
        renderer=Renderer(base_context(config, [(page.title, page.path) for page in pages])),
    )
    routes: list[BaseRoute] = [route for page in pages for route in page.routes]
    routes += [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await view.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.dashboard = dashboard
    wrapped: ASGIApp = security_headers(app)
    return DashboardApp(loopback_hosts(wrapped) if config.loopback else wrapped, dashboard)
