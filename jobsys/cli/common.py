"""What every ``jobsys`` command shares: the connection and topology options, and running an
async body with one clear message per error. Logging and the exit codes come from
``jobsys.process.serve``, shared with the worker processes."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from jobsys.errors import ConfigError, JobsysError
from jobsys.process.serve import (
    EXIT_BROKER,
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    configure_logging,
    exit_code_for,
)
from jobsys.settings import Settings
from jobsys.wire.display import escape

__all__ = [
    "EXIT_BROKER",
    "EXIT_CONFLICT",
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "add_verbose_option",
    "build_settings",
    "configure_logging",
    "connection_options",
    "exit_code_for",
    "fail",
    "run",
    "topology_option",
    "verbosity",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


#: Where ``--heartbeat`` leaves its value for ``build_settings`` (``ctx.meta``).
_HEARTBEAT = "jobsys.heartbeat_s"
#: AMQP heartbeats jobsys accepts on the command line, in seconds. 0 (which turns heartbeats
#: off, so a dead connection goes unnoticed for hours) is refused here; JOBSYS_HEARTBEAT_S=0
#: is how to ask for it.
HEARTBEAT_RANGE = (1, 600)


def _keep_heartbeat(ctx: click.Context, _param: click.Parameter, value: int | None) -> None:
    if value is not None:
        ctx.meta[_HEARTBEAT] = value


def connection_options(func: F) -> F:
    """Add ``--url``, ``--ca-file``, ``--insecure`` and ``--heartbeat`` to a command (the
    heartbeat reaches the settings through ``build_settings``, not as a parameter)."""
    func = click.option(
        "--heartbeat",
        type=click.IntRange(*HEARTBEAT_RANGE),
        default=None,
        metavar="SECONDS",
        expose_value=False,
        callback=_keep_heartbeat,
        help=(
            "AMQP heartbeat in seconds, 1 to 600: a connection silent for about two "
            "heartbeats is taken as dead. Env: JOBSYS_HEARTBEAT_S (default 20)."
        ),
    )(func)
    func = click.option(
        "--insecure",
        is_flag=True,
        default=False,
        help="Allow amqps:// without certificate checks (no_verify_ssl). Never in production.",
    )(func)
    func = click.option(
        "--ca-file",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="CA bundle for amqps:// (default: the system's trust store). Env: JOBSYS_CA_FILE.",
    )(func)
    func = click.option(
        "--url",
        default=None,
        metavar="AMQP_URL",
        help="Broker URL, or the URLs of a cluster's nodes separated by commas (any live one "
        "is used). Env: JOBSYS_URL (default amqp://guest:guest@127.0.0.1:5672/).",
    )(func)
    return func


def topology_option(*, required: bool, help: str) -> Callable[[F], F]:
    """``--topology FILE`` (env ``JOBSYS_TOPOLOGY``), written once for every command."""
    return click.option(
        "--topology",
        "topology_file",
        envvar="JOBSYS_TOPOLOGY",
        required=required,
        type=click.Path(dir_okay=False),
        help=f"{help} Env: JOBSYS_TOPOLOGY.",
    )


def verbosity(ctx: click.Context) -> int:
    """How many ``-v`` were given, before the subcommand and after it together."""
    root = ctx.find_root()
    return int(root.params.get("verbose") or 0) + int(root.meta.get(_VERBOSE_AFTER, 0))


_VERBOSE_AFTER = "jobsys.verbose_after_command"


def _more_verbose(ctx: click.Context, _param: click.Parameter, count: int) -> None:
    if count:
        root = ctx.find_root()
        root.meta[_VERBOSE_AFTER] = int(root.meta.get(_VERBOSE_AFTER, 0)) + count
        configure_logging(verbosity(ctx))


def add_verbose_option(command: click.Command) -> None:
    """Let ``-v`` follow the subcommand too (``jobsys worker app:app -v``), adding to any given
    before it; on every command below ``command``."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_verbose_option(sub)
        return
    command.params.append(
        click.Option(
            ["-v", "--verbose"],
            count=True,
            expose_value=False,
            is_eager=True,
            callback=_more_verbose,
            help="More log output (-v info, -vv debug); also before the command.",
        )
    )


def build_settings(url: str | None, ca_file: str | None, insecure: bool) -> Settings:
    """Settings from the environment, overridden by command-line options; checked once, with
    the options applied (``--insecure`` counts for a URL from ``JOBSYS_URL`` too)."""
    ctx = click.get_current_context(silent=True)
    heartbeat = ctx.meta.get(_HEARTBEAT) if ctx is not None else None
    try:
        return Settings.from_env(
            url=url, ca_file=ca_file, insecure_tls=insecure or None, heartbeat_s=heartbeat
        )
    except ConfigError as exc:
        raise click.exceptions.Exit(fail(str(exc), EXIT_INVALID)) from None


def fail(message: str, code: int) -> int:
    """Print ``message`` as an error and return ``code``. A message may quote a header, a job
    id or the broker's text: control characters are escaped, and a line after the first is
    indented, so nothing in it can pass for a message of its own."""
    first, *rest = message.split("\n")
    lines = [escape(first), *(_indented(escape(line)) for line in rest)]
    click.secho("\n".join(lines), fg="red", err=True)
    return code


def _indented(line: str) -> str:
    return line if line.startswith(" ") else f"  {line}"


def run(coro_fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command body; a ``JobsysError`` becomes one clear message and an exit
    code, never a traceback."""

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return asyncio.run(coro_fn(*args, **kwargs))
        except JobsysError as exc:
            raise click.exceptions.Exit(fail(f"error: {exc}", exit_code_for(exc))) from None
        except KeyboardInterrupt:
            raise click.exceptions.Exit(fail("interrupted", 130)) from None

    return wrapper
