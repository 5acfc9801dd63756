"""``serve()`` hands the stop signals back to whatever handled them before it ran, so a
supervisor's child that already drained counts a late SIGTERM instead of dying by it (pure: a
stand-in worker, no broker)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from jobsys.process.serve import EXIT_OK, serve


class _DoneAtOnce:
    """A worker that has nothing to do: ``run`` returns, drained."""

    graceful = True

    async def run(self) -> None:
        await asyncio.sleep(0)

    def request_stop(self) -> None:
        pass


@pytest.fixture
def counting_handlers() -> Iterator[list[int]]:
    seen: list[int] = []
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def count(signum: int, _frame: Any) -> None:
        seen.append(signum)

    for sig in saved:
        signal.signal(sig, count)
    try:
        yield seen
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_a_sigterm_after_serve_returned_reaches_the_handler_from_before(
    counting_handlers: list[int],
) -> None:
    assert asyncio.run(serve(_DoneAtOnce())) == EXIT_OK
    os.kill(os.getpid(), signal.SIGTERM)  # with the default back, this would end the test run
    os.kill(os.getpid(), signal.SIGINT)
    assert counting_handlers == [signal.SIGTERM, signal.SIGINT]
