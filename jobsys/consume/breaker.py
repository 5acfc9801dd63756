"""Circuit breakers per job type (pure): closed, open for a cool-down, half-open for one trial.

Closed, every attempt runs and its result is counted in a sliding window. When the window holds
``failures`` failed attempts (or, with ``failure_ratio``, that share of at least ``min_calls``),
the breaker opens: for ``cool_down`` no job of the type is attempted (the worker sends each back
to wait in the delay levels, unrun, burning no attempt). Then it half-opens: one job runs as a
trial while the others keep waiting; its success closes the breaker, its failure opens it again.

Each worker process counts what it ran itself; a breaker one worker opens (or closes after its
trial) is opened (or closed) in every worker too, through the breakers' stream
(``jobsys.consume.breakers``).
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from jobsys.topology.model import CircuitBreaker

__all__ = ["Breaker", "State"]

State = Literal["closed", "open", "half-open"]
#: How long a job waits while another runs the half-open trial.
TRIAL_WAIT_S = 1.0


class Breaker:
    """The breaker of one job type; ``now`` is any monotonic clock, in seconds."""

    def __init__(self, spec: CircuitBreaker) -> None:
        self.spec = spec
        self.state: State = "closed"
        self.opened_at = 0.0
        self._results: deque[tuple[float, bool]] = deque()
        self._trial_running = False

    def wait_s(self, now: float) -> float | None:
        """None when a job may run now; else how long it should wait. A job let through in
        half-open state is the trial: the caller must ``record`` its result."""
        if self.state == "open":
            remaining = self.opened_at + self.spec.cool_down - now
            if remaining > 0:
                return remaining
            self.state = "half-open"
        if self.state == "half-open":
            if self._trial_running:
                return TRIAL_WAIT_S
            self._trial_running = True
        return None

    def record(self, now: float, ok: bool) -> State | None:
        """Count one attempt's result; returns the new state when it changed."""
        if self.state == "half-open":
            self._trial_running = False
            return self._close() if ok else self._open(now)
        if self.state == "open":
            return None  # an attempt that started before the breaker opened
        self._results.append((now, ok))
        while self._results and self._results[0][0] <= now - self.spec.window:
            self._results.popleft()
        return self._open(now) if self._tripped() else None

    def open_for(self, now: float, remaining_s: float) -> bool:
        """Another worker opened this type's breaker, for ``remaining_s`` more: open here too
        (until then, then one trial). False when it changes nothing (already open longer)."""
        until = now + remaining_s
        if self.state == "open" and self.opened_at + self.spec.cool_down >= until:
            return False
        self.state = "open"
        self.opened_at = until - self.spec.cool_down
        self._results.clear()
        self._trial_running = False
        return True

    def close_from_elsewhere(self) -> bool:
        """Another worker's trial succeeded: close here too. False when already closed."""
        if self.state == "closed":
            return False
        self._close()
        self._trial_running = False
        return True

    def abandon_trial(self) -> None:
        """The job let through as the trial did not run its handler after all: the next one
        may be the trial."""
        self._trial_running = False

    def describe(self) -> str:
        """The trigger in words: ``5 failures in 60s`` or ``50% of at least 10 in 60s``."""
        window = f"{self.spec.window:g}s"
        if self.spec.failures is not None:
            return f"{self.spec.failures} failures in {window}"
        ratio = self.spec.failure_ratio or 0.0
        return f"{ratio:.0%} failures of at least {self.spec.min_calls} attempts in {window}"

    def _tripped(self) -> bool:
        failed = sum(1 for _, ok in self._results if not ok)
        if self.spec.failures is not None:
            return failed >= self.spec.failures
        calls = len(self._results)
        ratio = self.spec.failure_ratio or 1.0
        return calls >= self.spec.min_calls and failed / calls >= ratio

    def _open(self, now: float) -> State:
        self.state = "open"
        self.opened_at = now
        self._results.clear()
        return "open"

    def _close(self) -> State:
        self.state = "closed"
        self._results.clear()
        return "closed"
