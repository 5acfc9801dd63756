"""``jobsys demo``: the whole product in one run against a real broker.

It applies ``topology/example.yaml``, starts consumer pools for its queues in this process,
publishes a mix of jobs (priorities, a delayed job, a job that fails twice then succeeds, a
declined card, a crashing audit event, a body that is not JSON) and shows each one done,
retried or dead-lettered, then how to look at and replay the dead-lettered ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from jobsys.app import JobContext
from jobsys.broker.connection import BrokerConnection
from jobsys.cli import demo_app
from jobsys.consume.worker import Worker, WorkerOptions
from jobsys.errors import TopologyConflictError
from jobsys.ops import dlq
from jobsys.ops.declare import apply_topology
from jobsys.publish.producer import JobRequest, Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.topology.model import dead_letter_queue_name
from jobsys.wire.envelope import JobProperties, new_job_id
from jobsys.wire.headers import identity_headers

Echo = Callable[[str], None]


@contextlib.contextmanager
def worker_warnings_quiet() -> Iterator[None]:
    """The demo prints every outcome itself; the worker's own warnings would say it twice.
    The level is put back after: the demo may run inside a longer-lived process (a test run,
    a notebook) whose log should not lose jobsys's warnings for good."""
    logger = logging.getLogger("jobsys.consume")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


#: How long the demo waits for every job to end up done or dead-lettered.
SETTLE_TIMEOUT_S = 60.0

_JOBS = [
    JobRequest("send_email", {"to": "ada@example.com", "subject": "welcome"}, priority=9),
    JobRequest("send_email", {"to": "grace@example.com", "subject": "digest"}, priority=1),
    JobRequest("send_email", {"to": "alan@example.com"}),
    JobRequest("send_newsletter", {"issue": 42}, delay_s=3),
    JobRequest("charge_card", {"card": "4242", "amount_cents": 1999}),
    JobRequest("charge_card", {"card": "flaky", "amount_cents": 500}),
    JobRequest("charge_card", {"card": "declined", "amount_cents": 12000}),
    JobRequest("build_report", {"month": "2026-10"}),
    JobRequest("render_pdf", {"report": "2026-10"}),
    JobRequest("audit_event", {"event": "login"}),
    JobRequest("audit_event", {"event": "export", "crash": True}),
]


@dataclass
class Tally:
    """What the demo has seen so far."""

    started_at: float = field(default_factory=time.monotonic)
    done: set[str] = field(default_factory=set)
    published: dict[str, tuple[str, float | None]] = field(default_factory=dict)
    #: Handler runs seen while the publish lines are still being printed, shown after them.
    held: list[tuple[JobContext, str, str]] | None = field(default_factory=list)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started_at:6.2f}s"


async def run_demo(settings: Settings, loaded: LoadedTopology, echo: Echo) -> int:
    """Run the demo; returns 0 when every job ended where it should."""
    topology = loaded.topology
    echo(f"jobsys demo: {loaded.filename} on {settings.masked_url}\n")
    async with BrokerConnection(settings) as connection:
        try:
            result = await apply_topology(connection, loaded)
        except TopologyConflictError:
            # Left by an older demo: the demo's own queues, which it may tell how to reset.
            echo(
                "the demo's entities on this broker come from an older jobsys; delete the demo "
                "queues named below (e.g. `rabbitmqctl delete_queue demo.emails`) and run "
                "the demo again\n"
            )
            raise
        created = len(result.created)
        echo(
            f"1. topology applied: {created} entities created"
            if created
            else "1. topology applied: already in place, nothing to change"
        )
        cleared = await _clear_leftovers(connection, list(topology.queues))
        if cleared:
            echo(f"   cleared {cleared} jobs left by an earlier run (demo queues only)")

    tally = Tally()
    loop = asyncio.get_running_loop()

    def on_event(ctx: JobContext, what: str) -> None:
        # Sync handlers call this from a worker thread; print on the loop's thread.
        loop.call_soon_threadsafe(_show_event, tally, ctx, what, echo)

    demo_app.listeners.append(on_event)
    quiet = contextlib.ExitStack()
    quiet.enter_context(worker_warnings_quiet())
    worker = Worker(demo_app.app, loaded, settings, WorkerOptions(grace_s=10))
    worker_task = asyncio.create_task(worker.run())
    try:
        await _wait_ready(worker, worker_task)
        echo(
            "2. consumer pools running: "
            + ", ".join(
                f"{p.queue} ({p.concurrency} at once, prefetch {p.prefetch})" for p in worker.pools
            )
        )
        async with Producer(settings, topology) as producer:
            await publish_all(producer, tally, echo)
            echo("\n4. what happened (handler runs as they finish):")
            _release_held(tally, echo)
            expected = len(tally.published)
            async with BrokerConnection(settings) as connection:
                await _wait_settled(connection, tally, list(topology.queues), expected)
                await _show_dead_letters(connection, list(topology.queues), loaded, echo)
    finally:
        worker.request_stop()
        await asyncio.gather(worker_task, return_exceptions=True)
        demo_app.listeners.remove(on_event)
        quiet.close()
    echo(f"\n6. {worker.stats.summary()}")
    return 0 if worker_task.exception() is None else 1


