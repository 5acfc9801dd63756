"""``jobsys delays status|retire``: the broker-side delay levels of a topology."""

from __future__ import annotations

import click

from jobsys.broker.connection import BrokerConnection
from jobsys.cli.common import build_settings, connection_options, run, topology_option
from jobsys.cli.output import Column, json_option, plural, print_json, print_table
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
    total = sum(count for count in counts if count is not None)
    missing = sum(1 for count in counts if count is None)
    if as_json:
        print_json(
            {
                "namespace": layout.namespace,
                "levels": [
                    {
                        "name": layout.level_name(level),
                        "ttl_s": level_ttl_ms(level) / 1000,
                        "waiting": waiting,
                    }
                    for level, waiting in enumerate(counts)
                ],
                "total": total,
                "missing_levels": missing,
                "legacy_levels": legacy,
            }
        )
        return
    print_table(
        [Column("level"), Column("ttl", "right"), Column("waiting", "right")],
        [
            (
                layout.level_name(level),
                format_duration(level_ttl_ms(level) / 1000),
                NOT_DECLARED if waiting is None else str(waiting),
            )
            for level, waiting in enumerate(counts)
        ],
    )
    note = f" ({missing} of {LEVELS} {NOT_DECLARED})" if missing else ""
    click.echo(f"total: {plural(total, 'job')} waiting in {LEVELS} levels{note}")
    if legacy:
        click.echo(
            f"old delay levels (jobsys.delay.*, {len(legacy)} of them) hold "
            f"{plural(sum(legacy.values()), 'job')}; they deliver on time, and "
            "`jobsys delays retire` removes them once empty"
        )


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
