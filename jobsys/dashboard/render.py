"""Turning what the broker holds into HTML: the Jinja2 environment and its filters.

Autoescaping is on for every template, so ``<``, ``&`` and quotes in a queue name, a job id or
a header can never become markup. On top of that every value that came off the wire goes
through ``shown``: ``jobsys.wire.display.escape`` writes control characters and bidirectional
overrides as visible escapes (a right-to-left override could otherwise reorder what the
operator reads), and long values are cut with their length said.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from jobsys.wire.display import cut, escape, utc_time, value_text

TEMPLATES = Path(__file__).parent / "templates"
#: Longest value a table cell shows whole.
CELL_LIMIT = 120


def shown(value: object, limit: int = CELL_LIMIT) -> str:
    """Any value from the wire as one safe line of text (HTML escaping comes after)."""
    if value is None:
        return "-"
    text = escape(value) if isinstance(value, str) else value_text(value)
    return cut(text, limit)


def shown_lines(value: str | None, limit: int) -> list[str]:
    """A multi-line value (a traceback, a payload) cut to ``limit`` characters, line by line,
    each line escaped."""
    if value is None:
        return ["-"]
    return [escape(line) for line in cut(value, limit).splitlines()] or [""]


def count(value: int | None) -> str:
    """A count with thousands separators; ``-`` when unknown."""
    return "-" if value is None else f"{value:,}"


def rate(value: float | None) -> str:
    """Messages per second, one decimal."""
    return "-" if value is None else f"{value:.1f}"


def age(epoch_s: float | None, now: float | None = None) -> str:
    """How long ago ``epoch_s`` was, as ``1h 02m`` / ``3m 12s`` / ``4s``."""
    if epoch_s is None:
        return "-"
    seconds = int((time.time() if now is None else now) - epoch_s)
    if seconds < 0:
        return "in the future"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f"{hours // 24}d {hours % 24:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def clock(epoch_s: float) -> str:
    """A moment as ``HH:MM:SS UTC``."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(epoch_s))


def duration(seconds: float) -> str:
    """A length of time as its largest units: ``1s``, ``4m 16s``, ``2d 06h``."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def utc_ms(value: object) -> str:
    """Milliseconds since the epoch as UTC time, or the value marked when it is none."""
    if value is None:
        return "-"
    if not isinstance(value, int) or isinstance(value, bool):
        return f"<not a time: {shown(value, 60)}>"
    return utc_time(value) or f"<out of range: {value}>"


def environment() -> jinja2.Environment:
    """The templates, autoescaped, with the filters above."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        shown=shown,
        shown_lines=shown_lines,
        count=count,
        rate=rate,
        age=age,
        utc_ms=utc_ms,
        clock=clock,
        duration=duration,
    )
    return env


class Renderer:
    """Renders a page, or only its live part for htmx's refresh requests."""

    def __init__(self, base_context: dict[str, Any]) -> None:
        self.env = environment()
        self.base_context = base_context

    def page(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        *,
        status: int = 200,
        partial: str | None = None,
    ) -> HTMLResponse:
        """``template`` with ``context``; ``partial`` instead when htmx asks for a refresh."""
        if partial is not None and request.headers.get("hx-request") == "true":
            template = partial
        merged = {**self.base_context, "request_path": request.url.path, **context}
        html = self.env.get_template(template).render(merged)
        return HTMLResponse(html, status_code=status)
