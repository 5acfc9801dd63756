"""How ``jobsys dlq`` shows dead-lettered jobs: a table row, every header, and JSON.

Every header name and value is escaped (a header is whatever its publisher wrote, and a
terminal acts on control characters); an odd value is shown marked, never raised. JSON output
turns each value into what JSON can hold (bytes and times as text) and is pure ASCII.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import click

from jobsys.cli.output import Column
from jobsys.wire.deadletter import TRACEBACK_LIMIT, DeadJob
from jobsys.wire.display import cut, escape, escape_lines, utc_time, value_text
from jobsys.wire.headers import HEADER_FAILED_AT_MS, HEADER_JOB_ID, escape_invalid

#: Widest a cell of `dlq list` gets (job ids, types, error types, queues), and longest value
#: `dlq show` prints whole (a traceback header is at most this long when jobsys wrote it).
CELL_WIDTH = 64
VALUE_LIMIT = TRACEBACK_LIMIT

LIST_COLUMNS = (
    Column("job id", max_width=CELL_WIDTH),
    Column("type", max_width=CELL_WIDTH),
    Column("attempts", "right"),
    Column("error", max_width=CELL_WIDTH),
    Column("message", max_width=60),
    Column("failed at (UTC)"),
    Column("queue", max_width=CELL_WIDTH),
)


def list_row(job: DeadJob) -> tuple[str, ...]:
    """One line of `dlq list` (escaped by the table)."""
    return (
        id_cell(job),
        job.job_type or "-",
        str(job.attempts) if job.attempts is not None else "-",
        job.error_type or "-",
        " ".join((job.error_message or "").split()),
        _failed_at_cell(job.headers.get(HEADER_FAILED_AT_MS)),
        job.original_queue or "-",
    )


def id_cell(job: DeadJob) -> str:
    """The job id, or what stands in the header when it is not text, marked with its type."""
    if job.job_id is not None:
        return job.job_id
    raw = job.headers.get(HEADER_JOB_ID)
    return "-" if raw is None else f"<{type(raw).__name__}: {value_text(raw)}>"


def _failed_at_cell(raw: object) -> str:
    if raw is None:
        return "-"
    if not isinstance(raw, int) or isinstance(raw, bool):
        return f"<not a time: {value_text(raw)}>"
    return utc_time(raw) or f"<out of range: {raw}>"


def print_job(job: DeadJob, *, payload_limit: int) -> None:
    """Every header of ``job``, its size, and its payload when it was read (``--payload``)."""
    click.echo(f"job id:       {cut(escape(id_cell(job)), VALUE_LIMIT)}")
    click.echo(f"job type:     {cut(escape(job.job_type or '-'), VALUE_LIMIT)}")
    click.echo(f"payload size: {job.body_size} bytes")
    click.echo(f"replays:      {job.replays}")
    click.echo("headers:")
    for name in sorted(job.headers):
        _print_header(name, job.headers[name])
    if job.body_head is not None:
        shown = payload_text(job.body_head)
        more = job.body_size - len(job.body_head)
        note = f" (first {payload_limit} of {job.body_size} bytes)" if more > 0 else ""
        click.echo(f"payload{note}:")
        for line in escape_lines(shown):
            click.echo(f"  {line}")


def payload_text(payload: bytes) -> str:
    """A payload as text: UTF-8, with ``\\xNN`` for bytes that are not (escaped on output)."""
    return payload.decode("utf-8", "backslashreplace")


def _print_header(name: str, value: object) -> None:
    label = escape(name)
    if isinstance(value, str) and len(value.splitlines()) > 1:
        # A traceback keeps its lines, each indented past the header lines (and escaped), so
        # none can pass for a header of its own.
        click.echo(f"  {label}:")
        for line in escape_lines(cut(value, VALUE_LIMIT)):
            click.echo(f"    {line}")
        return
    shown = cut(value_text(value), VALUE_LIMIT)
    if name.endswith("-at-ms") and isinstance(value, int) and not isinstance(value, bool):
        when = utc_time(value)
        shown += f" ({when} UTC)" if when else " (out of range)"
    click.echo(f"  {label}: {shown}")


def job_json(job: DeadJob) -> dict[str, Any]:
    """``job`` as ``dlq list --json`` and ``dlq show --json`` print it (docs/cli.md)."""
    data: dict[str, Any] = {
        "job_id": job.job_id,
        "job_type": job.job_type,
        "attempts": job.attempts,
        "error_type": job.error_type,
        "error_message": job.error_message,
        "failed_at_ms": job.failed_at_ms,
        "failed_at": _iso(job.failed_at_ms),
        "queue": job.original_queue,
        "replays": job.replays,
        "payload_size": job.body_size,
        "headers": json_value(job.headers),
    }
    if job.body_head is not None:
        data["payload"] = payload_text(job.body_head)
        data["payload_complete"] = len(job.body_head) == job.body_size
    return data


def _iso(ms: int | None) -> str | None:
    when = utc_time(ms) if ms is not None else None
    return None if when is None else when.replace(" ", "T") + "Z"


def json_value(value: object) -> Any:
    """A header value as JSON can hold it: bytes and times as text, tables and arrays inside."""
    if isinstance(value, str):
        return escape_invalid(value)
    if isinstance(value, bool | int) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {escape_invalid(str(k)): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    return value_text(value)
