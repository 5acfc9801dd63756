"""A worker's health as probes read it: ``/livez`` and ``/readyz`` on the metrics listener.

Pure: the worker says what it knows (is its event loop turning, is it consuming, is its
connection up), this module turns that into the two answers an orchestrator acts on.

- **live**: restarting the process would help. Only an event loop that has not turned for longer
  than twice the heartbeat is not live: by then the broker has dropped the worker's connection
  and redelivered its jobs, and a loop frozen that long (an async handler stuck in blocking code)
  may never turn again. Starting, draining and reconnecting are live: each is bounded by its own
  timeout and ends with the process exiting or serving again.
- **ready**: the worker is taking jobs now: started, not draining, connected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: The least time a loop may stand still before it is called not live, whatever the heartbeat.
MIN_LIVE_LIMIT_S = 10.0


@dataclass(frozen=True)
class Health:
    """What ``/livez`` and ``/readyz`` answer; ``detail`` is one line for a person."""

    live: bool
    ready: bool
    detail: str


#: Called from the metrics listener's thread: must only read plain attributes.
HealthSource = Callable[[], Health]


def live_limit_s(heartbeat_s: float) -> float:
    """How long the event loop may stand still before the process is not live."""
    return max(2 * heartbeat_s, MIN_LIVE_LIMIT_S)


def worker_health(
    *, blocked_s: float, heartbeat_s: float, started: bool, stopping: bool, connected: bool
) -> Health:
    """The health of a worker whose loop has not turned for ``blocked_s`` seconds."""
    limit = live_limit_s(heartbeat_s)
    if blocked_s > limit:
        return Health(
            live=False,
            ready=False,
            detail=f"the event loop has not turned for {blocked_s:.0f}s (limit {limit:g}s)",
        )
    if stopping:
        return Health(live=True, ready=False, detail="draining: taking no new jobs")
    if not started:
        return Health(live=True, ready=False, detail="starting")
    if not connected:
        return Health(live=True, ready=False, detail="reconnecting to the broker")
    return Health(live=True, ready=True, detail="consuming")
