"""``jobsys.broker.deadlines``: one loop timer for the deadlines of every running handler,
with ``asyncio.timeout``'s rules for turning the cancellation into a timeout. Pure asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from jobsys.broker.deadlines import Deadlines


async def _job(deadlines: Deadlines, timeout_s: float, work_s: float) -> str:
    """A handler under its deadline, as ``AttemptRunner._call`` runs one."""
    deadline = deadlines.enter(timeout_s)
    try:
        await asyncio.sleep(work_s)
    except BaseException as exc:
        if deadlines.leave(deadline) and isinstance(exc, asyncio.CancelledError):
            return "timed out"
        raise
    deadlines.leave(deadline)
    return "done"


async def test_a_job_past_its_deadline_times_out_at_the_deadline_and_not_before() -> None:
    deadlines = Deadlines()
    started = time.monotonic()

    outcome = await _job(deadlines, 0.2, 5)

    took = time.monotonic() - started
    assert outcome == "timed out"
    assert 0.2 <= took < 1.0
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_jobs_that_end_in_time_are_never_cancelled_and_later_jobs_still_time_out() -> None:
    deadlines = Deadlines()
    # The first job's deadline arms the timer; it ends long before, and the timer, firing at
    # its stale deadline, must find the next first job rather than cancel anybody.
    assert await _job(deadlines, 0.3, 0.01) == "done"
    quick = [asyncio.create_task(_job(deadlines, 0.3, 0.05 * i)) for i in range(5)]
    slow = asyncio.create_task(_job(deadlines, 0.3, 5))
    assert await asyncio.gather(*quick) == ["done"] * 5
    assert await slow == "timed out"


async def test_a_short_timeout_started_after_a_long_one_fires_on_time() -> None:
    deadlines = Deadlines()
    long = asyncio.create_task(_job(deadlines, 60, 0.5))
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await _job(deadlines, 0.1, 5) == "timed out"
    assert time.monotonic() - started < 0.5
    assert await long == "done"


async def test_one_timer_serves_many_jobs() -> None:
    deadlines = Deadlines()
    fired = 0
    fire = deadlines._fire

    def counting() -> None:
        nonlocal fired
        fired += 1
        fire()

    deadlines._fire = counting  # type: ignore[method-assign]
    for _ in range(20):
        await asyncio.gather(*(_job(deadlines, 0.05, 0.001) for _ in range(50)))
    await asyncio.sleep(0.1)
    # 1,000 jobs over about 0.1 s: the timer fired a few times, not once per job.
    assert 1 <= fired <= 10


async def test_a_cancellation_from_outside_is_not_taken_for_the_deadline() -> None:
    deadlines = Deadlines()
    job = asyncio.create_task(_job(deadlines, 0.1, 5))
    await asyncio.sleep(0.05)
    job.cancel()  # the worker stopping at once, before the deadline
    with pytest.raises(asyncio.CancelledError):
        await job


async def test_a_stop_arriving_with_the_deadline_still_stops_the_job() -> None:
    deadlines = Deadlines()

    async def stopped_too() -> str:
        deadline = deadlines.enter(0.05)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            # The deadline has fired; the worker now also cancels the task (a hard stop).
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
            return "timed out" if deadlines.leave(deadline) else "stopped"
        return "done"

    assert await stopped_too() == "stopped"


async def test_a_handler_that_swallows_its_cancellation_keeps_its_result() -> None:
    deadlines = Deadlines()

    async def stubborn() -> str:
        deadline = deadlines.enter(0.05)
        with contextlib.suppress(asyncio.CancelledError):  # swallowed: it returns normally
            await asyncio.sleep(5)
        deadlines.leave(deadline)
        return "done"

    assert await stubborn() == "done"
    # The deadline's cancellation is withdrawn, as asyncio.timeout withdraws it: the task is
    # not taken for one being stopped.
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


def test_a_new_event_loop_starts_with_no_deadlines() -> None:
    deadlines = Deadlines()
    assert asyncio.run(_job(deadlines, 0.05, 1)) == "timed out"
    assert asyncio.run(_job(deadlines, 5, 0.01)) == "done"
    assert asyncio.run(_job(deadlines, 0.05, 1)) == "timed out"


async def test_a_deadline_that_started_before_one_already_kept_still_fires_on_time() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def waited_first(at: float) -> str:
        # A publish that started first but waited for its channel: it enters after a later
        # one, with the earlier deadline.
        deadline = deadlines.enter(0.5, at=at)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            if deadlines.leave(deadline):
                return "timed out"
            raise
        deadlines.leave(deadline)
        return "done"

    later = asyncio.create_task(_job(deadlines, 0.5, 5))  # deadline at about started + 0.5
    await asyncio.sleep(0.2)
    assert await waited_first(started + 0.1) == "timed out"  # already past when it entered
    assert loop.time() - started < 0.35
    assert await waited_first(loop.time() + 0.05) == "timed out"
    assert await later == "timed out"
    assert loop.time() - started < 1.0
