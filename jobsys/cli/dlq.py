"""``jobsys dlq``: list, show, replay and purge the jobs in a queue's dead-letter queue.

Output shows headers, sizes and counts; a payload only with ``dlq show --payload``, capped.
Every command takes ``--topology`` (or ``JOBSYS_TOPOLOGY``), checks QUEUE against it, and
prints ``--json`` on request.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from jobsys.broker.connection import BrokerConnection
from jobsys.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    build_settings,
    connection_options,
    fail,
    run,
    topology_option,
)
from jobsys.cli.dlq_view import LIST_COLUMNS, job_json, list_row, print_job
from jobsys.cli.output import json_option, plural, print_json, print_json_line, print_table
from jobsys.cli.topology_file import load_or_exit
from jobsys.ops import dlq
from jobsys.publish.producer import Producer
from jobsys.topology.model import Topology, dead_letter_queue_name
from jobsys.wire.display import escape

_TOPOLOGY_HELP = "Topology file; QUEUE must be one of its queues."
#: What `dlq show --payload` prints of a payload unless --payload-limit says otherwise.
DEFAULT_PAYLOAD_LIMIT = 4096
MAX_PAYLOAD_LIMIT = 16 * 1024 * 1024


def _check_queue(topology_file: str, queue: str) -> Topology:
    """Exit 2 when QUEUE is not a work queue of the topology; return the topology."""
    topology = load_or_exit(topology_file).topology
    if queue not in topology.queues:
        known = ", ".join(sorted(topology.queues)) or "none"
        hint = ""
        if queue.endswith(".dead") and queue[: -len(".dead")] in topology.queues:
            hint = f"; name the work queue, {queue[: -len('.dead')]!r}, not its dead-letter queue"
        message = f"unknown queue {queue!r} in {topology_file} (known: {known}){hint}"
        raise click.exceptions.Exit(fail(message, EXIT_INVALID))
    return topology


def _filter_options(func: Any) -> Any:
    func = click.option(
        "--job-id",
        default=None,
        help="Only this job; a unique start of its id (as `list` shows it) works too.",
    )(func)
    func = click.option("--job-type", default=None, help="Only jobs of this type.")(func)
    return func


async def _where(
    connection: BrokerConnection, queue: str, job_type: str | None, job_id: str | None
) -> dlq.Filter:
    """The filter for ``--job-type`` and ``--job-id``; a job id that no job has exactly is
    taken as the start of one, and must then name exactly one job."""
    if job_id is None:
        return dlq.Filter(job_type=job_type)
    return dlq.Filter(job_type=job_type, job_id=await _full_job_id(connection, queue, job_id))


async def _full_job_id(connection: BrokerConnection, queue: str, job_id: str) -> str:
    exact = await dlq.peek(connection, queue, where=dlq.Filter(job_id=job_id), limit=1)
    if exact.jobs:
        return job_id
    found = await dlq.peek(connection, queue, where=dlq.Filter(job_id_prefix=job_id), limit=5)
    ids = sorted({job.job_id for job in found.jobs if job.job_id is not None})
    where = escape(dead_letter_queue_name(queue))
    if not ids:
        message = (
            f"job {escape(job_id)} is not in {where} (no id is or starts with it; "
            f"{found.scanned} of {found.total} read)"
        )
        raise click.exceptions.Exit(fail(message, EXIT_FAILED))
    if len(ids) > 1:
        shown = ", ".join(escape(i) for i in ids)
        message = f"{escape(job_id)} starts more than one job id in {where} ({shown}); give more"
        raise click.exceptions.Exit(fail(message, EXIT_INVALID))
    return ids[0]


@click.group(name="dlq")
def dlq_group() -> None:
    """Inspect and replay dead-lettered jobs. QUEUE is a work queue; its dead-letter queue is
    QUEUE.dead."""


@dlq_group.command(name="list")
@click.argument("queue")
@click.option("--job-type", default=None, help="Only jobs of this type.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Show at most this many jobs.",
)
@topology_option(required=True, help=_TOPOLOGY_HELP)
@json_option
@connection_options
@run
async def list_command(
    queue: str,
    job_type: str | None,
    limit: int,
    topology_file: str,
    as_json: bool,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """List dead-lettered jobs of QUEUE (oldest first), without removing or reordering them.

    With --json: one JSON object per job, one per line (shape in docs/cli.md).
    """
    _check_queue(topology_file, queue)
    settings = build_settings(url, ca_file, insecure)
    async with BrokerConnection(settings) as connection:
        result = await dlq.peek(connection, queue, where=dlq.Filter(job_type=job_type), limit=limit)
    if as_json:
        for job in result.jobs:
            print_json_line(job_json(job))
        return
    if result.jobs:
        print_table(LIST_COLUMNS, [list_row(job) for job in result.jobs])
    scope = f" of type {escape(job_type)!r}" if job_type else ""
    click.echo(
        f"{plural(len(result.jobs), 'job')}{scope} shown; "
        f"{result.total} in {escape(dead_letter_queue_name(queue))} ({result.scanned} read)"
    )


@dlq_group.command(name="show")
@click.argument("queue")
@click.argument("job_id")
@click.option("--payload", is_flag=True, default=False, help="Show the payload too.")
@click.option(
    "--payload-limit",
    type=click.IntRange(1, MAX_PAYLOAD_LIMIT),
    default=DEFAULT_PAYLOAD_LIMIT,
    show_default=True,
    metavar="BYTES",
    help="Show at most this much of the payload.",
)
@topology_option(required=True, help=_TOPOLOGY_HELP)
@json_option
@connection_options
@run
async def show_command(
    queue: str,
    job_id: str,
    payload: bool,
    payload_limit: int,
    topology_file: str,
    as_json: bool,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Show every header of dead-lettered job JOB_ID (or the one job whose id starts with it),
    its payload size, and with --payload its payload (the first --payload-limit bytes)."""
    _check_queue(topology_file, queue)
    settings = build_settings(url, ca_file, insecure)
    async with BrokerConnection(settings) as connection:
        full_id = await _full_job_id(connection, queue, job_id)
        result = await dlq.peek(
            connection,
            queue,
            where=dlq.Filter(job_id=full_id),
            limit=1,
            scan_limit=dlq.DEFAULT_SCAN_LIMIT * 10,
            body_bytes=payload_limit if payload else 0,
        )
    if not result.jobs:  # replayed or purged between the two looks
        message = (
            f"job {escape(job_id)} is not in {escape(dead_letter_queue_name(queue))} "
            f"({result.scanned} of {result.total} read)"
        )
        raise click.exceptions.Exit(fail(message, EXIT_FAILED))
    job = result.jobs[0]
    if as_json:
        print_json(job_json(job))
    else:
        print_job(job, payload_limit=payload_limit)


