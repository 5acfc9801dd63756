"""The flow control a topology asks for, as ``jobsys topology plan`` shows it (pure).

Weighted pools are not broker entities: nothing is declared for them, so the plan lists them
apart, with each queue's share of the jobs started while every queue of the pool has a backlog.
"""

from __future__ import annotations

from typing import Any

from jobsys.duration import format_duration
from jobsys.topology.model import Topology
from jobsys.topology.own import OwnLayout

__all__ = ["flow_json", "flow_lines"]


def flow_lines(topology: Topology) -> list[str]:
    """One line per weighted pool: ``pool mixed (concurrency 10): urgent weight 6 = 60.0%
    (prefetch 40), normal weight 3 = 30.0% (prefetch 20), ...``."""
    lines = []
    for name, pool in topology.pools.items():
        shares = pool.shares()
        queues = ", ".join(
            f"{queue} weight {weight} = {shares[queue]:.1%} (prefetch {pool.prefetch_of(queue)})"
            for queue, weight in pool.queues.items()
        )
        lines.append(f"pool {name} (concurrency {pool.concurrency}): {queues}")
    own = OwnLayout(topology.namespace)
    for name, job_type in topology.job_types.items():
        if job_type.max_running is not None:
            lines.append(
                f"job type {name}: at most {job_type.max_running} running across every worker "
                f"(permits in {own.permits_queue(name, job_type.max_running)})"
            )
    for name, job_type in topology.job_types.items():
        if job_type.rate_limit is not None:
            lines.append(
                f"job type {name}: at most {job_type.rate_limit:g} starts/s across every worker, "
                f"bursts of {job_type.burst} (tokens in {own.tokens_queue(name)}, refilled by "
                f"the worker elected on {own.refiller_queue})"
            )
    for name, job_type in topology.job_types.items():
        breaker = job_type.breaker
        if breaker is not None:
            trigger = (
                f"{breaker.failures} failures"
                if breaker.failures is not None
                else f"{breaker.failure_ratio:.0%} failures of at least {breaker.min_calls}"
            )
            lines.append(
                f"job type {name}: circuit breaker opens at {trigger} in "
                f"{format_duration(breaker.window)}, pauses {format_duration(breaker.cool_down)}, "
                f"then one trial (state in {own.breaker_queue(name)})"
            )
    return lines


def flow_json(topology: Topology) -> dict[str, Any]:
    """The same for machines: ``{"pools": {name: {"concurrency", "queues": {queue:
    {"weight", "share", "prefetch"}}}}}``."""
    return {
        "pools": {
            name: {
                "concurrency": pool.concurrency,
                "queues": {
                    queue: {
                        "weight": weight,
                        "share": round(pool.shares()[queue], 6),
                        "prefetch": pool.prefetch_of(queue),
                    }
                    for queue, weight in pool.queues.items()
                },
            }
            for name, pool in topology.pools.items()
        },
        "breakers": {
            name: job_type.breaker.model_dump()
            for name, job_type in topology.job_types.items()
            if job_type.breaker is not None
        },
        "rate_limits": {
            name: {"per_s": job_type.rate_limit, "burst": job_type.burst}
            for name, job_type in topology.job_types.items()
            if job_type.rate_limit is not None
        },
        "max_running": {
            name: job_type.max_running
            for name, job_type in topology.job_types.items()
            if job_type.max_running is not None
        },
    }
