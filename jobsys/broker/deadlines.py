"""Deadlines of many tasks kept by one loop timer: a worker's running async handlers, a
producer's publishes awaiting their confirm.

``asyncio.timeout`` arms a timer per job and cancels it when the job ends: a heap push, a
cancelled handle left in the loop's heap, and the context manager's own state, about 10 us a
job on the benchmark machine, as much as decoding the job. Jobs of one job type share its
timeout (publishes, the publish timeout), so their deadlines fall in the order they started:
each timeout keeps its running tasks in start order, the earliest deadline of all is among the
first of each, and one timer waits for it. A task that ends only leaves its list. When the
timer fires it cancels every task whose deadline has passed and waits for the next first one;
with tasks that end well within their timeout, it fires about once per timeout, whatever their
number.

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
        #: timeout -> the latest deadline put in its list (they only grow, in start order).
        self._latest: dict[float, float] = {}
        #: Deadlines that came out of order, by key.
        self._stragglers: dict[int, Deadline] = {}
        self._keys = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def enter(self, timeout_s: float, at: float | None = None) -> Deadline:
        """Start the deadline of the current task: it is cancelled ``timeout_s`` from now (at
        loop time ``at``, when given: a deadline that started earlier, ``timeout_s`` after its
        start) unless ``leave`` comes first."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Jobs of another (closed) loop cannot be running any more.
            self._loop, self._timer, self._timer_at = loop, None, math.inf
            self._running, self._latest, self._stragglers = {}, {}, {}
        task = asyncio.current_task()
        assert task is not None, "a deadline belongs to a task"
        if at is None:
            at = loop.time() + timeout_s
        deadline = Deadline(task, timeout_s, at, next(self._keys))
        running = self._running.get(timeout_s)
        if running is None:
            running = self._running[timeout_s] = {}
        if at < self._latest.get(timeout_s, -math.inf):
            # Earlier than a deadline already in its list (it started before a task that
            # entered first, e.g. a publish that waited for its channel): kept apart, and
            # looked at whole whenever the timer fires.
            self._stragglers[deadline.key] = deadline
        else:
            self._latest[timeout_s] = at
            running[deadline.key] = deadline
        if at < self._timer_at:
            self._arm(at)
        return deadline

    def leave(self, deadline: Deadline) -> bool:
        """End ``deadline``; True when it cancelled its task and no other cancellation of the
        task is pending: the ``CancelledError`` under way is then the deadline's own. Ending
        it again changes nothing and returns False."""
        running = self._running.get(deadline.timeout_s)
        if running is not None:
            running.pop(deadline.key, None)
        if self._stragglers:
            self._stragglers.pop(deadline.key, None)
        if not deadline.expired:
            return False
        deadline.expired = False  # its cancellation is withdrawn once
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
        for key, deadline in list(self._stragglers.items()):
            if deadline.at > now:
                earliest = min(earliest, deadline.at)
                continue
            del self._stragglers[key]
            deadline.expired = True
            deadline.task.cancel()
        if earliest < math.inf:
            self._arm(earliest)
