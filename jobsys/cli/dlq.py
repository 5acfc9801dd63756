"""``jobsys dlq``: list, show, replay and purge the jobs in a queue's dead-letter queue.

Output shows headers, sizes and counts, never a message body.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from jobsys.broker.connection import BrokerConnection
from jobsys.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    build_settings,
    connection_options,
    run,
    topology_option,
)
from jobsys.cli.topology import load_or_exit
from jobsys.ops import dlq
from jobsys.publish.producer import Producer
from jobsys.topology.model import Topology, dead_letter_queue_name
from jobsys.wire.deadletter import TRACEBACK_LIMIT, DeadJob
from jobsys.wire.display import cut, escape, escape_lines, utc_time, value_text
from jobsys.wire.headers import HEADER_FAILED_AT_MS, HEADER_JOB_ID

_MESSAGE_WIDTH = 60
#: Widest a cell of `dlq list` gets (job ids, types, error types, queues), and longest value
#: `dlq show` prints whole (a traceback header is at most this long when jobsys wrote it).
_CELL_WIDTH = 64
_VALUE_LIMIT = TRACEBACK_LIMIT
F = TypeVar("F", bound=Callable[..., Any])


_TOPOLOGY_HELP = "Topology file; QUEUE must be one of its queues."


def _check_queue(topology_file: str | None, queue: str) -> Topology | None:
    """Exit 2 when QUEUE is not a work queue of the topology; return the topology."""
    if topology_file is None:
        return None
    topology = load_or_exit(topology_file).topology
    if queue not in topology.queues:
        known = ", ".join(sorted(topology.queues)) or "none"
        hint = ""
        if queue.endswith(".dead") and queue[: -len(".dead")] in topology.queues:
            hint = f"; name the work queue, {queue[: -len('.dead')]!r}, not its dead-letter queue"
        click.secho(
            f"unknown queue {queue!r} in {topology_file} (known: {known}){hint}",
            fg="red",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_INVALID)
    return topology


@click.group(name="dlq")
def dlq_group() -> None:
    """Inspect and replay dead-lettered jobs. QUEUE is a work queue; its dead-letter queue is
    QUEUE.dead."""


@dlq_group.command(name="list")
@click.argument("queue")
@click.option("--job-type", default=None, help="Only jobs of this type.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@topology_option(required=False, help=_TOPOLOGY_HELP)
@connection_options
@run
async def list_command(
    queue: str,
    job_type: str | None,
    limit: int,
    topology_file: str | None,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """List dead-lettered jobs of QUEUE (oldest first), without removing or reordering them."""
    _check_queue(topology_file, queue)
    settings = build_settings(url, ca_file, insecure)
    async with BrokerConnection(settings) as connection:
        result = await dlq.peek(connection, queue, where=dlq.Filter(job_type=job_type), limit=limit)
    rows = [_row(job) for job in result.jobs]
    header = ("JOB ID", "TYPE", "ATTEMPTS", "ERROR", "MESSAGE", "FAILED AT (UTC)", "QUEUE")
    if rows:
        _table([header, *rows])
    scope = f" of type {job_type!r}" if job_type else ""
    click.echo(
        f"{len(rows)} job{'s' if len(rows) != 1 else ''}{scope} shown; "
        f"{result.total} in {escape(dead_letter_queue_name(queue))} ({result.scanned} read)"
    )


@dlq_group.command(name="show")
@click.argument("queue")
@click.argument("job_id")
@topology_option(required=False, help=_TOPOLOGY_HELP)
@connection_options
@run
async def show_command(
    queue: str,
    job_id: str,
    topology_file: str | None,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Show every header of dead-lettered job JOB_ID and its payload size (not the payload)."""
    _check_queue(topology_file, queue)
    settings = build_settings(url, ca_file, insecure)
    async with BrokerConnection(settings) as connection:
        result = await dlq.peek(
            connection,
            queue,
            where=dlq.Filter(job_id=job_id),
            limit=1,
            scan_limit=dlq.DEFAULT_SCAN_LIMIT * 10,
        )
    if not result.jobs:
        click.secho(
            f"job {escape(job_id)} is not in {escape(dead_letter_queue_name(queue))} "
            f"({result.scanned} of {result.total} read)",
            fg="red",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_FAILED)
    job = result.jobs[0]
    click.echo(f"job id:       {cut(_text_cell(job.job_id, job.headers), _VALUE_LIMIT)}")
    click.echo(f"job type:     {cut(escape(job.job_type or '-'), _VALUE_LIMIT)}")
    click.echo(f"payload size: {job.body_size} bytes")
    click.echo(f"replays:      {job.replays}")
    click.echo("headers:")
    for name in sorted(job.headers):
        _show_header(name, job.headers[name])


