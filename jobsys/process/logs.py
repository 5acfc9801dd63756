"""Logging for jobsys's processes: one line per record, control characters escaped.

Apart from ``serve`` so that the supervisor of ``--processes``, which runs no event loop, can
configure its log without importing asyncio (and with it ssl: ~10 MiB of resident memory).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from jobsys.wire.display import escape, escape_keeping_newlines


class EscapingFormatter(logging.Formatter):
    """A formatter whose records are one line each: control characters in the message (a job
    id or job type is whatever its publisher wrote) are escaped, so a newline cannot forge a
    log line and an ESC sequence cannot act on a terminal. A traceback keeps its line breaks;
    other control characters in it are escaped too. The record itself is left unchanged for
    other handlers."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.message = escape(record.message)
        return super().formatMessage(safe)

    def formatException(self, ei: Any) -> str:
        return escape_keeping_newlines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return escape_keeping_newlines(super().formatStack(stack_info))


def configure_logging(verbose: int, *, service: bool = False) -> None:
    """Log to stderr, one line per record (``EscapingFormatter``); ``verbose`` 1 shows
    jobsys's info, 2 everything at debug. Called again (``-v`` after a subcommand), it only
    changes the levels.

    A ``service`` (a worker, the scheduler) runs for days and its log is how operators follow
    it: jobsys's own info lines (the start banner, retries, reconnects) show by default, ``-v``
    adds one line per finished job (debug), ``-vv`` every library's debug."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    if not any(isinstance(h.formatter, EscapingFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=level, handlers=[handler])
    if service:
        root.setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
        own = logging.INFO if verbose == 0 else logging.DEBUG
        logging.getLogger("jobsys").setLevel(own)
    else:
        root.setLevel(level)
        logging.getLogger("jobsys").setLevel(logging.NOTSET)
    # aio-pika logs every failed reconnect attempt with a traceback; jobsys says it once.
    quiet = logging.CRITICAL if verbose < 2 else logging.NOTSET
    logging.getLogger("aio_pika").setLevel(quiet)
    logging.getLogger("aiormq").setLevel(quiet)
