"""``jobsys status``: queue depths, dead letters and delayed jobs, once or ``--watch``.

On a terminal, ``--watch`` redraws one view in place (rich ``Live``) with the time it was read;
written to a pipe or a file it prints one frame per refresh (or one JSON line with ``--json``),
never screen-clearing codes. Without the management API the view has no unacked counts and no
broker rates; a watch then shows how fast each queue's ready count changes between two reads
instead (``ready/s``, net: arrivals minus departures).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from jobsys.cli.common import build_settings, connection_options, run, topology_option
from jobsys.cli.output import (
    Column,
    console,
    json_option,
    plural,
    print_json,
    print_json_line,
    table_of,
)
from jobsys.cli.topology_file import load_or_exit
from jobsys.ops.status import QueueCounts, StatusReader, StatusReport
from jobsys.settings import Settings
from jobsys.topology.model import Topology
from jobsys.wire.display import escape

if TYPE_CHECKING:
    from rich.console import RenderableType


@dataclass(frozen=True)
class _Reading:
    """A report and when it was read, to derive rates from the next one."""

    report: StatusReport
    at: float  # time.monotonic()
    wall: datetime


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
@json_option
@connection_options
def status(
    topology_file: str,
    watch: float | None,
    no_management: bool,
    as_json: bool,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Per queue: ready, unacked, consumers, dead-letter depth; jobs waiting in delay levels."""
    loaded = load_or_exit(topology_file)
    if watch is not None and watch <= 0:
        raise click.BadParameter("must be above 0 seconds", param_hint="--watch")
    settings = build_settings(url, ca_file, insecure)
    _show(settings, loaded.topology, not no_management, watch, as_json)


@run
async def _show(
    settings: Settings,
    topology: Topology,
    use_management: bool,
    watch_s: float | None,
    as_json: bool,
) -> None:
    reader = StatusReader(settings, topology, use_management=use_management)
    try:
        if watch_s is None:
            reading = await _read(reader)
            if as_json:
                print_json(report_json(reading, None))
            else:
                console().print(_view(reading, None, None))
            return
        await _watch(reader, watch_s, as_json)
    finally:
        await reader.close()


async def _read(reader: StatusReader) -> _Reading:
    report = await reader.read()
    return _Reading(report, time.monotonic(), datetime.now(UTC))


async def _watch(reader: StatusReader, every_s: float, as_json: bool) -> None:
    # Ctrl-C is how a watch ends, not an error: stop cleanly and exit 0.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    out = console()
    previous: _Reading | None = None
    footer = f"refreshing every {every_s:g}s; Ctrl-C to stop"
    live = None
    try:
        if out.is_terminal and not as_json:
            from rich.live import Live

            live = Live(console=out, auto_refresh=False, transient=False)
            live.start()
        while not stop.is_set():
            reading = await _read(reader)
            if as_json:
                print_json_line(report_json(reading, previous))
            elif live is not None:
                live.update(_view(reading, previous, footer), refresh=True)
            else:
                # Frames pile up in a pipe: say the note (why no management API) once.
                out.print(_view(reading, previous, footer, with_note=previous is None))
            previous = reading
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)
    finally:
        if live is not None:
            live.stop()
        loop.remove_signal_handler(signal.SIGINT)


def _net_rates(reading: _Reading, previous: _Reading | None) -> dict[str, float]:
    """Change of each queue's ready count per second since ``previous`` (AMQP reads only)."""
    if previous is None or reading.report.source == "management":
        return {}
    elapsed = reading.at - previous.at
    before = {queue.name: queue.counts.ready for queue in previous.report.queues}
    rates = {}
    for queue in reading.report.queues:
        old, new = before.get(queue.name), queue.counts.ready
        if elapsed > 0 and old is not None and new is not None:
            rates[queue.name] = (new - old) / elapsed
    return rates


def _view(
    reading: _Reading, previous: _Reading | None, footer: str | None, *, with_note: bool = True
) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    report = reading.report
    with_rates = report.source == "management"
    net = _net_rates(reading, previous)
    columns = [Column("queue")]
    columns += [Column(h, "right") for h in ("ready", "unacked", "consumers", "dead-letter")]
    if with_rates:
        columns += [Column(h, "right") for h in ("in/s", "out/s", "ack/s")]
    elif net:
        columns.append(Column("ready/s", "right"))
    rows = []
    for queue in report.queues:
        counts = queue.counts
        name = _queue_cell(queue.name, counts)
        row = [name, _n(counts.ready), _n(counts.unacked), _n(counts.consumers)]
        row.append(_n(queue.dead_letter.total))
        if with_rates:
            row += _rates(counts)
        elif net:
            row.append(f"{net[queue.name]:+.1f}" if queue.name in net else "-")
        rows.append(row)
    table = table_of(columns, rows)
    lines = [Text(line) for line in _notes(report, with_note=with_note)]
    when = reading.wall.strftime("%H:%M:%S UTC")
    lines.append(Text(f"as of {when}" + (f"; {footer}" if footer else ""), style="dim"))
    return Group(table, Text(""), *lines)


