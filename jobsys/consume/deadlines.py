"""The deadlines of a worker's running async handlers, kept by one loop timer for all of them.

``asyncio.timeout`` arms a timer per job and cancels it when the job ends: a heap push, a
cancelled handle left in the loop's heap, and the context manager's own state, about 10 us a
job on the benchmark machine, as much as decoding the job. Jobs of one job type share its
timeout, so their deadlines fall in the order they started: each timeout keeps its running jobs
in start order, the earliest deadline of all is among the first of each, and one timer waits
for it. A job that ends only leaves its list. When the timer fires it cancels every job whose
deadline has passed and waits for the next first one; with jobs that end well within their
timeout, it fires about once per timeout, whatever the number of jobs.

A job's cancellation and its conversion to ``TimeoutError`` follow ``asyncio.timeout``: the
task is cancelled at its deadline, and the ``CancelledError`` becomes a timeout only when no
other cancellation of the task is pending (``Task.uncancel``), so a worker stopping at once
still stops its jobs.
"""

from __future__ import annotations

import asyncio
import itertools
import math


class Deadline:
    """One running job's deadline (``Deadlines.enter``)."""

    __slots__ = ("at", "cancelling", "expired", "key", "task", "timeout_s")

    def __init__(self, task: asyncio.Task[object], timeout_s: float, at: float, key: int) -> None:
        self.task = task
        self.timeout_s = timeout_s
        self.at = at
        self.key = key
        #: Cancellations of the task already pending at entry (``asyncio.timeout`` keeps it too).
        self.cancelling = task.cancelling()
        #: The deadline passed and cancelled the task.
        self.expired = False


class Deadlines:
    """The deadlines of the jobs running on one event loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        #: timeout -> running jobs with that timeout, by key, in the order they started.
        self._running: dict[float, dict[int, Deadline]] = {}
        self._keys = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def enter(self, timeout_s: float) -> Deadline:
        """Start the deadline of the current task: it is cancelled ``timeout_s`` from now
        unless ``leave`` comes first."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Jobs of another (closed) loop cannot be running any more.
            self._loop, self._running, self._timer, self._timer_at = loop, {}, None, math.inf
        task = asyncio.current_task()
        assert task is not None, "a deadline belongs to a task"
        at = loop.time() + timeout_s
        deadline = Deadline(task, timeout_s, at, next(self._keys))
        running = self._running.get(timeout_s)
        if running is None:
            running = self._running[timeout_s] = {}
        running[deadline.key] = deadline
        if at < self._timer_at:
            self._arm(at)
        return deadline

    def leave(self, deadline: Deadline) -> bool:
        """End ``deadline``; True when it cancelled its task and no other cancellation of the
        task is pending: the ``CancelledError`` under way is then the deadline's own."""
        running = self._running.get(deadline.timeout_s)
        if running is not None:
            running.pop(deadline.key, None)
        if not deadline.expired:
            return False
        return deadline.task.uncancel() <= deadline.cancelling

    def _arm(self, at: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(at, self._fire)
        self._timer_at = at

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        assert self._loop is not None
        now = self._loop.time()
        earliest = math.inf
        for running in self._running.values():
            while running:
                key, deadline = next(iter(running.items()))
                if deadline.at > now:
                    earliest = min(earliest, deadline.at)
                    break
                del running[key]
                deadline.expired = True
                deadline.task.cancel()
        if earliest < math.inf:
            self._arm(earliest)
