"""``jobsys worker APP_MODULE:OBJECT --topology FILE``: run consumer pools for an app.

With ``--processes P`` (or ``--max-memory``) the command becomes a supervisor of P worker
processes (``jobsys.process.supervisor``); without, it is one worker in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import traceback

import click

from jobsys.app import App
from jobsys.cli.common import (
    EXIT_INVALID,
    build_settings,
    configure_logging,
    connection_options,
    fail,
    topology_option,
    verbosity,
)
from jobsys.cli.topology_file import load_or_exit
from jobsys.consume.options import WorkerOptions
from jobsys.consume.worker import Worker
from jobsys.duration import parse_duration_s
from jobsys.errors import ConfigError, JobsysError
from jobsys.observe.telemetry_env import telemetry_from_env
from jobsys.process.child import ChildSpec, load_app
from jobsys.process.serve import Served, exit_code_for, serve
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.wire.display import escape, escape_keeping_newlines

log = logging.getLogger(__name__)


def import_app(target: str) -> App:
    """The ``App`` named by ``module:attribute`` (the current directory is importable); with
    ``-v``, an import that failed shows its whole traceback too."""
    try:
        return load_app(target)
    except ConfigError as exc:
        cause = exc.__cause__
        context = click.get_current_context(silent=True)
        if cause is not None and context is not None and verbosity(context) > 0:
            shown = "".join(traceback.format_exception(cause))
            click.echo(escape_keeping_newlines(shown), err=True)
        raise click.exceptions.Exit(fail(f"error: {exc}", EXIT_INVALID)) from exc


def _grace(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    try:
        return parse_duration_s(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _positive_duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    seconds = _grace(ctx, param, value)
    if seconds <= 0:
        raise click.BadParameter("must be more than 0")
    return seconds


@click.command("worker")
@click.argument("app_target", metavar="APP_MODULE:OBJECT")
@topology_option(required=True, help="The topology file (queues, job types, pool defaults).")
@click.option(
    "--queue",
    "queues",
    multiple=True,
    metavar="Q",
    help="Consume this queue (repeatable). Default: every queue a handled job type reaches.",
)
@click.option(
    "--pool",
    metavar="NAME",
    help="Serve the weighted pool NAME of the topology (`pools:`): its queues share the "
    "pool's runners by weight. Not with --queue.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 10_000),
    help="Jobs running at once, per queue (with --pool: in the whole pool).",
)
@click.option("--prefetch", type=click.IntRange(1, 65_535), help="Deliveries held, per queue.")
@click.option(
    "--grace",
    default="30s",
    show_default=True,
    callback=_grace,
    help="How long running jobs may take to finish after SIGTERM.",
)
@click.option(
    "--hook-timeout",
    default="60s",
    show_default=True,
    callback=_positive_duration,
    help="How long each startup or shutdown hook of the app may take.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 10_000),
    help="Threads for sync handlers (default: the pools' concurrency added up). A sync handler "
    "past its deadline keeps its thread until it returns.",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    help="Run this many worker processes under a supervisor that restarts crashed ones.",
)
@click.option(
    "--max-jobs",
    type=click.IntRange(1),
    metavar="K",
    help="Drain and exit after K jobs (under --processes, a fresh process takes over).",
)
@click.option(
    "--max-memory",
    type=click.IntRange(1),
    metavar="MB",
    help="Drain a worker process whose resident memory exceeds MB and start a fresh one "
    "(implies a supervisor; --processes defaults to 1).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    metavar="N",
    help="Serve Prometheus metrics on this port (/metrics), and the probes /livez and /readyz "
    "(200 or 503). Under --processes P, process slot i uses port N+i. Needs "
    "jobsys[prometheus].",
)
@click.option(
    "--metrics-bind",
    default="127.0.0.1",
    show_default=True,
    metavar="HOST",
    help="The address the metrics listener binds (0.0.0.0 for every interface).",
)
@click.option(
    "--scheduler",
    "with_scheduler",
    is_flag=True,
    default=False,
    help="Also stand for election as the topology's scheduler and fire its schedules while "
    "elected (any number of workers may; exactly one fires).",
)
@click.option(
    "--reload",
    is_flag=True,
    default=False,
    help="Development: restart the worker when a .py file under the current directory or the "
    "topology file changes (the old one drains first). Needs jobsys[reload].",
)
@connection_options
@click.pass_context
def worker(
    ctx: click.Context,
    app_target: str,
    topology_file: str,
    queues: tuple[str, ...],
    pool: str | None,
    concurrency: int | None,
    prefetch: int | None,
    grace: float,
    hook_timeout: float,
    threads: int | None,
    processes: int | None,
    max_jobs: int | None,
    max_memory: int | None,
    metrics_port: int | None,
    metrics_bind: str,
    with_scheduler: bool,
    reload: bool,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Run the handlers of APP_MODULE:OBJECT on the queues of the topology.

    SIGTERM or SIGINT stops taking jobs, lets running ones finish within --grace, requeues
    the rest and exits 0; a second signal, or the grace period running out, exits 1 and the
    unfinished jobs are redelivered.

    With --processes P, a supervisor runs P worker processes: it restarts one that crashes,
    replaces one that reached --max-jobs or --max-memory, forwards SIGTERM to all of them and
    exits 0 when all drained.

    Logs a banner when it is ready, every retry, dead letter and reconnect; -v adds one line
    per finished job.
    """
    configure_logging(verbosity(ctx), service=True)
    if pool is not None and queues:
        raise click.UsageError("give either --pool or --queue, not both")
    if reload:
        if url is not None:
            # The child gets the URL in its environment, not on its command line.
            os.environ["JOBSYS_URL"] = url
        _reload(topology_file, grace, processes, max_memory)
        return
    if metrics_port is not None:
        _check_metrics(metrics_port, processes or 1)
    app = import_app(app_target)
    loaded = load_or_exit(topology_file)
    if pool is not None and pool not in loaded.topology.pools:
        declared = ", ".join(map(escape, sorted(loaded.topology.pools))) or "none are declared"
        raise click.exceptions.Exit(
            fail(
                f"error: pool '{escape(pool)}' is not in the topology (pools: {declared})",
                EXIT_INVALID,
            )
        )
    settings = build_settings(url, ca_file, insecure)
    options = WorkerOptions(
        queues=queues,
        pool=pool,
        concurrency=concurrency,
        prefetch=prefetch,
        grace_s=grace,
        hook_timeout_s=hook_timeout,
        max_jobs=max_jobs,
        threads=threads,
    )
    if with_scheduler and (processes is not None or max_memory is not None):
        raise click.UsageError(
            "--scheduler runs in a single worker process; with --processes, run `jobsys "
            "scheduler` beside the supervisor"
        )
    if processes is not None or max_memory is not None:
        _check_pools(app, loaded, options)
        spec = ChildSpec(
            app_target=app_target,
            topology_file=os.path.abspath(topology_file),
            options=options,
            verbose=verbosity(ctx),
            metrics_port=metrics_port,
            metrics_bind=metrics_bind,
        )
        _exit(_supervise(spec, settings, processes or 1, max_memory))
        return
    try:
        running = Worker(app, loaded, settings, options)
        served: Served = running
        if with_scheduler:
            served = _with_scheduler(running, app, loaded, settings)
        with contextlib.ExitStack() as stack:
            if metrics_port is not None:
                from jobsys.observe.prometheus import serve_metrics

                stack.callback(serve_metrics(metrics_bind, metrics_port, running.health).close)
            stack.enter_context(telemetry_from_env("jobsys-worker"))
            code = asyncio.run(serve(served))
    except JobsysError as exc:
        _exit(fail(f"error: {exc}", exit_code_for(exc)))
        return
    click.echo(running.stats.summary(), err=True)
    if running.lingering_threads:
        # A sync handler cannot be interrupted; do not let it hold the process open.
        click.echo(f"{running.lingering_threads} sync handler(s) still running; exiting", err=True)
        _exit(code, hard=True)
    _exit(code)


