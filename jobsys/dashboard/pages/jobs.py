"""The job lookup page: one job's recorded history (its timeline and where it stands now),
read from the topology's history stream (``history:``; ``jobsys.ops.history``). A lookup reads
the stream from ``since`` (or all the broker keeps), so lookups take turns."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobsys.dashboard.pages import Page
from jobsys.dashboard.pages.common import dashboard_of, readers_only
from jobsys.dashboard.source import Unavailable
from jobsys.duration import parse_duration_s
from jobsys.errors import MessageError
from jobsys.wire.envelope import check_job_id
from jobsys.wire.history import HistoryEvent, job_state

#: What the "since" choice offers, as durations; "" reads all the broker keeps.
SINCE_CHOICES = ("15m", "1h", "1d", "7d", "")


@readers_only
async def jobs(request: Request) -> Response:
    """A form for a job id; with one, that job's timeline and state."""
    dashboard = dashboard_of(request)
    raw_id = request.query_params.get("id", "")
    since = request.query_params.get("since", "1d")
    context: dict[str, object] = {
        "job_id": raw_id,
        "since": since if since in SINCE_CHOICES else "1d",
        "choices": SINCE_CHOICES,
        "history_on": dashboard.topology.history is not None,
        "events": None,
        "state": None,
        "error": None,
    }
    status = 200
    if raw_id and context["history_on"]:
        try:
            job_id = check_job_id(raw_id)
            since_s = parse_duration_s(context["since"]) if context["since"] else None
            events: list[HistoryEvent] = await dashboard.view.job_history(job_id, since_s)
        except (MessageError, ValueError) as exc:
            context["error"], status = str(exc), 400
        except Unavailable as exc:
            context["error"], status = str(exc), 503
        else:
            context["events"], context["state"] = events, job_state(events)
    return dashboard.renderer.page(request, "jobs.html", context, status=status)


def page() -> Page:
    """The job lookup page, at ``/jobs``."""
    return Page("Jobs", "/jobs", [Route("/jobs", jobs, name="jobs")])
