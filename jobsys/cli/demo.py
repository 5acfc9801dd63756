"""``jobsys demo``: apply the example topology, run pools, publish jobs, show what happened."""

from __future__ import annotations

from pathlib import Path

import click

from jobsys.cli.common import build_settings, connection_options, run
from jobsys.cli.topology import load_or_exit

DEFAULT_TOPOLOGY = "topology/example.yaml"


@click.command()
@click.option(
    "--topology",
    "topology_file",
    default=DEFAULT_TOPOLOGY,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The demo topology (its job types need the handlers in jobsys.cli.demo_app).",
)
@connection_options
def demo(topology_file: str, url: str | None, ca_file: str | None, insecure: bool) -> None:
    """Run the demo: jobs done, retried with backoff and dead-lettered, on a real broker."""
    if not Path(topology_file).is_file():
        raise click.UsageError(
            f"{topology_file} not found; run the demo from the jobsys checkout or pass --topology"
        )
    loaded = load_or_exit(topology_file)
    settings = build_settings(url, ca_file, insecure)

    @run
    async def body() -> int:
        from jobsys.cli.demo_run import run_demo  # loads the worker and producer only when needed

        return await run_demo(settings, loaded, click.echo)

    raise SystemExit(body())
