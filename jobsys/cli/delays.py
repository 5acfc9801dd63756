"""``jobsys delays status|retire``: the broker-side delay levels of a topology."""

from __future__ import annotations

import click

from jobsys.broker.connection import BrokerConnection
from jobsys.cli.common import build_settings, connection_options, run, topology_option
from jobsys.cli.topology import load_or_exit
from jobsys.duration import format_duration
from jobsys.ops.delays import retire_legacy_levels
from jobsys.ops.status import legacy_waiting, waiting_per_level
from jobsys.topology.delays import LEVELS, level_ttl_ms

NOT_DECLARED = "not declared - run `jobsys topology apply`"


@click.group(name="delays")
def delays_group() -> None:
    """Inspect the broker-side delay levels (delayed jobs and retry backoff)."""


@delays_group.command(name="status")
@topology_option(required=True, help="The topology file.")
@connection_options
@run
async def status_command(
    topology_file: str, url: str | None, ca_file: str | None, insecure: bool
) -> None:
    """Jobs waiting in each delay level, and in all."""
    layout = load_or_exit(topology_file).topology.delay_layout
    settings = build_settings(url, ca_file, insecure)
    async with BrokerConnection(settings) as connection:
        counts = await waiting_per_level(connection, layout)
        legacy = await legacy_waiting(connection)
    rows = [("LEVEL", "TTL", "WAITING")]
    for level, waiting in enumerate(counts):
        shown = NOT_DECLARED if waiting is None else str(waiting)
        rows.append((layout.level_name(level), format_duration(level_ttl_ms(level) / 1000), shown))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())
    total = sum(count for count in counts if count is not None)
    missing = sum(1 for count in counts if count is None)
    note = f" ({missing} of {LEVELS} {NOT_DECLARED})" if missing else ""
    click.echo(f"total: {total} job{'s' if total != 1 else ''} waiting in {LEVELS} levels{note}")
    if legacy:
        held = sum(legacy.values())
        click.echo(
            f"old delay levels (jobsys.delay.*, {len(legacy)} of them) hold {held} "
            f"job{'s' if held != 1 else ''}; they deliver on time, and `jobsys delays retire` "
            "removes them once empty"
        )


@delays_group.command(name="retire")
@connection_options
@run
async def retire_command(url: str | None, ca_file: str | None, insecure: bool) -> None:
    """Delete the old delay levels (jobsys.delay.*, jobsys.delivery: the layout from before the
    level count was fixed) once they are empty. Refuses, deleting nothing, while any still
    holds a job."""
    settings = build_settings(url, ca_file, insecure)
    async with BrokerConnection(settings) as connection:
        retired = await retire_legacy_levels(connection)
    if not retired.queues and not retired.exchanges:
        click.echo("no old delay levels on this broker")
        return
    click.echo(
        f"retired {len(retired.queues)} old delay levels and "
        f"{len(retired.exchanges)} exchanges ({', '.join(retired.exchanges[-1:])} included)"
    )
