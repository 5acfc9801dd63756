"""Serving one worker in a process: signals, logging, and the exit code a program ends with.

Shared by ``jobsys worker`` (one worker in the command's own process) and the supervisor's
children (``jobsys.process.child``), so both drain on the first SIGTERM/SIGINT, stop at once on
the second, log the same way and exit with the codes docs/cli.md documents.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Protocol

from jobsys.errors import (
    AccessRefused,
    ConfigError,
    ConnectionFailed,
    JobsysError,
    MessageError,
    StartupFailed,
    TopologyConflictError,
    TopologyLoadError,
)
from jobsys.process.exits import (
    EXIT_BROKER,
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_STARTUP,
)
from jobsys.process.logs import EscapingFormatter, configure_logging

__all__ = [
    "EXIT_BROKER",
    "EXIT_CONFLICT",
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_STARTUP",
    "EscapingFormatter",
    "Served",
    "StopRequests",
    "configure_logging",
    "exit_code_for",
    "serve",
]


class Served(Protocol):
    """What ``serve`` runs: a worker, a scheduler, or both in one process."""

    @property
    def graceful(self) -> bool:
        """Whether it drained gracefully."""

    async def run(self) -> object:
        """Serve until stopped."""

    def request_stop(self) -> None:
        """Drain gracefully; called a second time, stop at once."""


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code_for(exc: JobsysError) -> int:
    """The exit code a program ends with for ``exc``."""
    if isinstance(exc, TopologyConflictError):
        return EXIT_CONFLICT
    if isinstance(exc, StartupFailed):
        return EXIT_STARTUP
    if isinstance(exc, TopologyLoadError | ConfigError | MessageError):
        return EXIT_INVALID
    if isinstance(exc, ConnectionFailed | AccessRefused):
        return EXIT_BROKER
    return EXIT_FAILED


class StopRequests:
    """Counts stop signals and passes them to the worker once it runs; a signal that came while
    the process was still starting is honoured as soon as the worker exists."""

    def __init__(self) -> None:
        self.count = 0
        self._worker: Served | None = None

    def request(self) -> None:
        """One more stop request (a signal)."""
        self.count += 1
        if self._worker is not None:
            self._worker.request_stop()

    def attach(self, worker: Served) -> None:
        """Pass every request so far, and every later one, to ``worker``."""
        self._worker = worker
        for _ in range(self.count):
            worker.request_stop()


async def serve(worker: Served, requests: StopRequests | None = None) -> int:
    """Run ``worker`` until SIGTERM/SIGINT: the first signal drains, a second stops at once.

    Returns the exit code: 0 when it drained gracefully, 1 when jobs were left unfinished.
    Fatal errors (refused access, topology drift) raise from ``worker.run()``.
    """
    requests = requests or StopRequests()
    loop = asyncio.get_running_loop()
    # Put back what handled the signals before, not the default: a supervisor's child keeps
    # counting a SIGTERM that comes after it drained (for --max-jobs, say) instead of dying by
    # it, and exits with its own code.
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, requests.request)
    requests.attach(worker)
    try:
        await worker.run()
    finally:
        # remove_signal_handler puts the default disposition back before ours is restored: a
        # SIGTERM in between would kill the process. Held back meanwhile, it reaches the
        # restored handler instead.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            for sig in _STOP_SIGNALS:
                loop.remove_signal_handler(sig)
                if previous[sig] is not None:
                    signal.signal(sig, previous[sig])
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    return EXIT_OK if worker.graceful else EXIT_FAILED