@dlq_group.command(name="replay")
@click.argument("queue")
@click.option("--job-type", default=None, help="Only jobs of this type.")
@click.option("--job-id", default=None, help="Only this job.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Replay at most N jobs.")
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="Replays per second."
)
@topology_option(required=True, help=_TOPOLOGY_HELP)
@connection_options
@run
async def replay_command(
    queue: str,
    job_type: str | None,
    job_id: str | None,
    limit: int | None,
    rate: float | None,
    topology_file: str,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Put dead-lettered jobs of QUEUE back into QUEUE with their attempts reset.

    Each job is published with a confirm before it leaves the dead-letter queue: interrupted,
    nothing is lost; a job caught between its confirm and its ack may run twice.
    """
    topology = _check_queue(topology_file, queue)
    assert topology is not None
    settings = build_settings(url, ca_file, insecure)
    where = dlq.Filter(job_type=job_type, job_id=job_id)
    async with Producer(settings, topology) as producer:
        total = await dlq.count(producer.connection, queue)
        length = total if limit is None or where != dlq.Filter() else min(total, limit)
        with click.progressbar(
            length=length, label="replaying", file=sys.stderr, show_pos=True
        ) as bar:
            done = 0

            def advance(state: dlq.ReplayProgress) -> None:
                nonlocal done
                settled = state.replayed + state.skipped
                bar.update(settled - done)
                done = settled

            state = await dlq.replay(
                producer,
                queue,
                where=where,
                limit=limit,
                rate=rate,
                progress=advance,
            )
    click.echo(
        f"replayed {state.replayed} job{'s' if state.replayed != 1 else ''} to {escape(queue)}; "
        f"{state.skipped} did not match and stay; "
        f"{state.total - state.replayed - state.skipped} not read"
    )


@dlq_group.command(name="purge")
@click.argument("queue")
@click.option("--yes", is_flag=True, default=False, help="Really delete them.")
@topology_option(required=False, help=_TOPOLOGY_HELP)
@connection_options
@run
async def purge_command(
    queue: str,
    yes: bool,
    topology_file: str | None,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Delete every job in the dead-letter queue of QUEUE (needs --yes)."""
    if not yes:
        click.secho(
            f"refusing to purge {escape(dead_letter_queue_name(queue))} without --yes "
            "(its jobs cannot be recovered)",
            fg="red",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_INVALID)
    _check_queue(topology_file, queue)
    settings = build_settings(url, ca_file, insecure)
    async with BrokerConnection(settings) as connection:
        purged = await dlq.purge(connection, queue)
    click.echo(
        f"purged {purged} job{'s' if purged != 1 else ''} from "
        f"{escape(dead_letter_queue_name(queue))}"
    )


# -- rendering: every header name and value is escaped (a header is whatever its publisher
# wrote, and a terminal acts on control characters); an odd value is shown marked, never raised.


def _row(job: DeadJob) -> tuple[str, ...]:
    """One line of `dlq list`."""
    return (
        _shorten(_text_cell(job.job_id, job.headers), _CELL_WIDTH),
        _shorten(escape(job.job_type or "-"), _CELL_WIDTH),
        str(job.attempts) if job.attempts is not None else "-",
        _shorten(escape(job.error_type or "-"), _CELL_WIDTH),
        _shorten(escape(" ".join((job.error_message or "").split())), _MESSAGE_WIDTH),
        _failed_at_cell(job.headers.get(HEADER_FAILED_AT_MS)),
        _shorten(escape(job.original_queue or "-"), _CELL_WIDTH),
    )


def _text_cell(job_id: str | None, headers: dict[str, Any]) -> str:
    """The job id, or what stands in the header when it is not text, marked with its type."""
    if job_id is not None:
        return escape(job_id)
    raw = headers.get(HEADER_JOB_ID)
    return "-" if raw is None else f"<{type(raw).__name__}: {value_text(raw)}>"


def _failed_at_cell(raw: object) -> str:
    if raw is None:
        return "-"
    if not isinstance(raw, int) or isinstance(raw, bool):
        return _shorten(f"<not a time: {value_text(raw)}>", _CELL_WIDTH)
    return utc_time(raw) or f"<out of range: {raw}>"


def _show_header(name: str, value: object) -> None:
    label = escape(name)
    if isinstance(value, str) and len(value.splitlines()) > 1:
        # A traceback keeps its lines, each indented past the header lines (and escaped), so
        # none can pass for a header of its own.
        click.echo(f"  {label}:")
        for line in escape_lines(cut(value, _VALUE_LIMIT)):
            click.echo(f"    {line}")
        return
    shown = cut(value_text(value), _VALUE_LIMIT)
    if name.endswith("-at-ms") and isinstance(value, int) and not isinstance(value, bool):
        when = utc_time(value)
        shown += f" ({when} UTC)" if when else " (out of range)"
    click.echo(f"  {label}: {shown}")


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())
