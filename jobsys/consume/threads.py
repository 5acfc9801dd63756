"""The thread pool that runs sync handlers, and what runs in it.

A sync handler cannot be stopped: when it overruns its deadline its attempt is settled as
failed and the thread runs on in the background, its result ignored. Such threads occupy the
pool, so a later job may find no free thread before its own deadline; it then never started,
and is failed as that (``HandlerThreadsBusy``), never reported as having overrun. Which jobs
started is decided under one lock, so a job is never both abandoned and started.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jobsys.duration import format_duration
from jobsys.errors import HandlerThreadsBusy


class DeadlinePassed(Exception):
    """A sync handler started and is still running at its deadline."""


class HandlerThreads:
    """``size`` threads for sync handlers; ``running`` counts the handlers running now."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="jobsys-handler")
        self._lock = threading.Lock()
        self.running = 0
        #: Handlers running past their deadline (their attempt already settled as failed).
        self.overrunning = 0

    async def run(self, func: Callable[..., Any], args: tuple[Any, ...], timeout_s: float) -> Any:
        """Run ``func(*args)`` in a thread within ``timeout_s``. Raises ``DeadlinePassed`` when
        it started and overran (it runs on in the background), ``HandlerThreadsBusy`` when no
        thread took it in time, and whatever the handler raised."""
        call = _Call(func, args, self)
        future = asyncio.get_running_loop().run_in_executor(self._executor, call.run)
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                return await future
        except TimeoutError:
            if not deadline.expired():
                raise  # the handler's own TimeoutError
            if call.abandon():
                raise HandlerThreadsBusy(
                    f"no handler thread was free within the deadline of "
                    f"{format_duration(timeout_s)} ({self.running} of {self.size} busy, "
                    f"{self.overrunning} with handlers past their own deadline); the job did "
                    "not start"
                ) from None
            raise DeadlinePassed from None

    def shutdown(self) -> None:
        """Stop taking work; handlers still running finish in the background."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class _Call:
    """One handler call, and whether it started or was given up before it did."""

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...], pool: HandlerThreads):
        self.func = func
        self.args = args
        self.pool = pool
        self.started = False
        self.abandoned = False
        self.deadline_passed = False

    def run(self) -> Any:
        with self.pool._lock:
            if self.abandoned:
                return None  # its attempt was already settled as "never started"
            self.started = True
            self.pool.running += 1
        try:
            return self.func(*self.args)
        finally:
            with self.pool._lock:
                self.pool.running -= 1
                if self.deadline_passed:
                    self.pool.overrunning -= 1

    def abandon(self) -> bool:
        """At the deadline: True (and it never runs) when it had not started yet; otherwise
        note it as overrunning and return False."""
        with self.pool._lock:
            if not self.started:
                self.abandoned = True
                return True
            self.deadline_passed = True
            self.pool.overrunning += 1
            return False
