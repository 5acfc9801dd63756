"""The "publish outcome unknown" warnings: a few one by one per window, the rest counted in one
line, so that a lost connection failing thousands of publishes at once logs a handful of lines
and a count, not one line per job (no broker: a clock and a running loop)."""

from __future__ import annotations

import asyncio
import logging
import re
import threading

import pytest

from jobsys.broker import publish_errors
from jobsys.broker.publish_errors import LINES_PER_WINDOW, UnknownOutcomeLog, unknown
from jobsys.errors import PublishOutcomeUnknown

LOGGER = "jobsys.broker.publish_errors"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_a_burst_logs_a_few_lines_then_one_count_when_the_window_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    clock = _Clock()
    held = UnknownOutcomeLog(clock)
    for i in range(1000):
        held.warn(f"job-{i}", "email", "the connection was lost")
    lines = _lines(caplog)
    assert lines == [
        f"publish outcome unknown for job job-{i} (email): the connection was lost"
        for i in range(LINES_PER_WINDOW)
    ]
    clock.now += publish_errors.WINDOW_S
    held.warn("job-late", "email", "no confirm within 30s")
    lines = _lines(caplog)[LINES_PER_WINDOW:]
    assert lines[0].startswith(
        f"publish outcome unknown for {1000 - LINES_PER_WINDOW} more jobs within 10s, not "
        "logged one by one (each publisher got PublishOutcomeUnknown with its job id): "
        f"the connection was lost ({1000 - LINES_PER_WINDOW})"
    )
    assert lines[1] == "publish outcome unknown for job job-late (email): no confirm within 30s"
    held.flush()
    assert len(_lines(caplog)) == LINES_PER_WINDOW + 2  # nothing more was held


def test_the_count_names_the_three_commonest_reasons_and_how_many_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    held = UnknownOutcomeLog(_Clock())
    for _ in range(LINES_PER_WINDOW):
        held.warn("j", "t", "first lines")
    for why, n in (("lost", 4), ("closed", 3), ("timeout", 2), ("refused", 1), ("odd", 1)):
        for _ in range(n):
            held.warn("j", "t", why)
    held.flush()
    summary = _lines(caplog)[-1]
    assert summary.startswith("publish outcome unknown for 11 more jobs")
    assert summary.endswith("lost (4); closed (3); timeout (2); and 2 other reasons")


async def test_with_a_running_loop_the_count_is_logged_when_the_window_ends(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    monkeypatch.setattr(publish_errors, "WINDOW_S", 0.2)
    held = UnknownOutcomeLog()
    for i in range(LINES_PER_WINDOW + 7):
        held.warn(f"job-{i}", "email", "the connection was lost")
    assert len(_lines(caplog)) == LINES_PER_WINDOW
    await asyncio.sleep(0.5)
    assert re.match(r"publish outcome unknown for 7 more jobs within 0\.2s", _lines(caplog)[-1])


def test_publishers_on_several_threads_lose_no_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    held = UnknownOutcomeLog(_Clock())

    def burst() -> None:
        for i in range(500):
            held.warn(f"job-{i}", "email", "the connection was lost")

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held.flush()
    lines = _lines(caplog)
    assert len(lines) == LINES_PER_WINDOW + 1
    assert lines[-1].startswith(f"publish outcome unknown for {2000 - LINES_PER_WINDOW} more jobs")


def test_unknown_still_returns_the_error_with_the_job_id_whatever_is_logged() -> None:
    errors = [unknown(f"job-{i}", "email", "the connection was lost") for i in range(50)]
    assert all(isinstance(e, PublishOutcomeUnknown) for e in errors)
    assert [e.job_id for e in errors] == [f"job-{i}" for i in range(50)]
    assert "job job-49 (email): the connection was lost; outcome unknown" in str(errors[-1])
