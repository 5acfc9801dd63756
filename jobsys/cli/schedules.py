"""``jobsys scheduler`` (stand for election and fire the topology's schedules) and ``jobsys
schedules list|fire``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import click

from jobsys.broker.connection import BrokerConnection
from jobsys.cli.common import (
    EXIT_INVALID,
    build_settings,
    configure_logging,
    connection_options,
    fail,
    run,
    topology_option,
    verbosity,
)
from jobsys.cli.output import Column, json_option, print_json, print_table
from jobsys.cli.topology_file import load_or_exit
from jobsys.cli.worker import import_app
from jobsys.errors import JobsysError
from jobsys.process.serve import exit_code_for, serve
from jobsys.process.together import models_of
from jobsys.publish.producer import Producer
from jobsys.schedule.check import check_payloads
from jobsys.schedule.scheduler import Scheduler
from jobsys.schedule.status import fire_now, read_status, rows
from jobsys.topology.loader import LoadedTopology
from jobsys.wire.display import escape


def _when(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _with_schedules(topology_file: str) -> LoadedTopology:
    loaded = load_or_exit(topology_file)
    if not loaded.topology.schedules:
        raise click.exceptions.Exit(
            fail(f"error: {escape(topology_file)} has no schedules: nothing to fire", EXIT_INVALID)
        )
    return loaded


@click.command("scheduler")
@topology_option(required=True, help="The topology file with the schedules.")
@click.option(
    "--app",
    "app_target",
    metavar="APP_MODULE:OBJECT",
    help="Validate each schedule's payload with this app's handler models before firing.",
)
@connection_options
@click.pass_context
def scheduler(
    ctx: click.Context,
    topology_file: str,
    app_target: str | None,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Fire the topology's schedules while the broker elects this copy: run as many copies as
    you like, on any hosts; exactly one fires. SIGTERM or SIGINT stops it.

    Logs who leads and each fire by default; -v adds debug lines."""
    configure_logging(verbosity(ctx), service=True)
    loaded = _with_schedules(topology_file)
    settings = build_settings(url, ca_file, insecure)
    models = models_of(import_app(app_target)) if app_target else {}
    try:
        check_payloads(loaded, models, settings.max_payload_bytes)
        running = Scheduler(settings, loaded, models=models)
        code = asyncio.run(serve(running))
    except JobsysError as exc:
        raise click.exceptions.Exit(fail(f"error: {exc}", exit_code_for(exc))) from None
    stats = running.stats
    click.echo(
        f"scheduler stopped: {stats.fired} fired, {stats.skipped} passed over, led "
        f"{stats.terms} time{'s' if stats.terms != 1 else ''}",
        err=True,
    )
    raise click.exceptions.Exit(code)


@click.group(name="schedules")
def schedules_group() -> None:
    """The topology's schedules: when they fire next, when they fired last, who leads."""


@schedules_group.command(name="list")
@topology_option(required=True, help="The topology file with the schedules.")
@json_option
@connection_options
@run
async def list_command(
    topology_file: str, as_json: bool, url: str | None, ca_file: str | None, insecure: bool
) -> None:
    """Each schedule: its timing, its next fire, its last fire (as the leader last wrote it),
    and which scheduler leads."""
    loaded = _with_schedules(topology_file)
    settings = build_settings(url, ca_file, insecure)
    async with BrokerConnection(settings) as connection:
        state = await read_status(connection, loaded.topology)
    table = rows(loaded.topology, state)
    leader = state.leader if state is not None else None
    if as_json:
        print_json(
            {
                "leader": None
                if leader is None
                else {"name": leader.name, "since": _when(leader.since_ms // 1000)},
                "schedules": [
                    {
                        "name": row.name,
                        "job_type": row.job_type,
                        "timing": row.timing,
                        "catch_up": row.catch_up,
                        "next_fire": _when(row.next_fire_s),
                        "last_fired_slot": None
                        if row.last_fired_s is None
                        else _when(row.last_fired_s),
                        "last_job_id": row.last_job_id,
                    }
                    for row in table
                ],
            }
        )
        return
    print_table(
        [
            Column("schedule", max_width=60),
            Column("job type", max_width=40),
            Column("when", max_width=60),
            Column("next fire"),
            Column("last fired"),
        ],
        [
            (row.name, row.job_type, row.timing, _when(row.next_fire_s), _when(row.last_fired_s))
            for row in table
        ],
    )
    if leader is None:
        click.echo("leader: none yet (no scheduler has run against this broker)")
    else:
        click.echo(f"leader: {escape(leader.name)} (since {_when(leader.since_ms // 1000)})")


@schedules_group.command(name="fire")
@click.argument("name")
@topology_option(required=True, help="The topology file with the schedules.")
@connection_options
@run
async def fire_command(
    name: str, topology_file: str, url: str | None, ca_file: str | None, insecure: bool
) -> None:
    """Publish schedule NAME's job now, confirmed, outside its slots (the schedule's own fires
    go on as before); prints the job id."""
    loaded = _with_schedules(topology_file)
    settings = build_settings(url, ca_file, insecure)
    async with Producer(settings, loaded) as producer:
        receipt = await fire_now(producer, loaded.topology, name)
    click.echo(escape(receipt.job_id))
