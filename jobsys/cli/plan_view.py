"""How ``jobsys topology plan`` reads on a terminal: what would change first, what matches folded.

A topology of four queues has some 140 entities, most of them the delay levels (29 exchanges,
29 queues, their bindings, and one binding per work queue on the due exchange). They are derived
from the file, never edited by hand, so they show as one line per action ("create the delay
levels of 'jobsys': ..."); a conflict among them is still listed on its own, since someone must
act on it. Entities that match are counted, not listed, unless ``--all`` asks for every line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import click

from jobsys.cli.output import plural
from jobsys.topology.delays import LEVELS, DelayLayout
from jobsys.topology.entities import BindingSpec, QueueSpec
from jobsys.topology.flow import flow_lines
from jobsys.topology.model import Topology
from jobsys.topology.plan import ACTIONS, Plan, PlanItem
from jobsys.wire.display import escape

_COLORS = {"create": "green", "conflict": "yellow", "extra": "cyan", "ensure": "blue"}
_KINDS = (("exchange", "exchanges"), ("queue", "queues"), ("binding", "bindings"))
_ENSURE_NOTE = (
    "bindings marked * are checked only through the management API: apply declares them, "
    "which changes nothing where they exist"
)


def print_plan(plan: Plan, layout: DelayLayout, *, every_line: bool, changes_only: bool) -> None:
    """Print ``plan``: changes, then matches (counted) and extras, then notes and a summary."""
    if every_line:
        _print_every_line(plan)
    else:
        _print_folded(plan, layout, changes_only=changes_only)
    if any(item.action == "ensure" for item in plan.items):
        click.echo(f"note: {_ENSURE_NOTE}")
    if plan.has_conflicts:
        click.echo(
            "note: apply changes nothing while anything conflicts; delete or rename the "
            "conflicting entities, or change the file to match"
        )
    if plan.method == "probe":
        click.echo(
            f"note: {plan.note}; extras (on the broker, not in the file) need the management "
            "API, and the broker reveals arguments it checks on redeclare only"
        )
    if plan.broker:
        click.echo(f"broker: {escape(plan.broker)}")
    for note in plan.notes:
        click.echo(f"note: {escape(note)}")
    click.echo(f"summary: {plan.summary()}")


def print_flow(topology: Topology) -> None:
    """The weighted pools (nothing to declare for them; ``jobsys worker --pool NAME`` serves
    one), each queue with its weight and share under backlog."""
    lines = flow_lines(topology)
    if lines:
        click.echo(
            "flow control (weighted pools: jobsys worker --pool NAME; shares under backlog):"
        )
    for line in lines:
        click.echo(f"  {escape(line)}")


def _print_every_line(plan: Plan) -> None:
    for kind, title in _KINDS:
        items = [i for action in ACTIONS for i in plan.of(action) if i.kind == kind]
        if items:
            click.echo(f"{title}:")
        for item in items:
            _line(item.action, item.describe())


def _print_folded(plan: Plan, layout: DelayLayout, *, changes_only: bool) -> None:
    changes = [i for action in ("create", "conflict", "ensure") for i in plan.of(action)]
    if changes:
        click.echo("changes:")
        for action in ("create", "conflict", "ensure"):
            items = plan.of(action)
            own = [i for i in items if action == "conflict" or not is_delay_level(i, layout)]
            for item in own:
                _line(action, item.describe())
            folded = [i for i in items if i not in own]
            if folded:
                _line(action, _delay_levels_line(action, folded, layout))
    else:
        click.echo("changes: none")
    if changes_only:
        return
    matching = plan.of("match")
    if matching:
        click.echo(f"unchanged: {_counted(matching)} match (--all lists them)")
    extras = plan.of("extra")
    if extras:
        click.echo("on the broker, not in the file (apply leaves them alone):")
        for item in extras:
            _line("extra", f"- {item.kind} {item.name}")


def _line(action: str, text: str) -> None:
    click.secho(f"  {escape(text)}", fg=_COLORS.get(action))


def _delay_levels_line(action: str, items: list[PlanItem], layout: DelayLayout) -> str:
    what = f"the delay levels of {layout.namespace!r} ({_counted(items)})"
    if action == "create":
        return f"+ create {what}"
    return f"* ensure the bindings of {what}"


def _counted(items: Iterable[PlanItem]) -> str:
    """``29 exchanges, 29 queues, 62 bindings``, in that order, leaving out zeros."""
    counts: Counter[str] = Counter(item.kind for item in items)
    return ", ".join(plural(counts[kind], kind, kinds) for kind, kinds in _KINDS if counts[kind])


def is_delay_level(item: PlanItem, layout: DelayLayout) -> bool:
    """True for an entity of the delay levels: a level's exchange or queue, the due exchange,
    and the bindings from them (between levels, and to each work queue)."""
    names = {layout.level_name(level) for level in range(LEVELS)} | {layout.due_exchange}
    spec = item.spec
    if isinstance(spec, BindingSpec):
        return spec.source in names
    if isinstance(spec, QueueSpec):
        return spec.role == "delay"
    return item.kind == "exchange" and item.name in names
