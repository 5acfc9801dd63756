"""``jobsys topology``: validate, route (offline); plan, apply, delete (against the broker);
export.

Every subcommand names its file the same way as the rest of the CLI: ``--topology FILE`` or
``JOBSYS_TOPOLOGY``; FILE may also be given first, as before.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from jobsys.broker.connection import BrokerConnection
from jobsys.cli.common import (
    EXIT_CONFLICT,
    EXIT_INVALID,
    build_settings,
    connection_options,
    fail,
    run,
)
from jobsys.cli.output import json_option, plural, print_json
from jobsys.cli.plan_view import is_delay_level, print_flow, print_plan
from jobsys.cli.topology_file import invalid, load_or_exit
from jobsys.errors import TopologyLoadError
from jobsys.ops.declare import apply_topology, plan_for_broker
from jobsys.settings import Settings
from jobsys.topology.broker_facts import BrokerFacts, fit_to_broker, parse_version
from jobsys.topology.definitions import export_definitions
from jobsys.topology.delays import DelayLayout
from jobsys.topology.entities import desired_entities
from jobsys.topology.flow import flow_json
from jobsys.topology.loader import LoadedTopology, printable
from jobsys.topology.plan import ApplyResult, Plan
from jobsys.topology.routing import route_job_type
from jobsys.wire.display import escape

F = TypeVar("F", bound=Callable[..., Any])

_NO_FILE = "give the topology file: --topology FILE, JOBSYS_TOPOLOGY, or FILE first"


#: What ``--for-version`` takes: 4.1.4, 3.13, 4.0.0-rc.1, 4.0.0+beta.
_VERSION = re.compile(r"[0-9]{1,4}(\.[0-9]{1,4}){0,3}([-+][0-9A-Za-z.-]{1,16})?")


def _export_facts(for_version: str | None, cluster_nodes: int | None) -> BrokerFacts | None:
    """The broker ``export --for-version`` fits to (None: not fitted)."""
    if for_version is None:
        if cluster_nodes is not None:
            raise click.UsageError("--cluster-nodes needs --for-version")
        return None
    version: tuple[int, ...] = ()
    # A longer "version" is no version (and int() of thousands of digits is costly).
    if len(for_version) <= 32 and _VERSION.fullmatch(for_version):
        version = parse_version(for_version)
    if not version:
        raise click.BadParameter(
            f"'{escape(for_version[:40])}' is not a RabbitMQ version (write e.g. 3.13.7 or 4.1.4)",
            param_hint="--for-version",
        )
    return BrokerFacts(
        product="RabbitMQ",
        version=version,
        members=cluster_nodes,
        members_source="--cluster-nodes" if cluster_nodes is not None else "",
    )


def file_arguments(func: F) -> F:
    """``[FILE]`` and ``--topology FILE`` (env ``JOBSYS_TOPOLOGY``): one of them names the file."""
    func = click.option(
        "--topology",
        "topology_option",
        envvar="JOBSYS_TOPOLOGY",
        type=click.Path(dir_okay=False),
        help="The topology file (or give it as FILE). Env: JOBSYS_TOPOLOGY.",
    )(func)
    return func


def the_file(file: str | None, option: str | None) -> str:
    """The topology file named by the FILE argument or ``--topology``/``JOBSYS_TOPOLOGY``;
    FILE wins over the environment, and both on the command line must agree."""
    if file is None:
        if option is None:
            raise click.UsageError(_NO_FILE)
        return option
    source = click.get_current_context().get_parameter_source("topology_option")
    if option is not None and option != file and source == ParameterSource.COMMANDLINE:
        raise click.UsageError(
            f"FILE ({printable(file)}) and --topology ({printable(option)}) name different files"
        )
    return file


@click.group()
def topology() -> None:
    """Validate, plan, apply and inspect a topology file."""


@topology.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@file_arguments
@json_option
def validate(file: str | None, topology_option: str | None, as_json: bool) -> None:
    """Check FILE and report every problem as file:line:column: message."""
    path = the_file(file, topology_option)
    t = load_or_exit(path).topology
    counts = {
        "exchanges": len(t.exchanges),
        "queues": len(t.queues),
        "bindings": len(t.bindings),
        "job_types": len(t.job_types),
    }
    if as_json:
        print_json({"file": path, "valid": True, "counts": counts})
        return
    click.echo(
        f"{printable(path)}: valid ({plural(counts['exchanges'], 'exchange')}, "
        f"{plural(counts['queues'], 'queue')}, {plural(counts['bindings'], 'binding')}, "
        f"{plural(counts['job_types'], 'job type')})"
    )


@topology.command()
@click.argument("args", nargs=-1, metavar="[FILE] JOB_TYPE")
@file_arguments
@json_option
def route(args: tuple[str, ...], topology_option: str | None, as_json: bool) -> None:
    """Print the queues JOB_TYPE reaches, one per line, as RabbitMQ would route it."""
    if len(args) not in (1, 2):
        raise click.UsageError("give JOB_TYPE (and FILE first, unless --topology names it)")
    path = the_file(args[0] if len(args) == 2 else None, topology_option)
    job_type = args[-1]
    loaded = load_or_exit(path)
    spec = loaded.topology.job_types.get(job_type)
    if spec is None:
        known = sorted(loaded.topology.job_types)
        close = difflib.get_close_matches(job_type, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        message = f"unknown job type {job_type!r}{hint} (known: {', '.join(known) or 'none'})"
        raise click.exceptions.Exit(fail(message, EXIT_INVALID))
    queues = route_job_type(loaded.topology, spec)
    if as_json:
        print_json({"job_type": job_type, "queues": queues})
        return
    for queue in queues:
        click.echo(queue)


def no_management_option(func: F) -> F:
    return click.option(
        "--no-management",
        is_flag=True,
        default=False,
        help="Probe over AMQP only, even when the management API answers. "
        "Env: JOBSYS_MANAGEMENT_URL names the API (default: the broker's host, port 15672).",
    )(func)


@topology.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@file_arguments
@connection_options
@no_management_option
@click.option(
    "--changes-only", is_flag=True, default=False, help="Leave out what matches and extras."
)
@click.option(
    "--all",
    "every_line",
    is_flag=True,
    default=False,
    help="List every entity, the matching ones and each delay level too.",
)
@json_option
def plan(
    file: str | None,
    topology_option: str | None,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
    no_management: bool,
    changes_only: bool,
    every_line: bool,
    as_json: bool,
) -> None:
    """Show what `apply` would do, without changing anything.

    Changes first: + create, ~ exists with other arguments, * binding apply will ensure; then
    how many match, and - what is on the broker but not in the file. Exits 3 when something
    conflicts.
    """
    path = the_file(file, topology_option)
    loaded = load_or_exit(path)
    settings = build_settings(url, ca_file, insecure)
    result = run(_plan)(loaded, settings, use_management=not no_management)
    if as_json:
        print_json({**result.to_json(), "flow": flow_json(loaded.topology)})
    else:
        how = "the management API" if result.method == "management" else "probing over AMQP"
        click.echo(
            f"plan for {printable(path)} on {settings.masked_url} "
            f"(vhost {printable(settings.vhost)}), via {how}"
        )

        print_plan(
            result,
            loaded.topology.delay_layout,
            every_line=every_line,
            changes_only=changes_only,
        )
        print_flow(loaded.topology)
    if result.has_conflicts:
        raise click.exceptions.Exit(EXIT_CONFLICT)


async def _plan(loaded: LoadedTopology, settings: Settings, *, use_management: bool) -> Plan:
    async with BrokerConnection(settings) as conn:
        return await plan_for_broker(conn, loaded, use_management=use_management)


@topology.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@file_arguments
@connection_options
@no_management_option
@json_option
def apply(
    file: str | None,
    topology_option: str | None,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
    no_management: bool,
    as_json: bool,
) -> None:
    """Declare every exchange, queue and binding of FILE that the broker lacks.

    Idempotent. Changes nothing at all when the file is invalid or when an entity exists with
    other arguments (exit 3, with the differences). Leaves entities not in the file alone.
    """
    path = the_file(file, topology_option)
    loaded = load_or_exit(path)
    settings = build_settings(url, ca_file, insecure)
    result = run(_apply)(loaded, settings, use_management=not no_management)
    matching = len(result.plan.of("match"))
    if as_json:
        print_json(
            {
                "file": path,
                "created": [item.to_json() for item in result.created],
                "ensured": len(result.ensured),
                "matching": matching,
            }
        )
        return
    _print_applied(path, result, matching, loaded.topology.delay_layout)


def _print_applied(path: str, result: ApplyResult, matching: int, layout: DelayLayout) -> None:
    levels = [item for item in result.created if is_delay_level(item, layout)]
    for item in result.created:
        if item not in levels:
            click.secho(f"created {item.kind} {escape(item.name)}", fg="green")
    if levels:
        click.secho(
            f"created the delay levels of {layout.namespace!r} "
            f"({plural(len(levels), 'entity', 'entities')})",
            fg="green",
        )
    if result.ensured:
        click.echo(f"ensured {plural(len(result.ensured), 'binding')}")
    if result.created:
        click.echo(
            f"applied {printable(path)}: {len(result.created)} created, {matching} already matching"
        )
    else:
        click.echo(f"nothing to change: {matching} entities already match {printable(path)}")


async def _apply(
    loaded: LoadedTopology, settings: Settings, *, use_management: bool
) -> ApplyResult:
    async with BrokerConnection(settings) as conn:
        return await apply_topology(conn, loaded, use_management=use_management)


@topology.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@file_arguments
@click.option(
    "--vhost",
    default=None,
    help="Virtual host of the definitions. Default: the vhost of --url / JOBSYS_URL.",
)
@click.option("--url", default=None, metavar="AMQP_URL", help="Broker URL, for its vhost only.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to this file instead of stdout.",
)
@click.option(
    "--for-version",
    "for_version",
    default=None,
    metavar="X.Y.Z",
    help="Fit the definitions to this RabbitMQ version, as plan and apply fit them to the broker "
    "they reach (e.g. 4.x: dead-letter queues without a delivery limit); notes on stderr.",
)
@click.option(
    "--cluster-nodes",
    type=click.IntRange(1, 1000),
    default=None,
    help="The broker is a cluster of this many nodes (with --for-version): classic queues that "
    "would hold jobs are refused, replica counts checked.",
)
def export(
    file: str | None,
    topology_option: str | None,
    vhost: str | None,
    url: str | None,
    output: str | None,
    for_version: str | None,
    cluster_nodes: int | None,
) -> None:
    """Write FILE as RabbitMQ definitions JSON, for brokers that load definitions at boot."""
    facts = _export_facts(for_version, cluster_nodes)
    path = the_file(file, topology_option)
    loaded = load_or_exit(path)
    if vhost is None:
        vhost = build_settings(url, None, False).vhost
    entities = desired_entities(loaded.topology, cluster=facts is not None and facts.is_cluster)
    notes: tuple[str, ...] = ()
    try:
        if facts is not None:
            loaded.check_broker_version(facts.version)
            loaded.check_cluster(facts)
            fitted = fit_to_broker(entities, loaded.topology, facts)
            entities, notes = fitted.entities, fitted.notes
        # Definitions a broker loads at boot must hold only what it accepts, like apply.
        loaded.check_declarable(entities)
    except TopologyLoadError as exc:
        raise invalid(path, exc) from None
    for note in notes:
        click.echo(f"note: {escape(note)}", err=True)
    text = json.dumps(export_definitions(entities, vhost), indent=2)
    if output is None:
        click.echo(text)
        return
    try:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    except OSError as exc:
        raise click.exceptions.Exit(
            fail(f"error: cannot write {printable(output)}: {exc.strerror}", EXIT_INVALID)
        ) from None
    click.echo(f"wrote {printable(output)}", err=True)
