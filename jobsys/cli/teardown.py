"""``jobsys topology delete``: remove what a topology file declared (``jobsys.ops.teardown``),
so trying things out leaves nothing behind."""

from __future__ import annotations

from typing import Any

import click

from jobsys.broker.connection import BrokerConnection
from jobsys.cli.common import EXIT_FAILED, build_settings, connection_options, run
from jobsys.cli.output import json_option, plural, print_json
from jobsys.cli.topology import (
    file_arguments,
    no_management_option,
    the_file,
    topology,
)
from jobsys.cli.topology_file import load_or_exit
from jobsys.ops.teardown import TeardownPlan, TeardownResult, plan_teardown, teardown
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, printable
from jobsys.wire.display import escape


@topology.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@file_arguments
@connection_options
@no_management_option
@click.option("--yes", is_flag=True, default=False, help="Really delete (without: only show).")
@click.option(
    "--force",
    is_flag=True,
    default=False,
    help="Delete queues that hold jobs (the jobs go too), and the namespace's delay levels "
    "even when other files may use them.",
)
@json_option
def delete(
    file: str | None,
    topology_option: str | None,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
    no_management: bool,
    yes: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Delete what FILE declared: its queues, their dead-letter queues, its exchanges, and the
    delay levels of its namespace when nothing else uses them.

    Without --yes, shows what it would delete. Refuses, deleting nothing, while a queue holds
    jobs (unless --force). An exchange still bound from elsewhere is kept.
    """
    path = the_file(file, topology_option)
    loaded = load_or_exit(path)
    settings = build_settings(url, ca_file, insecure)
    plan, result = run(_delete)(loaded, settings, not no_management, yes=yes, force=force)
    if as_json:
        data: dict[str, Any] = {
            "file": path,
            "queues": plan.queues,
            "exchanges": plan.exchanges,
            "kept": plan.kept if result is None else result.kept,
            "deleted": result is not None,
        }
        print_json(data)
    elif result is None:
        _print_teardown_plan(plan, loaded.topology.namespace)
    else:
        click.echo(
            f"deleted {plural(len(result.deleted_queues), 'queue')} and "
            f"{plural(len(result.deleted_exchanges), 'exchange')} of {printable(path)}"
        )
        _print_kept(result.kept)
    if result is None and plan.jobs and not force:
        raise click.exceptions.Exit(EXIT_FAILED)


async def _delete(
    loaded: LoadedTopology, settings: Settings, use_management: bool, *, yes: bool, force: bool
) -> tuple[TeardownPlan, TeardownResult | None]:
    async with BrokerConnection(settings) as conn:
        plan = await plan_teardown(
            conn, loaded.topology, use_management=use_management, force=force
        )
        if not yes:
            return plan, None
        return plan, await teardown(conn, plan, force=force)


def _print_teardown_plan(plan: TeardownPlan, namespace: str) -> None:
    levels = f"{namespace}.wait."
    for name, count in plan.queues.items():
        if not name.startswith(levels):
            held = f" (holds {plural(count, 'job')})" if count else ""
            click.echo(f"  - queue {escape(name)}{held}")
    for name in plan.exchanges:
        if not name.startswith(levels):
            click.echo(f"  - exchange {escape(name)}")
    level_queues = [name for name in plan.queues if name.startswith(levels)]
    level_exchanges = [name for name in plan.exchanges if name.startswith(levels)]
    if level_queues or level_exchanges:
        waiting = sum(plan.queues[name] for name in level_queues)
        held = f", holding {plural(waiting, 'delayed job')}" if waiting else ""
        click.echo(
            f"  - the delay levels of {namespace!r} ({plural(len(level_queues), 'queue')}, "
            f"{plural(len(level_exchanges), 'exchange')}{held})"
        )
    _print_kept(plan.kept)
    if plan.jobs:
        click.echo(f"{plural(plan.jobs, 'job')} would be lost: delete refuses without --force")
    click.echo("nothing deleted: --yes deletes what is listed")


def _print_kept(kept: dict[str, str]) -> None:
    by_reason: dict[str, list[str]] = {}
    for name, why in kept.items():
        by_reason.setdefault(why, []).append(name)
    for why, names in sorted(by_reason.items()):
        shown = ", ".join(escape(n) for n in sorted(names)[:3])
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        click.echo(f"kept {shown}{more}: {escape(why)}")
