"""``jobsys dlq``: list, show, replay and purge the jobs in a queue's dead-letter queue.

Output shows headers, sizes and counts, never a message body.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
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

_MESSAGE_WIDTH = 60
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
    rows = [
        (
            job.job_id or "-",
            job.job_type or "-",
            str(job.attempts) if job.attempts is not None else "-",
            job.error_type or "-",
            _shorten(job.error_message or "", _MESSAGE_WIDTH),
            _time(job.failed_at_ms),
            job.original_queue or "-",
        )
        for job in result.jobs
    ]
    header = ("JOB ID", "TYPE", "ATTEMPTS", "ERROR", "MESSAGE", "FAILED AT", "QUEUE")
    if rows:
        _table([header, *rows])
    scope = f" of type {job_type!r}" if job_type else ""
    click.echo(
        f"{len(rows)} job{'s' if len(rows) != 1 else ''}{scope} shown; "
        f"{result.total} in {dead_letter_queue_name(queue)} ({result.scanned} read)"
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
            f"job {job_id} is not in {dead_letter_queue_name(queue)} "
            f"({result.scanned} of {result.total} read)",
            fg="red",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_FAILED)
    job = result.jobs[0]
    click.echo(f"job id:       {job.job_id}")
    click.echo(f"job type:     {job.job_type or '-'}")
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
        f"replayed {state.replayed} job{'s' if state.replayed != 1 else ''} to {queue}; "
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
            f"refusing to purge {dead_letter_queue_name(queue)} without --yes "
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
        f"purged {purged} job{'s' if purged != 1 else ''} from {dead_letter_queue_name(queue)}"
    )


def _show_header(name: str, value: object) -> None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if name.endswith("-at-ms") and isinstance(value, int):
        click.echo(f"  {name}: {value} ({_time(value)})")
    elif isinstance(value, str) and "\n" in value:
        click.echo(f"  {name}:")
        for line in value.rstrip("\n").splitlines():
            click.echo(f"    {line}")
    else:
        click.echo(f"  {name}: {value}")


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())
