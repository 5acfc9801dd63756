"""``jobsys worker APP_MODULE:OBJECT --topology FILE``: run consumer pools for an app."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys

import click

from jobsys.app import App
from jobsys.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    build_settings,
    connection_options,
    exit_code_for,
)
from jobsys.cli.topology import load_or_exit
from jobsys.duration import parse_duration_s
from jobsys.errors import JobsysError
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.worker import Worker, WorkerOptions

log = logging.getLogger(__name__)


def import_app(target: str) -> App:
    """The ``App`` named by ``module:attribute`` (the current directory is importable)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter("expected MODULE:OBJECT, e.g. myapp.jobs:app", param_hint="APP")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="APP") from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        raise click.BadParameter(
            f"{target} is not a jobsys App (got {type(app).__name__})", param_hint="APP"
        )
    return app


def _grace(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    try:
        return parse_duration_s(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


async def serve(
    app: App, topology: LoadedTopology, settings: Settings, options: WorkerOptions
) -> tuple[int, Worker]:
    """Run one worker until SIGTERM/SIGINT; the first signal drains, a second stops at once.

    Returns the exit code and the worker (its ``stats`` say what it did). A supervisor can run
    this in a child process and send SIGTERM to drain it.
    """
    worker = Worker(app, topology, settings, options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    try:
        await worker.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return (EXIT_OK if worker.graceful else EXIT_FAILED), worker


@click.command("worker")
@click.argument("app_target", metavar="APP_MODULE:OBJECT")
@click.option(
    "--topology",
    "topology_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="The topology file (queues, job types, pool defaults).",
)
@click.option(
    "--queue",
    "queues",
    multiple=True,
    metavar="Q",
    help="Consume this queue (repeatable). Default: every queue a handled job type reaches.",
)
@click.option(
    "--concurrency", type=click.IntRange(1, 10_000), help="Jobs running at once, per queue."
)
@click.option("--prefetch", type=click.IntRange(1, 65_535), help="Deliveries held, per queue.")
@click.option(
    "--grace",
    default="30s",
    show_default=True,
    callback=_grace,
    help="How long running jobs may take to finish after SIGTERM.",
)
@connection_options
def worker(
    app_target: str,
    topology_file: str,
    queues: tuple[str, ...],
    concurrency: int | None,
    prefetch: int | None,
    grace: float,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Run the handlers of APP_MODULE:OBJECT on the queues of the topology.

    SIGTERM or SIGINT stops taking jobs, lets running ones finish within --grace, requeues
    the rest and exits 0; a second signal, or the grace period running out, exits 1 and the
    unfinished jobs are redelivered.
    """
    app = import_app(app_target)
    loaded = load_or_exit(topology_file)
    settings = build_settings(url, ca_file, insecure)
    options = WorkerOptions(
        queues=queues, concurrency=concurrency, prefetch=prefetch, grace_s=grace
    )
    try:
        code, running = asyncio.run(serve(app, loaded, settings, options))
    except JobsysError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        _exit(exit_code_for(exc))
        return
    click.echo(running.stats.summary(), err=True)
    if running.lingering_threads:
        # A sync handler cannot be interrupted; do not let it hold the process open.
        click.echo(f"{running.lingering_threads} sync handler(s) still running; exiting", err=True)
        _exit(code, hard=True)
    _exit(code)


def _exit(code: int, *, hard: bool = False) -> None:
    if hard:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise click.exceptions.Exit(code)
