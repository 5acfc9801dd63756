"""``jobsys demo --in-memory``: the demo on the in-memory test kit, for a machine without
RabbitMQ.

The same jobs as the broker demo, published through the same ``Producer`` API and run by the
same handlers, attempt runner and settlement code, on ``jobsys.testing.Kit``: routing, retries
with backoff and dead letters happen as on the broker, on a virtual clock, so the run takes a
moment however long the backoff. Nothing is declared anywhere and nothing outlives the run.
"""

from __future__ import annotations

from jobsys.app import JobContext
from jobsys.cli import demo_app
from jobsys.cli.demo_run import Echo, Tally, echo_event, publish_all, worker_warnings_quiet
from jobsys.testing import Kit
from jobsys.topology.loader import LoadedTopology
from jobsys.topology.model import dead_letter_queue_name

#: Virtual time the demo may advance through: far beyond its longest backoff.
_MAX_S = 3600.0


async def run_demo_in_memory(loaded: LoadedTopology, echo: Echo) -> int:
    """Run the demo in memory; returns 0 when every job ended where it should."""
    topology = loaded.topology
    echo(f"jobsys demo: {loaded.filename} IN MEMORY (no broker: jobsys.testing's kit)\n")
    events: list[tuple[int, JobContext, str]] = []
    async with Kit(demo_app.app, loaded) as kit:

        def on_event(ctx: JobContext, what: str) -> None:
            # Sync handlers call this from a thread; a list append is safe there.
            events.append((kit.now_ms(), ctx, what))

        demo_app.listeners.append(on_event)
        with worker_warnings_quiet():
            try:
                echo(
                    f"1. topology loaded into the kit: {len(topology.exchanges)} exchanges, "
                    f"{len(topology.queues)} queues, with their dead-letter queues and delay levels"
                )
                echo(
                    "2. in-memory worker for "
                    + ", ".join(kit.queues)
                    + ": one job at a time, on a virtual clock"
                )
                tally = Tally()
                start_ms = kit.now_ms()
                await publish_all(kit.producer, tally, echo)
                await kit.run_until_idle(_MAX_S)
            finally:
                demo_app.listeners.remove(on_event)
        echo("\n4. what happened (virtual time since publishing; backoff took no real time):")
        for at_ms, ctx, what in events:
            ok = not any(word in what for word in ("declined", "unavailable", "timed out"))
            if ok:
                tally.done.add(ctx.job_id)
            echo_event(tally, ctx, what, f"+{(at_ms - start_ms) / 1000:6.2f}s", ok, echo)
        dead = _show_dead_letters(kit, list(topology.queues), echo)
        echo(f"\n6. {kit.stats.summary()}")
        echo(
            "\nThat ran without a broker. With RabbitMQ running, `jobsys demo` runs the same "
            "jobs on it (docs/testing.md says what the kit does not model)."
        )
    settled = len(tally.done) + dead >= len(tally.published)
    return 0 if settled else 1


def _show_dead_letters(kit: Kit, queues: list[str], echo: Echo) -> int:
    echo("\n5. dead-letter queues (jobs that failed for good, with the reason):")
    count = 0
    for queue in queues:
        for job in kit.dead_letters(queue):
            count += 1
            record = job.record
            echo(
                f"   {dead_letter_queue_name(queue):<18} {(job.job_id or '?')[:8]:<8} "
                f"{record.job_type or '?':<14} after {record.attempts or 1} attempt(s): "
                f"{record.error_type}: {record.error_message or '(no message)'}"
            )
    return count