def _queue_cell(name: str, counts: QueueCounts) -> str:
    if not counts.exists:
        return f"{name} (missing)"
    return f"{name} (node down)" if counts.node_down else name


def _rates(counts: QueueCounts) -> list[str]:
    rates = counts.rates
    if rates is None:
        return ["-", "-", "-"]
    return [f"{rates.published:.1f}", f"{rates.delivered:.1f}", f"{rates.acked:.1f}"]


def _notes(report: StatusReport, *, with_note: bool) -> list[str]:
    busy = [f"{level.name}: {level.waiting}" for level in report.delay_levels if level.waiting]
    total = report.delayed_total
    waiting = "-" if total is None else plural(total, "job")
    notes = [f"waiting in delay levels: {waiting}" + (f" ({', '.join(busy)})" if busy else "")]
    legacy = [f"{level.name}: {level.waiting}" for level in report.legacy_levels if level.waiting]
    if report.legacy_levels:
        notes.append(
            "old delay levels (jobsys.delay.*) still exist"
            + (f", holding {', '.join(legacy)}" if legacy else ", empty")
            + ": they deliver on time; `jobsys delays retire` removes them once empty"
        )
    notes += [_breaker_note(name, state) for name, state in report.breakers.items()]
    if any(not queue.counts.exists for queue in report.queues):
        notes.append("some queues are missing: `jobsys topology apply` declares them")
    if _any_node_down(report):
        notes.append(
            "some queues are on a node that is down or still starting: their counts are "
            "unknown until it is back (they exist; `apply` would not help)"
        )
    if report.note and with_note:
        notes.append(report.note)
    if report.node:
        notes.append(f"connected to broker node {report.node}")
    return [escape(note) for note in notes]


def _any_node_down(report: StatusReport) -> bool:
    queues = [counts for queue in report.queues for counts in (queue.counts, queue.dead_letter)]
    return any(counts.node_down for counts in queues) or any(
        level.node_down for level in report.delay_levels
    )


def _breaker_note(job_type: str, state: dict[str, Any] | None) -> str:
    """``circuit breaker render: open until 04:10:07 UTC (5 failures in 60s; worker ...)``."""
    if state is None:
        return f"circuit breaker {job_type}: closed (no change of state recorded)"
    shown = str(state.get("state", "unknown"))
    until = state.get("until_ms")
    if shown == "open" and isinstance(until, int):
        when = datetime.fromtimestamp(until / 1000, UTC).strftime("%H:%M:%S UTC")
        shown += f" until {when}"
    return (
        f"circuit breaker {job_type}: {shown} ({state.get('trigger', '?')}; "
        f"last change by {state.get('worker', '?')})"
    )


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def report_json(reading: _Reading, previous: _Reading | None) -> dict[str, Any]:
    """The report as ``status --json`` prints it (shape in docs/cli.md)."""
    report = reading.report
    net = _net_rates(reading, previous)

    def counts(value: QueueCounts) -> dict[str, Any]:
        data: dict[str, Any] = {
            "exists": value.exists,
            "node_down": value.node_down,
            "ready": value.ready,
            "unacked": value.unacked,
            "consumers": value.consumers,
        }
        if value.rates is not None:
            data["rates"] = {
                "published": value.rates.published,
                "delivered": value.rates.delivered,
                "acked": value.rates.acked,
            }
        return data

    return {
        "at": reading.wall.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "source": report.source,
        "note": report.note,
        "node": report.node,
        "queues": [
            {
                "name": queue.name,
                **counts(queue.counts),
                "ready_change_per_s": net.get(queue.name),
                "dead_letter": {"name": queue.dead_letter_queue, **counts(queue.dead_letter)},
            }
            for queue in report.queues
        ],
        "delay_levels": [
            {
                "name": level.name,
                "ttl_s": level.ttl_s,
                "waiting": level.waiting,
                "node_down": level.node_down,
            }
            for level in report.delay_levels
        ],
        "delayed_total": report.delayed_total,
        "legacy_levels": [
            {"name": level.name, "ttl_s": level.ttl_s, "waiting": level.waiting}
            for level in report.legacy_levels
        ],
        "breakers": report.breakers,
    }
