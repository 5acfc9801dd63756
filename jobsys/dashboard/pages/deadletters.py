"""The dead-letter pages: every work queue's dead-letter depth, a list of one queue's jobs
(filtered, a page at a time), and one job's headers (and payload, when shown at all).

Looking never removes or reorders a job (``jobsys.ops.dlq.peek``). A look reads the queue from
its head and holds what it read unacked until it ends, so pages go no deeper than
``MAX_BROWSE_DEPTH`` jobs: past that, a filter by job type or job id (or the CLI) finds a job.
Replay and purge live in ``actions``.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobsys.dashboard.config import MAX_BROWSE_DEPTH, PAGE_SIZE
from jobsys.dashboard.pages import Page, actions
from jobsys.dashboard.pages.common import (
    dashboard_of,
    is_htmx,
    query_int,
    query_text,
    readers_only,
)
from jobsys.dashboard.source import Unavailable
from jobsys.ops import dlq
from jobsys.topology.model import dead_letter_queue_name
from jobsys.wire.deadletter import DeadJob


@readers_only
async def index(request: Request) -> Response:
    """Each work queue's dead-letter queue and how many jobs it holds."""
    dashboard = dashboard_of(request)
    try:
        snapshot, error = await dashboard.view.status(), None
    except Unavailable as exc:
        snapshot, error = None, str(exc)
    return dashboard.renderer.page(
        request,
        "dead_letters.html",
        {"snapshot": snapshot, "error": error},
        status=503 if error and not is_htmx(request) else 200,
        partial="_dead_letters.html",
    )


@readers_only
async def queue_jobs(request: Request) -> Response:
    """One page of a dead-letter queue's jobs, oldest first."""
    dashboard = dashboard_of(request)
    queue = request.path_params["queue"]
    if queue not in dashboard.topology.queues:
        return unknown_queue(request, queue)
    job_type = query_text(request, "job_type")
    start = query_int(request, "start", 0, 0, MAX_BROWSE_DEPTH)
    context: dict[str, object] = {
        "queue": queue,
        "dead_letter_queue": dead_letter_queue_name(queue),
        "job_type": job_type,
        "start": start,
        "page_size": PAGE_SIZE,
        "max_depth": MAX_BROWSE_DEPTH,
    }
    try:
        result = await dashboard.view.peek(
            queue,
            dlq.Filter(job_type=job_type),
            limit=start + PAGE_SIZE,
            scan_limit=dlq.DEFAULT_SCAN_LIMIT,
            body_bytes=0,
        )
    except Unavailable as exc:
        return dashboard.renderer.page(
            request, "dead_letter_queue.html", {**context, "error": str(exc)}, status=503
        )
    jobs = result.jobs[start:]
    more = len(result.jobs) == start + PAGE_SIZE and start + PAGE_SIZE <= MAX_BROWSE_DEPTH
    return dashboard.renderer.page(
        request,
        "dead_letter_queue.html",
        {**context, "error": None, "result": result, "jobs": jobs, "more": more},
    )


@readers_only
async def job(request: Request) -> Response:
    """Every header of one dead-lettered job, its size, and its payload when shown."""
    dashboard = dashboard_of(request)
    queue = request.path_params["queue"]
    if queue not in dashboard.topology.queues:
        return unknown_queue(request, queue)
    job_id = query_text(request, "id")
    context: dict[str, object] = {
        "queue": queue,
        "dead_letter_queue": dead_letter_queue_name(queue),
        "job_id": job_id,
        "show_payloads": dashboard.config.show_payloads,
    }
    if job_id is None:
        return dashboard.renderer.page(
            request, "job.html", {**context, "error": "no job id given", "job": None}, status=400
        )
    try:
        result = await dashboard.view.peek(
            queue,
            dlq.Filter(job_id=job_id),
            limit=1,
            scan_limit=dlq.DEFAULT_SCAN_LIMIT,
            body_bytes=dashboard.config.payload_limit if dashboard.config.show_payloads else 0,
        )
    except Unavailable as exc:
        return dashboard.renderer.page(
            request, "job.html", {**context, "error": str(exc), "job": None}, status=503
        )
    found = result.jobs[0] if result.jobs else None
    return dashboard.renderer.page(
        request,
        "job.html",
        {
            **context,
            "error": None,
            "job": found,
            "result": result,
            "payload": payload_text(found) if found is not None else None,
            "headers": sorted(found.headers.items()) if found is not None else [],
        },
        status=200 if found is not None else 404,
    )


def payload_text(job: DeadJob) -> str | None:
    """The job's payload as text for the page: indented when it is JSON and all of it was
    read, else the bytes read, decoded (bad bytes shown as ``\\xNN``). None when not read."""
    head = job.body_head
    if head is None:
        return None
    text = head.decode("utf-8", "backslashreplace")
    if len(head) == job.body_size:
        try:
            return json.dumps(json.loads(head), indent=2, ensure_ascii=False)
        except (ValueError, RecursionError):
            return text
    return f"{text}\n... (first {len(head):,} of {job.body_size:,} bytes)"


def unknown_queue(request: Request, queue: str) -> Response:
    """The page for a queue that is not a work queue of the topology."""
    dashboard = dashboard_of(request)
    return dashboard.renderer.page(
        request,
        "message.html",
        {
            "title": "Unknown queue",
            "message": f"{queue} is not a work queue of this dashboard's topology",
            "known": sorted(dashboard.topology.queues),
        },
        status=404,
    )


def page() -> Page:
    """The dead-letter pages, under ``/dead-letters``."""
    return Page(
        "Dead letters",
        "/dead-letters",
        [
            Route("/dead-letters", index, name="dead_letters"),
            Route("/dead-letters/{queue}", queue_jobs, name="dead_letter_queue"),
            Route("/dead-letters/{queue}/job", job, name="dead_letter_job"),
            *actions.routes(),
        ],
    )
