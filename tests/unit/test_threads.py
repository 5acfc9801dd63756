"""The sync handlers' thread pool and the event-loop watchdog (no broker): a job that never got a
thread is told apart from one that overran; a blocked loop is noticed and named."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from jobsys.consume.threads import DeadlinePassed, HandlerThreads
from jobsys.consume.watchdog import LoopWatchdog
from jobsys.errors import HandlerThreadsBusy


async def test_a_handler_that_overruns_runs_on_and_one_that_never_started_never_runs() -> None:
    pool = HandlerThreads(1)
    ran: list[str] = []
    release = threading.Event()

    def hang(name: str) -> None:
        ran.append(name)
        release.wait(5)

    first = asyncio.create_task(pool.run(hang, ("first",), 0.2))
    second = asyncio.create_task(pool.run(hang, ("second",), 0.2))
    with pytest.raises(DeadlinePassed):
        await first
    with pytest.raises(HandlerThreadsBusy, match=r"1 of 1 busy, 1 with handlers past"):
        await second
    assert (pool.running, pool.overrunning) == (1, 1)
    release.set()
    await asyncio.sleep(0.3)  # the thread is free again: the abandoned job still never runs
    assert ran == ["first"]
    assert (pool.running, pool.overrunning) == (0, 0)
    pool.shutdown()


async def test_a_handler_that_returns_in_time_gives_its_result_and_its_errors() -> None:
    pool = HandlerThreads(2)
    assert await pool.run(lambda x: x * 2, (21,), 1.0) == 42

    def own_timeout() -> None:
        raise TimeoutError("the handler's own")

    with pytest.raises(TimeoutError, match="the handler's own"):
        await pool.run(own_timeout, (), 1.0)
    pool.shutdown()


async def test_the_watchdog_names_the_jobs_running_while_the_loop_is_blocked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watchdog = LoopWatchdog(heartbeat_s=0.4, warn_after_s=0.3)
    watchdog.start()
    try:
        with caplog.at_level(logging.WARNING, logger="jobsys.consume.watchdog"):
            with watchdog.running("job-7", "blocks"):
                time.sleep(1.2)  # noqa: ASYNC251 - the blocking handler under test
            await asyncio.sleep(0.4)
    finally:
        watchdog.stop()
    assert "while running job-7 (blocks)" in caplog.text
    assert "the event loop was blocked for" in caplog.text
    blocked = watchdog.cost_the_connection("job-7")
    assert blocked is not None and blocked > 0.8  # past twice the heartbeat
    assert watchdog.cost_the_connection("job-8") is None
