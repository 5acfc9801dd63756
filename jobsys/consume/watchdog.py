"""Noticing an event loop that stops turning: an async handler that blocks it.

An async handler that calls blocking code (``time.sleep``, a blocking client) freezes every
pool of the worker, and its deadline cannot fire while the loop is frozen. Blocked past the
heartbeat, the broker drops the connection and redelivers the job, which blocks again: a
duplicate every minute, forever. The watchdog is a thread that sees the loop stop turning and
logs which jobs were running, with their ids; when a block outlasts the heartbeat, the jobs
running then are remembered, and their redelivery is dead-lettered instead of run again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: How long the loop may not turn before the watchdog says so.
WARN_AFTER_S = 1.0
#: How many jobs that cost a connection are remembered (by job id).
_REMEMBERED = 10_000


class LoopWatchdog:
    """Watches one event loop from a thread; ``heartbeat_s`` is the connection's heartbeat
    (0: none), past which a block is taken to have cost the connection."""

    def __init__(self, heartbeat_s: float, warn_after_s: float = WARN_AFTER_S) -> None:
        self.heartbeat_s = heartbeat_s
        self.warn_after_s = warn_after_s
        self._tick_s = min(0.25, warn_after_s / 4)
        self._last_turn = time.monotonic()
        self._running: dict[int, tuple[str, str]] = {}  # key -> (job id, job type)
        self._keys = itertools.count()
        self._costly: OrderedDict[str, float] = OrderedDict()  # job id -> seconds blocked
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start watching the running loop."""
        self._loop = asyncio.get_running_loop()
        self._last_turn = time.monotonic()
        self._loop.call_soon(self._turn)
        self._thread = threading.Thread(
            target=self._watch, name="jobsys-loop-watchdog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)

    def blocked_s(self) -> float:
        """How long the loop has not turned, as the health probes see it (0 before it is
        watched and once the watchdog stopped: a worker shutting down is bounded by its own
        timeouts)."""
        if self._thread is None or self._stop.is_set():
            return 0.0
        return max(0.0, time.monotonic() - self._last_turn - self._tick_s)

    def enter(self, job_id: str | None, job_type: str | None) -> int:
        """Mark an async handler as running on the loop until ``leave`` with the key returned.

        No lock: a dict's item assignment and removal, and the copy the watchdog's thread
        takes, each run whole under the GIL; the lock taken twice per job is saved.
        """
        key = next(self._keys)
        self._running[key] = (job_id or "unknown", job_type or "unknown")
        return key

    def leave(self, key: int) -> None:
        """The handler marked by ``enter`` has returned."""
        self._running.pop(key, None)

    @contextmanager
    def running(self, job_id: str | None, job_type: str | None) -> Iterator[None]:
        """Mark an async handler as running on the loop for the duration of the block."""
        key = self.enter(job_id, job_type)
        try:
            yield
        finally:
            self.leave(key)

    def cost_the_connection(self, job_id: str | None) -> float | None:
        """How long ``job_id`` blocked the loop on a run that cost the connection (None: it
        did not, as far as this worker remembers)."""
        if job_id is None:
            return None
        with self._lock:
            return self._costly.get(job_id)

    def _turn(self) -> None:
        now = time.monotonic()
        blocked = now - self._last_turn - self._tick_s
        self._last_turn = now
        if blocked >= self.warn_after_s:
            log.warning(
                "the event loop was blocked for %.1fs; pools served nothing meanwhile", blocked
            )
        if not self._stop.is_set() and self._loop is not None:
            self._loop.call_later(self._tick_s, self._turn)

    def _watch(self) -> None:
        warned_at = 0.0
        while not self._stop.wait(self._tick_s):
            blocked = time.monotonic() - self._last_turn - self._tick_s
            if blocked < self.warn_after_s:
                warned_at = 0.0
                continue
            jobs = list(self._running.copy().values())
            if warned_at == 0.0 or blocked - warned_at >= 10.0:
                warned_at = blocked
                shown = ", ".join(f"{job_id} ({job_type})" for job_id, job_type in jobs)
                log.warning(
                    "the event loop has been blocked for %.1fs while running %s: an async "
                    "handler must not block (run blocking code in a sync handler or with "
                    "asyncio.to_thread); every pool of this worker waits meanwhile",
                    blocked,
                    shown or "no job",
                )
            if self.heartbeat_s and blocked > 2 * self.heartbeat_s:
                self._remember(jobs, blocked)

    def _remember(self, jobs: list[tuple[str, str]], blocked: float) -> None:
        with self._lock:
            for job_id, _ in jobs:
                self._costly[job_id] = blocked
                self._costly.move_to_end(job_id)
            while len(self._costly) > _REMEMBERED:
                self._costly.popitem(last=False)
