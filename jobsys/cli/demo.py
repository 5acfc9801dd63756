"""``jobsys demo``: apply the example topology, run pools, publish jobs, show what happened."""

from __future__ import annotations

from pathlib import Path

import click

from jobsys.cli.common import build_settings, connection_options, run
from jobsys.cli.topology_file import load_or_exit
from jobsys.errors import ConnectionFailed

DEFAULT_TOPOLOGY = "topology/example.yaml"
#: The one line a demo that found no broker adds to the connection error.
NO_BROKER_HINT = "no broker? `jobsys demo --in-memory` runs the same demo without one"


@click.command()
@click.option(
    "--topology",
    "topology_file",
    default=DEFAULT_TOPOLOGY,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The demo topology (its job types need the handlers in jobsys.cli.demo_app).",
)
@click.option(
    "--in-memory",
    is_flag=True,
    help="Run the demo on the in-memory test kit (jobsys.testing): no broker needed.",
)
@connection_options
def demo(
    topology_file: str, in_memory: bool, url: str | None, ca_file: str | None, insecure: bool
) -> None:
    """Run the demo: jobs done, retried with backoff and dead-lettered, on a real broker (or
    in memory with --in-memory)."""
    if not Path(topology_file).is_file():
        raise click.UsageError(
            f"{topology_file} not found; run the demo from the jobsys checkout or pass --topology"
        )
    loaded = load_or_exit(topology_file)
    if in_memory:

        @run
        async def in_memory_body() -> int:
            from jobsys.cli.demo_memory import run_demo_in_memory

            return await run_demo_in_memory(loaded, click.echo)

        raise SystemExit(in_memory_body())
    settings = build_settings(url, ca_file, insecure)

    @run
    async def body() -> int:
        from jobsys.cli.demo_run import run_demo  # loads the worker and producer only when needed

        try:
            return await run_demo(settings, loaded, click.echo)
        except ConnectionFailed:
            click.echo(NO_BROKER_HINT, err=True)
            raise

    raise SystemExit(body())
