"""``jobsys topology``: validate, route (offline); plan, apply (against the broker); export."""

from __future__ import annotations

import json

import click

from jobsys.broker.connection import BrokerConnection
from jobsys.cli.common import (
    EXIT_CONFLICT,
    EXIT_INVALID,
    build_settings,
    connection_options,
    run,
)
from jobsys.errors import TopologyLoadError
from jobsys.ops.declare import apply_topology, plan_topology
from jobsys.settings import Settings
from jobsys.topology.definitions import export_definitions
from jobsys.topology.entities import desired_entities
from jobsys.topology.loader import LoadedTopology, load_topology, printable
from jobsys.topology.plan import ACTIONS, ApplyResult, Plan
from jobsys.topology.routing import route_job_type

_COLORS = {"create": "green", "conflict": "yellow", "extra": "cyan"}
_KINDS = (("exchange", "exchanges"), ("queue", "queues"), ("binding", "bindings"))


def load_or_exit(path: str) -> LoadedTopology:
    """Load a topology file, or print every problem and exit 2."""
    try:
        return load_topology(path)
    except TopologyLoadError as exc:
        raise _invalid(path, exc) from None


def _invalid(path: str, exc: TopologyLoadError) -> click.exceptions.Exit:
    """Print every problem of ``exc`` and a count; the exit (code 2) to raise."""
    for problem in exc.problems:
        click.echo(problem, err=True)
    count = len(exc.problems)
    noun = "problem" if count == 1 else "problems"
    click.secho(f"{printable(path)}: {count} {noun}", fg="red", err=True)
    return click.exceptions.Exit(EXIT_INVALID)


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
        f"{printable(file)}: valid ({len(t.exchanges)} exchanges, {len(t.queues)} queues, "
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


def _no_management_option(func: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--no-management",
        is_flag=True,
        default=False,
        help="Probe over AMQP only, even when the management API answers. "
        "Env: JOBSYS_MANAGEMENT_URL names the API (default: the broker's host, port 15672).",
    )(func)


@topology.command()
@click.argument("file", type=click.Path(dir_okay=False))
@connection_options
@_no_management_option
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the plan as JSON.")
def plan(
    file: str,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
    no_management: bool,
    as_json: bool,
) -> None:
    """Show what `apply FILE` would do, without changing anything.

    + create, = matches, ~ exists with other arguments, * binding apply will ensure,
    - on the broker but not in the file. Exits 3 when something conflicts.
    """
    loaded = load_or_exit(file)
    settings = build_settings(url, ca_file, insecure)
    result = run(_plan)(loaded, settings, use_management=not no_management)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        _print_plan(file, settings, result)
    if result.has_conflicts:
        raise click.exceptions.Exit(EXIT_CONFLICT)


async def _plan(loaded: LoadedTopology, settings: Settings, *, use_management: bool) -> Plan:
    async with BrokerConnection(settings) as conn:
        loaded.check_broker_version(conn.server_version)
        entities = desired_entities(loaded.topology)
        loaded.check_declarable(entities)
        return await plan_topology(conn, entities, use_management=use_management)


def _print_plan(file: str, settings: Settings, result: Plan) -> None:
    how = "the management API" if result.method == "management" else "probing over AMQP"
    click.echo(f"plan for {file} on {settings.masked_url} (vhost {settings.vhost}), via {how}")
    for kind, title in _KINDS:
        items = [i for action in ACTIONS for i in result.of(action) if i.kind == kind]
        if items:
            click.echo(f"{title}:")
        for item in items:
            click.secho(f"  {item.describe()}", fg=_COLORS.get(item.action))
    if result.has_conflicts:
        click.echo(
            "note: apply changes nothing while anything conflicts; delete or rename the "
            "conflicting entities, or change the file to match"
        )
    if result.method == "probe":
        click.echo(
            f"note: {result.note}; extras (on the broker, not in the file) need the management "
            "API, and the broker reveals arguments it checks on redeclare only"
        )
    click.echo(f"summary: {result.summary()}")


@topology.command()
@click.argument("file", type=click.Path(dir_okay=False))
@connection_options
@_no_management_option
def apply(
    file: str, url: str | None, ca_file: str | None, insecure: bool, no_management: bool
) -> None:
    """Declare every exchange, queue and binding of FILE that the broker lacks.

    Idempotent. Changes nothing at all when the file is invalid or when an entity exists with
    other arguments (exit 3, with the differences). Leaves entities not in the file alone.
    """
    loaded = load_or_exit(file)
    settings = build_settings(url, ca_file, insecure)
    result = run(_apply)(loaded, settings, use_management=not no_management)
    for item in result.created:
        click.secho(f"created {item.kind} {item.name}", fg="green")
    if result.ensured:
        click.echo(f"ensured {len(result.ensured)} bindings")
    matching = len(result.plan.of("match"))
    if result.created:
        click.echo(f"applied {file}: {len(result.created)} created, {matching} already matching")
    else:
        click.echo(f"nothing to change: {matching} entities already match {file}")


async def _apply(
    loaded: LoadedTopology, settings: Settings, *, use_management: bool
) -> ApplyResult:
    async with BrokerConnection(settings) as conn:
        return await apply_topology(conn, loaded, use_management=use_management)


@topology.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--vhost", default="/", show_default=True, help="Virtual host of the definitions.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to this file instead of stdout.",
)
def export(file: str, vhost: str, output: str | None) -> None:
    """Write FILE as RabbitMQ definitions JSON, for brokers that load definitions at boot."""
    loaded = load_or_exit(file)
    entities = desired_entities(loaded.topology)
    try:
        # Definitions a broker loads at boot must hold only what it accepts, like apply.
        loaded.check_declarable(entities)
    except TopologyLoadError as exc:
        raise _invalid(file, exc) from None
    text = json.dumps(export_definitions(entities, vhost), indent=2)
    if output is None:
        click.echo(text)
    else:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        click.echo(f"wrote {output}", err=True)