def _reload(
    topology_file: str, grace: float, processes: int | None, max_memory: int | None
) -> None:
    if processes is not None or max_memory is not None:
        raise click.UsageError("--reload runs one worker process; leave out --processes")
    from jobsys.cli.reload import run_reloading

    load_or_exit(topology_file)  # a broken file is reported here, before any child starts
    try:
        code = run_reloading(
            sys.argv[1:], topology_file, grace, lambda line: click.echo(line, err=True)
        )
    except ConfigError as exc:
        _exit(fail(f"error: {exc}", EXIT_INVALID))
        return
    _exit(code)


def _check_metrics(port: int, processes: int) -> None:
    if port + processes - 1 > 65535:
        raise click.BadParameter(
            f"with --processes {processes} the ports {port}..{port + processes - 1} are needed; "
            "the highest port is 65535",
            param_hint="--metrics-port",
        )
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise click.exceptions.Exit(
            fail(
                "error: --metrics-port needs prometheus-client: pip install 'jobsys[prometheus]'",
                EXIT_INVALID,
            )
        ) from None


def _with_scheduler(
    running: Worker, app: App, loaded: LoadedTopology, settings: Settings
) -> Served:
    from jobsys.process.together import WorkerAndScheduler, models_of
    from jobsys.schedule.check import check_payloads
    from jobsys.schedule.scheduler import Scheduler

    models = models_of(app)
    check_payloads(loaded, models, settings.max_payload_bytes)
    return WorkerAndScheduler(running, Scheduler(settings, loaded, models=models))


def _check_pools(app: App, loaded: LoadedTopology, options: WorkerOptions) -> None:
    """Refuse here what each child would refuse at start (an unknown queue, a bad bound), so
    that a bad option is one message and exit 2, not P children failing."""
    from jobsys.consume.pools import plan_pools

    try:
        plan_pools(app, loaded.topology, options)
    except ConfigError as exc:
        raise click.exceptions.Exit(fail(f"error: {exc}", EXIT_INVALID)) from None


def _supervise(
    spec: ChildSpec, settings: Settings, processes: int, max_memory_mb: int | None
) -> int:
    """Become the supervisor: ``exec`` its own slim program, so that what this command loaded
    to check the input (the app, pydantic, aio-pika, click) does not stay resident for the
    service's life (``jobsys.process.supervisor_main``). Returns only in tests that replace
    it."""
    from jobsys.process.supervisor import SupervisorOptions
    from jobsys.process.supervisor_main import command

    # The children read the broker settings from the environment: a password never shows on
    # a command line (``ps``).
    env = dict(os.environ, JOBSYS_URL=settings.url, JOBSYS_HEARTBEAT_S=str(settings.heartbeat_s))
    if settings.ca_file:
        env["JOBSYS_CA_FILE"] = settings.ca_file
    if settings.insecure_tls:
        env["JOBSYS_INSECURE_TLS"] = "1"
    options = SupervisorOptions(processes=processes, max_memory_mb=max_memory_mb)
    argv = command(spec, options)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(argv[0], argv, env)
    except OSError as exc:
        # E2BIG: the options do not fit a command line (thousands of --queue names).
        size = sum(len(arg.encode()) for arg in argv)
        return fail(
            f"error: cannot start the supervisor ({exc.strerror}; its command line is "
            f"{size} bytes)",
            EXIT_INVALID,
        )


def _exit(code: int, *, hard: bool = False) -> None:
    if hard:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise click.exceptions.Exit(code)
