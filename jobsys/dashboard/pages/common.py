"""What every page handler shares: the dashboard it serves, the read guard, and the rules for
what a request may carry."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from jobsys.dashboard.config import DashboardConfig
from jobsys.dashboard.render import Renderer
from jobsys.dashboard.security import CsrfTokens, Guard
from jobsys.dashboard.source import BrokerView
from jobsys.topology.model import Topology

Handler = Callable[[Request], Awaitable[Response]]
#: Longest filter value (a job id, a job type) a request may carry.
MAX_FILTER_LENGTH = 1024
#: Largest form body accepted (a confirmation form is a few hundred bytes).
MAX_FORM_BYTES = 16 * 1024


@dataclass
class Dashboard:
    """The state every handler reads: configuration, broker view, guards, templates."""

    config: DashboardConfig
    topology: Topology
    view: BrokerView
    guard: Guard
    csrf: CsrfTokens
    renderer: Renderer


def dashboard_of(request: Request) -> Dashboard:
    """The ``Dashboard`` serving ``request``."""
    found: Dashboard = request.app.state.dashboard
    return found


def is_htmx(request: Request) -> bool:
    """True for htmx's refresh requests (they get a page's live part only)."""
    return request.headers.get("hx-request") == "true"


def readers_only(handler: Handler) -> Handler:
    """Serve ``handler`` to callers the guard lets read; others are sent to the login page
    (a refresh request or a script gets 401)."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        guard = dashboard_of(request).guard
        session = guard.session_of(request)
        if session is None:
            if is_htmx(request) or request.method != "GET":
                return PlainTextResponse("log in first: the dashboard needs its token", 401)
            target = quote(request.url.path, safe="/")
            return RedirectResponse(f"/login?next={target}", status_code=303)
        request.state.session = session
        return await handler(request)

    return wrapped


def query_text(request: Request, name: str) -> str | None:
    """A filter from the query string: None when absent or empty; cut at the length limit
    (the page says what it filtered by, so a cut value is seen)."""
    value = request.query_params.get(name)
    if not value:
        return None
    return value[:MAX_FILTER_LENGTH]


def query_int(request: Request, name: str, default: int, lowest: int, highest: int) -> int:
    """An integer from the query string, clamped into ``lowest..highest``; ``default`` when it
    is absent or not a number."""
    raw = request.query_params.get(name, "")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        return default
    return max(lowest, min(highest, int(raw)))


def base_context(config: DashboardConfig, nav: list[tuple[str, str]]) -> dict[str, Any]:
    """What every template sees."""
    return {
        "nav": nav,
        "refresh_s": config.refresh_s,
        "writes_enabled": config.writes_enabled,
        "guarded": config.token is not None,
    }