async def _clear_leftovers(connection: BrokerConnection, queues: list[str]) -> int:
    channel = await connection.channel(confirms=False)
    cleared = 0
    try:
        for name in [*queues, *map(dead_letter_queue_name, queues)]:
            queue = await channel.get_queue(name, ensure=False)
            result = await queue.purge()
            cleared += int(result.message_count or 0)
    finally:
        await channel.close()
    return cleared


async def _wait_ready(worker: Worker, task: asyncio.Task[object]) -> None:
    ready = asyncio.create_task(worker.ready.wait())
    done, _ = await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()  # raises the worker's error


async def publish_all(producer: Producer, tally: Tally, echo: Echo) -> None:
    echo("\n3. publishing (each line is a job the broker confirmed and routed):")
    results = await producer.publish_many(_JOBS)
    for request, result in zip(_JOBS, results, strict=True):
        if isinstance(result, Exception):
            echo(f"   {request.job_type:<16} NOT published: {result}")
            continue
        tally.published[result.job_id] = (request.job_type, request.delay_s)
        extra = f", priority {request.priority}" if request.priority is not None else ""
        if request.delay_s:
            extra += f", delayed {request.delay_s:g}s"
        echo(f"   {request.job_type:<16} {result.job_id[:8]} -> {result.exchange}{extra}")
    # A body that is not JSON, as a buggy producer elsewhere might send it.
    poison_id = new_job_id()
    await producer.republish(
        b"\xffnot json",
        identity_headers({}, job_id=poison_id),
        "demo.jobs",
        "email.send",
        kept=JobProperties("send_email"),
        kind="publish",
    )
    tally.published[poison_id] = ("send_email", None)
    echo(f"   {'send_email':<16} {poison_id[:8]} -> demo.jobs, a body that is not JSON")


def _show_event(tally: Tally, ctx: JobContext, what: str, echo: Echo) -> None:
    ok = not any(word in what for word in ("declined", "unavailable", "timed out"))
    if ok:
        tally.done.add(ctx.job_id)
    if tally.held is not None:
        tally.held.append((ctx, what, tally.elapsed()))
        return
    echo_event(tally, ctx, what, tally.elapsed(), ok, echo)


def echo_event(tally: Tally, ctx: JobContext, what: str, when: str, ok: bool, echo: Echo) -> None:
    job_type, delay_s = tally.published.get(ctx.job_id, (ctx.job_type, None))
    status = "ok    " if ok else "FAILED"
    note = f" (published with a {delay_s:g}s delay)" if delay_s else ""
    echo(f"   [{when}] {job_type:<16} {ctx.job_id[:8]} attempt {ctx.attempt} {status} {what}{note}")


def _release_held(tally: Tally, echo: Echo) -> None:
    held, tally.held = tally.held or [], None
    for ctx, what, when in held:
        echo_event(tally, ctx, what, when, ctx.job_id in tally.done, echo)


async def _wait_settled(
    connection: BrokerConnection, tally: Tally, queues: list[str], expected: int
) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = sum([await dlq.count(connection, q) for q in queues])
        if len(tally.done) + dead >= expected:
            return
        await asyncio.sleep(0.25)
    raise TimeoutError(f"not every job settled within {SETTLE_TIMEOUT_S:g}s")


async def _show_dead_letters(
    connection: BrokerConnection, queues: list[str], loaded: LoadedTopology, echo: Echo
) -> None:
    echo("\n5. dead-letter queues (jobs that failed for good, with the reason):")
    for queue in queues:
        peeked = await dlq.peek(connection, queue)
        for job in peeked.jobs:
            job_id, job_type = (job.job_id or "?")[:8], job.job_type or "?"
            echo(
                f"   {dead_letter_queue_name(queue):<18} {job_id:<8} {job_type:<14} "
                f"after {job.attempts or 1} attempt(s): {job.error_type}: "
                f"{job.error_message or '(no message)'}"
            )
    echo(
        "   look closer:  jobsys dlq list demo.billing --topology " + loaded.filename + "\n"
        "   replay them:  jobsys dlq replay demo.billing --topology " + loaded.filename
    )
