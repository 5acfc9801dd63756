"""What a worker is asked to do (``WorkerOptions``) and what it did (``WorkerStats``).

Plain data with no imports beyond the standard library, so that a supervisor can describe its
children without loading the broker client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerOptions:
    """What to consume and how; ``None`` takes the topology file's per-queue defaults."""

    queues: Sequence[str] = ()  # empty: every queue reached by a job type with a handler
    concurrency: int | None = None
    prefetch: int | None = None
    grace_s: float = 30.0
    #: Drain and stop after this many settled jobs (a supervisor recycles the process).
    max_jobs: int | None = None
    #: Threads for sync handlers (None: the pools' concurrency added up). A sync handler that
    #: overruns its deadline keeps its thread until it returns; more threads leave room.
    threads: int | None = None
    #: How long each of the app's startup and shutdown hooks may take.
    hook_timeout_s: float = 60.0
    #: A weighted pool of the topology (``pools:``) to serve instead of ``queues``.
    pool: str | None = None


@dataclass
class WorkerStats:
    """What a worker did; a supervisor reads ``settled`` to count jobs done."""

    done: int = 0
    retried: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    unfinished: int = 0
    lost_acks: int = 0
    #: Delayed jobs that arrived before their due time and went back to wait.
    early: int = 0
    #: Jobs cancelled before they ran, acked without running.
    cancelled: int = 0
    #: Jobs a limit of their job type held back (no permit free), sent back to wait unrun.
    held_back: int = 0

    @property
    def settled(self) -> int:
        """Deliveries finished one way or the other: done, retried (republished for a later
        attempt) or dead-lettered."""
        return self.done + self.retried + self.dead_lettered

    def summary(self) -> str:
        """One line for the end of a run."""
        line = (
            f"worker stopped: {self.done} done, {self.dead_lettered} dead-lettered, "
            f"{self.requeued} requeued, {self.unfinished} unfinished"
        )
        if self.retried:
            line += f", {self.retried} attempts failed and retried"
        if self.lost_acks:
            line += f", {self.lost_acks} redelivered after a lost channel"
        if self.early:
            line += f", {self.early} arrived early and went back to wait"
        if self.cancelled:
            line += f", {self.cancelled} cancelled before they ran"
        if self.held_back:
            line += f", {self.held_back} held back by max_running and sent back to wait"
        return line
