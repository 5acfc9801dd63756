"""``jobsys publish JOB PAYLOAD --wait``: publish one job and print its result (``Producer.call``).

The result goes to stdout, as indented JSON escaped for the terminal (a result is whatever a
handler returned: control characters and bidirectional overrides in it must not act), or with
``--json`` as one ASCII JSON object. A job that failed for good or gave no outcome in time gets
its own exit code, so scripts can tell them from a publish that was refused.
"""

from __future__ import annotations

import json
from typing import Any

import click

from jobsys.cli.common import EXIT_OK, fail
from jobsys.cli.output import print_json
from jobsys.errors import CallTimeout, JobFailed, ResultUnknown
from jobsys.publish.producer import JobRequest, Producer
from jobsys.settings import Settings
from jobsys.topology.model import Topology
from jobsys.wire.display import escape, escape_keeping_newlines

#: The job was dead-lettered or cancelled: ``JobFailed``.
EXIT_JOB_FAILED = 6
#: No outcome within ``--timeout`` (or the connection was lost while waiting): the job was
#: published and may still run.
EXIT_NO_OUTCOME = 7
#: How long ``--wait`` waits without ``--timeout``.
DEFAULT_WAIT_S = 60.0


def check_wait_usage(wait: bool, timeout_s: float | None, jobs_file: str | None) -> None:
    """Refuse ``--timeout`` without ``--wait``, a timeout of 0 and ``--wait`` with ``--file``."""
    if jobs_file is not None and wait:
        raise click.UsageError("--wait waits for one job: give PAYLOAD_JSON, not --file")
    if timeout_s is not None and not wait:
        raise click.UsageError("--timeout is how long --wait waits: give --wait too")
    if timeout_s is not None and timeout_s <= 0:
        raise click.BadParameter("must be more than 0s", param_hint="--timeout")


async def call_one(
    settings: Settings, topology: Topology, request: JobRequest, timeout_s: float, as_json: bool
) -> int:
    """Publish ``request``, wait up to ``timeout_s`` for its outcome and print it; returns the
    exit code."""
    producer = Producer(settings, topology)
    job = producer.prepare(request)  # refuse a bad job before connecting
    job_id = job.job_id  # carried into call(), so every message can name it
    async with producer:
        if not as_json:
            click.echo(f"{escape(job_id)}: waiting up to {timeout_s:g}s for its result", err=True)
        try:
            result = await producer.call(
                request.job_type,
                request.payload,
                timeout_s=timeout_s,
                priority=request.priority,
                delay_s=request.delay_s,
                job_id=job_id,
                headers=request.headers,
                run_at=request.run_at,
            )
        except JobFailed as exc:
            return _failed(exc, as_json)
        except ResultUnknown as exc:
            return _no_outcome(exc, request.job_type, as_json)
    if as_json:
        print_json(
            {
                "job_id": job_id,
                "job_type": request.job_type,
                "status": "succeeded",
                "result": result,
            }
        )
    else:
        click.echo(show_result(result))
    return EXIT_OK


def show_result(result: Any) -> str:
    """``result`` for a terminal: indented JSON, every control character escaped."""
    return escape_keeping_newlines(json.dumps(result, indent=2, ensure_ascii=False))


def _failed(exc: JobFailed, as_json: bool) -> int:
    if as_json:
        print_json(
            {
                "job_id": exc.job_id,
                "job_type": exc.job_type,
                "status": "cancelled" if exc.cancelled else "failed",
                "error_type": exc.error_type,
                "error_message": exc.error_message,
                "attempts": exc.attempts,
                "reason": exc.reason,
                "safe_to_resubmit": exc.safe_to_resubmit,
            }
        )
        return EXIT_JOB_FAILED
    return fail(f"error: {exc}", EXIT_JOB_FAILED)


def _no_outcome(exc: ResultUnknown, job_type: str, as_json: bool) -> int:
    if as_json:
        print_json(
            {
                "job_id": exc.job_id,
                "job_type": job_type,
                "status": "timeout" if isinstance(exc, CallTimeout) else "unknown",
                "error": str(exc),
            }
        )
        return EXIT_NO_OUTCOME
    return fail(f"error: {exc}", EXIT_NO_OUTCOME)
