"""What every ``jobsys`` command shares: connection options, logging, error -> exit code."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from jobsys.errors import (
    AccessRefused,
    ConfigError,
    ConnectionFailed,
    JobsysError,
    MessageError,
    TopologyConflictError,
    TopologyLoadError,
)
from jobsys.settings import Settings

#: Exit codes, documented in docs/cli.md.
EXIT_OK = 0
EXIT_FAILED = 1  # the work was not (all) done: a publish not confirmed, a worker stopped early
EXIT_INVALID = 2  # bad input: usage, an invalid topology file, a bad payload
EXIT_CONFLICT = 3  # the broker's topology differs from the file
EXIT_BROKER = 4  # the broker could not be reached or refused access

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def connection_options(func: F) -> F:
    """Add ``--url``, ``--ca-file`` and ``--insecure`` to a command."""
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
        help="Broker URL. Env: JOBSYS_URL (default amqp://guest:guest@127.0.0.1:5672/).",
    )(func)
    return func


def build_settings(url: str | None, ca_file: str | None, insecure: bool) -> Settings:
    """Settings from the environment, overridden by command-line options."""
    try:
        base = Settings.from_env()
        return base.with_overrides(url=url, ca_file=ca_file, insecure_tls=insecure or None)
    except ConfigError as exc:
        raise click.exceptions.Exit(_fail(str(exc), EXIT_INVALID)) from None


def configure_logging(verbose: int) -> None:
    """Log to stderr; ``-v`` shows jobsys's info, ``-vv`` everything at debug."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if verbose < 2:
        # aio-pika logs every failed reconnect attempt with a traceback; jobsys says it once.
        logging.getLogger("aio_pika").setLevel(logging.CRITICAL)
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)


def exit_code_for(exc: JobsysError) -> int:
    """The exit code a command ends with for ``exc``."""
    if isinstance(exc, TopologyConflictError):
        return EXIT_CONFLICT
    if isinstance(exc, TopologyLoadError | ConfigError | MessageError):
        return EXIT_INVALID
    if isinstance(exc, ConnectionFailed | AccessRefused):
        return EXIT_BROKER
    return EXIT_FAILED


def _fail(message: str, code: int) -> int:
    click.secho(message, fg="red", err=True)
    return code


def run(coro_fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command body; a ``JobsysError`` becomes one clear message and an exit
    code, never a traceback."""

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return asyncio.run(coro_fn(*args, **kwargs))
        except JobsysError as exc:
            raise click.exceptions.Exit(_fail(f"error: {exc}", exit_code_for(exc))) from None
        except KeyboardInterrupt:
            raise click.exceptions.Exit(_fail("interrupted", 130)) from None

    return wrapper
