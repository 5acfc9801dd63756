"""``jobsys jobs show ID``: one job's timeline and current state, from the job history;
``jobsys jobs tail``: the history as it is written."""

from __future__ import annotations

import sys
from typing import Any

import click

from jobsys.cli.common import build_settings, connection_options, run, topology_option
from jobsys.cli.output import Column, json_option, print_json, print_json_line, print_table
from jobsys.cli.topology_file import load_or_exit
from jobsys.duration import parse_duration_s
from jobsys.ops.history import job_timeline
from jobsys.wire.display import escape, utc_time
from jobsys.wire.envelope import check_job_id
from jobsys.wire.history import HistoryEvent, job_state

_COLUMNS = (
    Column("time (UTC)"),
    Column("event"),
    Column("attempt", "right"),
    Column("where", max_width=40),
    Column("details", max_width=80),
)


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration_s(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds <= 0:
        raise click.BadParameter("must be more than 0s")
    return seconds


def show_command(jobs_group: click.Group) -> None:
    """Add ``show`` to the ``jobs`` group."""

    @jobs_group.command(name="show")
    @click.argument("job_id")
    @topology_option(required=True, help="The topology file (its history: section).")
    @click.option(
        "--since",
        callback=_since,
        metavar="DURATION",
        help="Read the history from this long ago (e.g. 2h); default: all the broker keeps.",
    )
    @json_option
    @connection_options
    @run
    async def show(
        job_id: str,
        topology_file: str,
        since: float | None,
        as_json: bool,
        url: str | None,
        ca_file: str | None,
        insecure: bool,
    ) -> None:
        """Print the recorded timeline of job JOB_ID (taken, retried, succeeded,
        dead-lettered...) and where it stands now. Needs `history:` in the topology."""
        from jobsys.broker.connection import BrokerConnection

        checked = check_job_id(job_id)  # a malformed or oversized id: exit 2
        loaded = load_or_exit(topology_file)
        settings = build_settings(url, ca_file, insecure)
        async with BrokerConnection(settings) as connection:
            events = await job_timeline(connection, loaded.topology, checked, since_s=since)
        state = job_state(events)
        if as_json:
            print_json(
                {
                    "job_id": checked,
                    "state": state.state,
                    "summary": state.summary,
                    "interrupted_attempts": list(state.interrupted),
                    "events": [_as_json(event) for event in events],
                }
            )
            return
        if events:
            print_table(_COLUMNS, [_row(event, state.interrupted) for event in events])
        click.echo(f"job {escape(checked)}: {escape(state.summary)}")


def _row(event: HistoryEvent, interrupted: tuple[int, ...]) -> list[str]:
    kind = event.kind.replace("_", "-")
    if event.kind == "started" and event.attempt in interrupted:
        kind = "started (interrupted)"
    details = ", ".join(f"{key}={value}" for key, value in event.details.items())
    return [
        utc_time(event.at_ms) or str(event.at_ms),
        kind,
        str(event.attempt),
        f"{event.host} pid {event.pid} ({event.queue})",
        details,
    ]


def _as_json(event: HistoryEvent) -> dict[str, Any]:
    at = utc_time(event.at_ms)
    return {
        "kind": event.kind,
        "at": None if at is None else at.replace(" ", "T") + "Z",
        "at_ms": event.at_ms,
        "attempt": event.attempt,
        "queue": event.queue,
        "host": event.host,
        "pid": event.pid,
        "details": dict(event.details),
    }


def tail_command(jobs_group: click.Group) -> None:
    """Add ``tail`` to the ``jobs`` group."""

    @jobs_group.command(name="tail")
    @topology_option(required=True, help="The topology file (its history: section).")
    @click.option("--job-type", help="Only jobs of this type.")
    @click.option("--queue", help="Only jobs of this queue.")
    @click.option("--failed", is_flag=True, help="Only retries and dead letters.")
    @click.option(
        "--since",
        callback=_since,
        metavar="DURATION",
        help="Start this long ago (e.g. 10m); default: from now on.",
    )
    @json_option
    @connection_options
    @run
    async def tail(
        topology_file: str,
        job_type: str | None,
        queue: str | None,
        failed: bool,
        since: float | None,
        as_json: bool,
        url: str | None,
        ca_file: str | None,
        insecure: bool,
    ) -> None:
        """Follow the job history live, one line per event, until interrupted. Needs
        `history:` in the topology."""
        from jobsys.broker.connection import BrokerConnection
        from jobsys.ops.history import follow

        loaded = load_or_exit(topology_file)
        settings = build_settings(url, ca_file, insecure)

        def show(event: HistoryEvent) -> None:
            if job_type is not None and event.job_type != job_type:
                return
            if queue is not None and event.queue != queue:
                return
            if failed and event.kind not in ("retried", "dead_lettered"):
                return
            if as_json:
                print_json_line(
                    {"job_id": event.job_id, "job_type": event.job_type, **_as_json(event)}
                )
                return
            time, kind, attempt, where, details = _row(event, ())
            line = f"{time}  {kind:<13} {event.job_id} ({event.job_type}) attempt {attempt}"
            click.echo(escape(f"{line}  {where}  {details}".rstrip()))
            sys.stdout.flush()

        async with BrokerConnection(settings) as connection:
            await follow(connection, loaded.topology, show, since_s=since)
