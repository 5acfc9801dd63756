"""``jobsys topology``: validate, route (offline); plan, apply (against the broker); export."""

from __future__ import annotations

import click

from jobsys.cli.common import EXIT_INVALID
from jobsys.errors import TopologyLoadError
from jobsys.topology.check import route_job_type
from jobsys.topology.loader import LoadedTopology, load_topology


def load_or_exit(path: str) -> LoadedTopology:
    """Load a topology file, or print every problem and exit 2."""
    try:
        return load_topology(path)
    except TopologyLoadError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        count = len(exc.problems)
        click.secho(f"{path}: {count} problem{'s' if count != 1 else ''}", fg="red", err=True)
        raise click.exceptions.Exit(EXIT_INVALID) from None


@click.group()
def topology() -> None:
    """Validate, plan, apply and inspect a topology file."""


@topology.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Check FILE and report every problem as file:line:column: message."""
    loaded = load_or_exit(file)
    t = loaded.topology
    click.echo(
        f"{file}: valid ({len(t.exchanges)} exchanges, {len(t.queues)} queues, "
        f"{len(t.bindings)} bindings, {len(t.job_types)} job types)"
    )


@topology.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("job_type")
def route(file: str, job_type: str) -> None:
    """Print the queues JOB_TYPE reaches, one per line."""
    loaded = load_or_exit(file)
    spec = loaded.topology.job_types.get(job_type)
    if spec is None:
        known = ", ".join(sorted(loaded.topology.job_types)) or "none"
        click.secho(f"unknown job type {job_type!r} (known: {known})", fg="red", err=True)
        raise click.exceptions.Exit(EXIT_INVALID)
    for queue in route_job_type(loaded.topology, spec):
        click.echo(queue)