@dlq_group.command(name="replay")
@click.argument("queue")
@_filter_options
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Replay at most N jobs.")
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="Replays per second."
)
@topology_option(required=True, help=_TOPOLOGY_HELP)
@json_option
@connection_options
@run
async def replay_command(
    queue: str,
    job_type: str | None,
    job_id: str | None,
    limit: int | None,
    rate: float | None,
    topology_file: str,
    as_json: bool,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Put dead-lettered jobs of QUEUE back into QUEUE with their attempts reset.

    Each job is published with a confirm before it leaves the dead-letter queue: interrupted,
    nothing is lost; a job caught between its confirm and its ack may run twice.
    """
    topology = _check_queue(topology_file, queue)
    settings = build_settings(url, ca_file, insecure)
    async with Producer(settings, topology) as producer:
        where = await _where(producer.connection, queue, job_type, job_id)
        total = await dlq.count(producer.connection, queue)
        length = total if limit is None or not where.everything else min(total, limit)
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
                producer, queue, where=where, limit=limit, rate=rate, progress=advance
            )
    unread = state.total - state.replayed - state.skipped
    if as_json:
        print_json(
            {"queue": queue, "replayed": state.replayed, "skipped": state.skipped, "unread": unread}
        )
        return
    click.echo(
        f"replayed {plural(state.replayed, 'job')} to {escape(queue)}; "
        f"{state.skipped} did not match and stay; {unread} not read"
    )


@dlq_group.command(name="purge")
@click.argument("queue")
@_filter_options
@click.option("--yes", is_flag=True, default=False, help="Really delete them.")
@topology_option(required=True, help=_TOPOLOGY_HELP)
@json_option
@connection_options
@run
async def purge_command(
    queue: str,
    job_type: str | None,
    job_id: str | None,
    yes: bool,
    topology_file: str,
    as_json: bool,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Delete the jobs in the dead-letter queue of QUEUE (all, or those --job-type and --job-id
    pick); needs --yes, and says how many without it."""
    _check_queue(topology_file, queue)
    settings = build_settings(url, ca_file, insecure)
    dead = escape(dead_letter_queue_name(queue))
    async with BrokerConnection(settings) as connection:
        where = await _where(connection, queue, job_type, job_id)
        if not yes:
            raise click.exceptions.Exit(
                fail(await _refusal(connection, queue, where, dead), EXIT_INVALID)
            )
        purged = await dlq.purge(connection, queue, where=where)
    if as_json:
        print_json({"queue": queue, "purged": purged})
        return
    click.echo(f"purged {plural(purged, 'job')} from {dead}")


async def _refusal(connection: BrokerConnection, queue: str, where: dlq.Filter, dead: str) -> str:
    """Why purge did nothing, with how many jobs it would delete."""
    if where.everything:
        count = plural(await dlq.count(connection, queue), "job")
    else:
        found = await dlq.peek(connection, queue, where=where, limit=dlq.DEFAULT_SCAN_LIMIT)
        count = plural(len(found.jobs), "matching job")
        if found.scanned < found.total:
            count = f"at least {count} (of the first {found.scanned} read)"
    return f"refusing to purge {count} from {dead} without --yes (they cannot be recovered)"
