"""``jobsys delays status|list|retire``: the broker-side delay levels of a topology."""

from __future__ import annotations

import time

import click

from jobsys.broker.connection import BrokerConnection
from jobsys.cli.common import build_settings, connection_options, run, topology_option
from jobsys.cli.output import Column, json_option, plural, print_json, print_table
from jobsys.cli.topology_file import load_or_exit
from jobsys.duration import format_duration
from jobsys.ops.delays import MAX_PEEK_PER_LEVEL, WaitingJob, peek_levels, retire_legacy_levels
from jobsys.ops.status import Unreachable, legacy_waiting, waiting_per_level
from jobsys.topology.delays import LEVELS, DelayLayout, level_ttl_ms
from jobsys.wire.display import utc_time

NOT_DECLARED = "not declared - run `jobsys topology apply`"
#: A level that exists on a node that is down or still starting: `apply` would not help.
NODE_DOWN = "unreachable - its node is down or starting"


@click.group(name="delays")
def delays_group() -> None:
    """Inspect the broker-side delay levels (delayed jobs and retry backoff)."""


@delays_group.command(name="status")
@topology_option(required=True, help="The topology file.")
@json_option
@connection_options
@run
async def status_command(
    topology_file: str, as_json: bool, url: str | None, ca_file: str | None, insecure: bool
) -> None:
    """Jobs waiting in each delay level, and in all."""
    layout = load_or_exit(topology_file).topology.delay_layout
    settings = build_settings(url, ca_file, insecure)
    async with BrokerConnection(settings) as connection:
        counts = await waiting_per_level(connection, layout)
        legacy = await legacy_waiting(connection)
    total = sum(count for count in counts if isinstance(count, int))
    missing = sum(1 for count in counts if count is None)
    down = sum(1 for count in counts if isinstance(count, Unreachable))
    legacy_total = sum(count for count in legacy.values() if isinstance(count, int))
    legacy_down = sorted(name for name, count in legacy.items() if isinstance(count, Unreachable))
    if as_json:
        print_json(
            {
                "namespace": layout.namespace,
                "levels": [
                    {
                        "name": layout.level_name(level),
                        "ttl_s": level_ttl_ms(level) / 1000,
                        "waiting": waiting if isinstance(waiting, int) else None,
                        "node_down": isinstance(waiting, Unreachable),
                    }
                    for level, waiting in enumerate(counts)
                ],
                "total": total,
                "missing_levels": missing,
                "node_down_levels": down,
                "legacy_levels": {
                    name: count if isinstance(count, int) else None
                    for name, count in legacy.items()
                },
            }
        )
        return
    print_table(
        [Column("level"), Column("ttl", "right"), Column("waiting", "right")],
        [
            (
                layout.level_name(level),
                format_duration(level_ttl_ms(level) / 1000),
                _waiting_cell(waiting),
            )
            for level, waiting in enumerate(counts)
        ],
    )
    notes = [f"{missing} of {LEVELS} {NOT_DECLARED}"] if missing else []
    if down:
        notes.append(f"{down} of {LEVELS} {NODE_DOWN}, not counted")
    note = f" ({'; '.join(notes)})" if notes else ""
    click.echo(f"total: {plural(total, 'job')} waiting in {LEVELS} levels{note}")
    if legacy:
        click.echo(
            f"old delay levels (jobsys.delay.*, {len(legacy)} of them) hold "
            f"{plural(legacy_total, 'job')}; they deliver on time, and "
            "`jobsys delays retire` removes them once empty"
        )
    if legacy_down:
        click.echo(f"old delay levels not counted ({NODE_DOWN}): {', '.join(legacy_down)}")


def _waiting_cell(waiting: int | Unreachable | None) -> str:
    if waiting is None:
        return NOT_DECLARED
    return NODE_DOWN if isinstance(waiting, Unreachable) else str(waiting)


@delays_group.command(name="list")
@topology_option(required=True, help="The topology file.")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_PEEK_PER_LEVEL),
    default=100,
    show_default=True,
    help="Jobs read per level (each is held for the few ms the level takes to read).",
)
@json_option
@connection_options
@run
async def list_command(
    topology_file: str,
    limit: int,
    as_json: bool,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """The jobs waiting in the delay levels, soonest due first, left where they are (reading
    them holds each level's first jobs for a few ms: see docs/schedules.md)."""
    layout = load_or_exit(topology_file).topology.delay_layout
    settings = build_settings(url, ca_file, insecure)
    async with BrokerConnection(settings) as connection:
        jobs, more, unreachable = await peek_levels(connection, layout, limit)
    jobs.sort(key=lambda job: (job.due_at_ms is None, job.due_at_ms or 0))
    if as_json:
        print_json(
            {
                "jobs": [_as_json(job, layout) for job in jobs],
                "not_read": {layout.level_name(level): n for level, n in sorted(more.items())},
                "unreachable": [layout.level_name(level) for level in unreachable],
            }
        )
        return
    now_ms = int(time.time() * 1000)
    print_table(
        [
            Column("due (UTC)"),
            Column("in", "right"),
            Column("job id", max_width=60),
            Column("job type", max_width=40),
            Column("queue", max_width=60),
            Column("level"),
        ],
        [
            (
                (utc_time(job.due_at_ms) if job.due_at_ms is not None else None) or "?",
                format_duration(max(0, (job.due_at_ms - now_ms) // 1000)) if job.due_at_ms else "?",
                job.job_id or "?",
                job.job_type or "?",
                job.queue,
                layout.level_name(job.level),
            )
            for job in jobs
        ],
    )
    unread = sum(more.values())
    note = f"; {unread} more not read (--limit)" if unread else ""
    if unreachable:
        note += f"; not read, {len(unreachable)} of {LEVELS} levels {NODE_DOWN}"
    click.echo(f"{plural(len(jobs), 'job')} waiting{note}")


def _iso(ms: int | None) -> str | None:
    shown = utc_time(ms) if ms is not None else None
    return None if shown is None else shown.replace(" ", "T") + "Z"


def _as_json(job: WaitingJob, layout: DelayLayout) -> dict[str, object]:
    return {
        "job_id": job.job_id,
        "job_type": job.job_type,
        "queue": job.queue,
        "due_at": _iso(job.due_at_ms),
        "due_at_ms": job.due_at_ms,
        "attempt": job.attempt,
        "level": layout.level_name(job.level),
    }


@delays_group.command(name="retire")
@json_option
@connection_options
@run
async def retire_command(
    as_json: bool, url: str | None, ca_file: str | None, insecure: bool
) -> None:
    """Delete the old delay levels (jobsys.delay.*, jobsys.delivery: the layout from before the
    level count was fixed) once they are empty. Refuses, deleting nothing, while any still
    holds a job."""
    settings = build_settings(url, ca_file, insecure)
    async with BrokerConnection(settings) as connection:
        retired = await retire_legacy_levels(connection)
    if as_json:
        print_json({"queues": retired.queues, "exchanges": retired.exchanges})
        return
    if not retired.queues and not retired.exchanges:
        click.echo("no old delay levels on this broker")
        return
    click.echo(
        f"retired {len(retired.queues)} old delay levels and "
        f"{len(retired.exchanges)} exchanges ({', '.join(retired.exchanges[-1:])} included)"
    )
