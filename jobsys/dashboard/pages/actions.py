"""Replay and purge, the dashboard's only writes: each is a confirmation page (GET) and the
action itself (POST).

A write needs all of: a dashboard started with a token (without one, writes are off), a caller
allowed to read, a one-time CSRF token that the confirmation page issued for exactly this
action on this queue (a forged form has none, a resubmitted one's is spent, an altered one's
does not match), and the token typed into the confirmation form. Whatever fails, nothing is
done and the page says why.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobsys.dashboard.config import MAX_REPLAY
from jobsys.dashboard.pages.common import (
    MAX_FILTER_LENGTH,
    MAX_FORM_BYTES,
    dashboard_of,
    query_text,
    readers_only,
)
from jobsys.dashboard.security import Action
from jobsys.dashboard.source import Unavailable
from jobsys.ops import dlq
from jobsys.topology.model import dead_letter_queue_name


def _action(kind: str, queue: str, job_id: str | None, job_type: str | None) -> Action:
    # The filter is part of what the CSRF token is bound to: a form altered after its
    # confirmation page does not match.
    return Action(kind, queue, f"id={job_id or ''}\x00type={job_type or ''}")


def _queue(request: Request) -> str | None:
    queue = str(request.path_params["queue"])
    return queue if queue in dashboard_of(request).topology.queues else None


def _refused(request: Request, message: str, status: int = 403) -> Response:
    return dashboard_of(request).renderer.page(
        request,
        "message.html",
        {"title": "Not done", "message": message, "known": []},
        status=status,
    )


async def _confirm(request: Request, kind: str) -> Response:
    dashboard = dashboard_of(request)
    queue = _queue(request)
    if queue is None:
        return _refused(request, "unknown queue", 404)
    if not dashboard.config.writes_enabled:
        return _refused(
            request,
            "write actions are off: start the dashboard with a token (--token or "
            "JOBSYS_DASHBOARD_TOKEN) to replay or purge",
        )
    job_id = query_text(request, "job_id") if kind == "replay" else None
    job_type = query_text(request, "job_type") if kind == "replay" else None
    try:
        snapshot = await dashboard.view.status()
        waiting = next(
            (q.dead_letter.total for q in snapshot.report.queues if q.name == queue), None
        )
    except Unavailable:
        waiting = None
    session = request.state.session
    return dashboard.renderer.page(
        request,
        "confirm.html",
        {
            "kind": kind,
            "queue": queue,
            "dead_letter_queue": dead_letter_queue_name(queue),
            "job_id": job_id,
            "job_type": job_type,
            "waiting": waiting,
            "max_replay": MAX_REPLAY,
            "csrf": dashboard.csrf.issue(session, _action(kind, queue, job_id, job_type)),
        },
    )


async def _perform(request: Request, kind: str) -> Response:
    dashboard = dashboard_of(request)
    queue = _queue(request)
    if queue is None:
        return _refused(request, "unknown queue", 404)
    if not dashboard.config.writes_enabled:
        return _refused(request, "write actions are off: the dashboard was started without a token")
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_FORM_BYTES:
        return _refused(request, "the form is missing or too large", 413)
    form = await request.form(max_files=0, max_fields=8, max_part_size=MAX_FORM_BYTES)
    fields = {name: value for name, value in form.items() if isinstance(value, str)}
    job_id = fields.get("job_id", "")[:MAX_FILTER_LENGTH] or None
    job_type = fields.get("job_type", "")[:MAX_FILTER_LENGTH] or None
    if kind == "purge" and (job_id or job_type):
        return _refused(request, "a purge takes no filter", 400)
    action = _action(kind, queue, job_id, job_type)
    if not dashboard.csrf.spend(fields.get("csrf"), request.state.session, action):
        return _refused(
            request,
            "this form is not valid any more (already used, expired, changed, or not issued "
            "here): go back, reload the confirmation page and confirm again",
        )
    if dashboard.guard.throttled() or not dashboard.guard.check_token(fields.get("token")):
        return _refused(request, "wrong token: nothing was done")
    try:
        if kind == "purge":
            purged = await dashboard.view.purge(queue)
            outcome = f"purged {purged:,} job{'s' if purged != 1 else ''} from {queue}.dead"
        else:
            where = dlq.Filter(job_type=job_type, job_id=job_id)
            state = await dashboard.view.replay(queue, where, MAX_REPLAY)
            outcome = (
                f"replayed {state.replayed:,} job{'s' if state.replayed != 1 else ''} to "
                f"{queue}; {state.skipped:,} did not match and stay; "
                f"{state.total - state.replayed - state.skipped:,} not read"
            )
    except Unavailable as exc:
        return _refused(request, f"not done: {exc}", 503)
    return dashboard.renderer.page(
        request,
        "message.html",
        {"title": "Done", "message": outcome, "known": [], "back": queue},
    )


@readers_only
async def replay_confirm(request: Request) -> Response:
    """Ask to confirm a replay (one job, a job type, or everything)."""
    return await _confirm(request, "replay")


@readers_only
async def replay(request: Request) -> Response:
    """Replay what the confirmation named."""
    return await _perform(request, "replay")


@readers_only
async def purge_confirm(request: Request) -> Response:
    """Ask to confirm a purge."""
    return await _confirm(request, "purge")


@readers_only
async def purge(request: Request) -> Response:
    """Purge the dead-letter queue."""
    return await _perform(request, "purge")


def routes() -> list[Route]:
    """The confirmation pages and the actions."""
    return [
        Route("/dead-letters/{queue}/replay", replay_confirm, methods=["GET"]),
        Route("/dead-letters/{queue}/replay", replay, methods=["POST"]),
        Route("/dead-letters/{queue}/purge", purge_confirm, methods=["GET"]),
        Route("/dead-letters/{queue}/purge", purge, methods=["POST"]),
    ]
