"""Loading the topology file for a command: every problem printed, then exit 2.

Apart from ``jobsys.cli.topology`` so that a command that only reads the file (``jobsys
worker`` above all) does not import the planner, the apply path and their views.
"""

from __future__ import annotations

import click

from jobsys.cli.common import EXIT_INVALID
from jobsys.cli.output import plural
from jobsys.errors import TopologyLoadError
from jobsys.topology.loader import LoadedTopology, load_topology, printable


def load_or_exit(path: str) -> LoadedTopology:
    """Load a topology file, or print every problem and exit 2."""
    try:
        return load_topology(path)
    except TopologyLoadError as exc:
        raise invalid(path, exc) from None


def invalid(path: str, exc: TopologyLoadError) -> click.exceptions.Exit:
    """Print every problem of ``exc`` and a count; the exit (code 2) to raise."""
    for problem in exc.problems:
        click.echo(problem, err=True)
    count = len(exc.problems)
    click.secho(f"{printable(path)}: {plural(count, 'problem')}", fg="red", err=True)
    return click.exceptions.Exit(EXIT_INVALID)
