"""``jobsys status``: queue depths, dead letters and delayed jobs of a topology, once or live."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click

from jobsys.cli.common import build_settings, connection_options, run, topology_option
from jobsys.cli.topology import load_or_exit
from jobsys.ops.status import StatusReader, render_status
from jobsys.settings import Settings
from jobsys.topology.model import Topology


@click.command()
@topology_option(required=True, help="The topology file whose queues to show.")
@click.option(
    "--watch",
    type=float,
    default=None,
    is_flag=False,
    flag_value=2.0,
    metavar="[SECONDS]",
    help="Refresh every SECONDS (default 2) until Ctrl-C.",
)
@click.option(
    "--no-management",
    is_flag=True,
    default=False,
    help="Read over AMQP only (no unacked counts, no rates). Env: JOBSYS_MANAGEMENT_URL "
    "names the management API (default: the broker host, port 15672).",
)
@connection_options
def status(
    topology_file: str,
    watch: float | None,
    no_management: bool,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Per queue: ready, unacked, consumers, dead-letter depth; jobs waiting in delay levels."""
    loaded = load_or_exit(topology_file)
    if watch is not None and watch <= 0:
        raise click.BadParameter("must be above 0 seconds", param_hint="--watch")
    settings = build_settings(url, ca_file, insecure)
    _show(settings, loaded.topology, not no_management, watch)


@run
async def _show(
    settings: Settings, topology: Topology, use_management: bool, watch_s: float | None
) -> None:
    reader = StatusReader(settings, topology, use_management=use_management)
    try:
        if watch_s is None:
            click.echo(render_status(await reader.read()))
            return
        await _watch(reader, watch_s)
    finally:
        await reader.close()


async def _watch(reader: StatusReader, every_s: float) -> None:
    # Ctrl-C is how a watch ends, not an error: stop cleanly and exit 0.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        while not stop.is_set():
            text = render_status(await reader.read())
            click.clear()
            click.echo(text)
            click.echo(f"\nrefreshing every {every_s:g}s; Ctrl-C to stop")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
