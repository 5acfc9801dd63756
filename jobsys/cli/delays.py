"""``jobsys delays status``: how many jobs wait in each delay level of a topology."""

from __future__ import annotations

import click

from jobsys.broker.connection import BrokerConnection
from jobsys.cli.common import build_settings, connection_options, run, topology_option
from jobsys.cli.topology import load_or_exit
from jobsys.duration import format_duration
from jobsys.ops.status import waiting_per_level
from jobsys.topology.delays import level_count, level_name, level_ttl_ms

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
    topology = load_or_exit(topology_file).topology
    levels = level_count(topology.delays.max_delay)
    settings = build_settings(url, ca_file, insecure)
    async with BrokerConnection(settings) as connection:
        counts = await waiting_per_level(connection, levels)
    rows = [("LEVEL", "TTL", "WAITING")]
    for level, waiting in enumerate(counts):
        shown = NOT_DECLARED if waiting is None else str(waiting)
        rows.append((level_name(level), format_duration(level_ttl_ms(level) / 1000), shown))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())
    total = sum(count for count in counts if count is not None)
    missing = sum(1 for count in counts if count is None)
    note = f" ({missing} of {levels} {NOT_DECLARED})" if missing else ""
    click.echo(f"total: {total} job{'s' if total != 1 else ''} waiting in {levels} levels{note}")
