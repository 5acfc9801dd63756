"""``jobsys dashboard``: the web dashboard for a topology (needs ``jobsys[dashboard]``)."""

from __future__ import annotations

import os

import click

from jobsys.cli.common import (
    EXIT_INVALID,
    build_settings,
    connection_options,
    fail,
    topology_option,
)
from jobsys.cli.topology_file import load_or_exit
from jobsys.errors import ConfigError, JobsysError
from jobsys.process.serve import exit_code_for

DASHBOARD_HINT = "the dashboard needs the optional extra: pip install 'jobsys[dashboard]'"


@click.command("dashboard")
@topology_option(required=True, help="The topology file whose queues to show.")
@click.option(
    "--bind",
    default="127.0.0.1:8080",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen. Anything but a loopback address needs --token.",
)
@click.option(
    "--token",
    envvar="JOBSYS_DASHBOARD_TOKEN",
    default=None,
    help="Guards every page and enables replay and purge (16+ printable ASCII characters). "
    "Env: JOBSYS_DASHBOARD_TOKEN (preferred: a command line shows in `ps`).",
)
@click.option(
    "--show-payloads",
    is_flag=True,
    default=False,
    help="Show dead-lettered jobs' payloads (cut to --payload-limit). Off by default.",
)
@click.option(
    "--payload-limit",
    type=click.IntRange(1, 1024 * 1024),
    default=4096,
    show_default=True,
    metavar="BYTES",
    help="Most bytes of a payload shown.",
)
@click.option(
    "--refresh",
    "refresh_s",
    type=click.FloatRange(1, 3600),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between two reads of the broker, however many pages are open.",
)
@click.option(
    "--no-management",
    is_flag=True,
    default=False,
    help="Read over AMQP only (no unacked counts, rates, ages or workers).",
)
@connection_options
def dashboard(
    topology_file: str,
    bind: str,
    token: str | None,
    show_payloads: bool,
    payload_limit: int,
    refresh_s: float,
    no_management: bool,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Serve the web dashboard: queues, workers, delay levels and dead-letter queues, live.

    Binds 127.0.0.1:8080 by default and is read-only without a token. With a token every page
    asks for it once (a login), and replay and purge ask for it again with a confirmation.
    """
    try:
        from jobsys.dashboard.app import create_app
        from jobsys.dashboard.config import DashboardConfig, parse_bind
        from jobsys.dashboard.serve import serve
    except ImportError:
        raise click.exceptions.Exit(fail(f"error: {DASHBOARD_HINT}", EXIT_INVALID)) from None
    if token is None and "JOBSYS_DASHBOARD_TOKEN" in os.environ:
        # click reads an empty variable as unset: the operator meant a token, so say so
        # rather than start without one.
        token = os.environ["JOBSYS_DASHBOARD_TOKEN"]
    loaded = load_or_exit(topology_file)
    settings = build_settings(url, ca_file, insecure)
    try:
        host, port = parse_bind(bind)
        config = DashboardConfig(
            host=host,
            port=port,
            token=token,
            show_payloads=show_payloads,
            payload_limit=payload_limit,
            refresh_s=refresh_s,
            use_management=not no_management,
        )
    except ConfigError as exc:
        raise click.exceptions.Exit(fail(f"error: {exc}", EXIT_INVALID)) from None
    shown_host = f"[{host}]" if ":" in host else host
    mode = "token required" if config.token else "read-only: no token, replay and purge are off"
    click.echo(f"dashboard on http://{shown_host}:{port}/ ({mode}); Ctrl-C to stop", err=True)
    try:
        serve(create_app(config, settings, loaded.topology), config)
    except JobsysError as exc:
        raise click.exceptions.Exit(fail(f"error: {exc}", exit_code_for(exc))) from None
    except KeyboardInterrupt:
        pass
