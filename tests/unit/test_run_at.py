"""``publish(..., run_at=...)``: a moment instead of a delay, through the same delay levels."""

from __future__ import annotations

import math
import time
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobsys.errors import ConfigError
from jobsys.publish.producer import JobRequest, PreparedJob
from jobsys.wire.headers import HEADER_DUE_AT_MS, HEADER_ORIGINAL_EXCHANGE
from tests.unit.test_producer_prepare import TOPOLOGY, make_producer


def prepare(run_at: object, **kwargs: object) -> PreparedJob:
    request = JobRequest("send_email", {"to": "a@b.c"}, run_at=run_at, **kwargs)  # type: ignore[arg-type]
    return make_producer().prepare(request)


def test_a_moment_ahead_goes_through_the_delay_levels_and_carries_exactly_that_moment() -> None:
    moment = datetime.now(UTC) + timedelta(seconds=90, milliseconds=400)
    job = prepare(moment)

    assert job.delay_s in (91.0, 92.0)  # rounded up to whole seconds: never early
    assert job.headers[HEADER_DUE_AT_MS] == math.ceil(moment.timestamp() * 1000)
    assert job.headers[HEADER_ORIGINAL_EXCHANGE] == "jobs"
    route = TOPOLOGY.delay_layout.route("emails", job.delay_s or 0)
    assert job.targets == ((route.exchange, route.routing_key, ("emails",)),)


def test_a_moment_in_another_timezone_is_the_same_instant() -> None:
    berlin = datetime.now(ZoneInfo("Europe/Berlin")) + timedelta(minutes=5)
    job = prepare(berlin)

    assert job.headers[HEADER_DUE_AT_MS] == math.ceil(berlin.timestamp() * 1000)
    assert job.delay_s is not None and 299 <= job.delay_s <= 301


def test_a_moment_in_the_past_runs_now_and_still_carries_its_due_time() -> None:
    moment = datetime(2020, 1, 1, tzinfo=UTC)
    job = prepare(moment)

    assert job.delay_s is None
    assert job.targets == (("jobs", "email.send", ("emails",)),)
    assert job.headers[HEADER_DUE_AT_MS] == int(moment.timestamp() * 1000)


def test_a_naive_datetime_is_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"has no timezone.*aware datetime"):
        prepare(datetime.now() + timedelta(minutes=1))


@pytest.mark.parametrize("value", [date(2030, 1, 1), "2030-01-01T00:00:00Z", 1_900_000_000, None])
def test_a_run_at_that_is_not_a_datetime_is_refused(value: object) -> None:
    if value is None:
        assert prepare(None).delay_s is None  # no run_at: an ordinary job
        return
    with pytest.raises(ConfigError, match="run_at must be a datetime"):
        prepare(value)


def test_both_delay_and_run_at_are_refused() -> None:
    with pytest.raises(ConfigError, match="either delay_s or run_at"):
        prepare(datetime.now(UTC) + timedelta(minutes=1), delay_s=5)


def test_a_moment_beyond_max_delay_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match=r"further off than delays.max_delay \(30d\)"):
        prepare(datetime.now(UTC) + timedelta(days=31))
    with pytest.raises(ConfigError, match=r"further off than delays\.max_delay"):
        prepare(datetime.max.replace(tzinfo=UTC))


def test_the_oldest_moment_python_has_runs_now() -> None:
    job = prepare(datetime.min.replace(tzinfo=UTC) + timedelta(days=1))

    assert job.delay_s is None
    assert job.headers[HEADER_DUE_AT_MS] >= 1


def test_a_moment_a_few_milliseconds_ahead_waits_one_whole_second_at_most() -> None:
    job = prepare(datetime.now(UTC) + timedelta(milliseconds=300))

    assert job.delay_s == 1.0
    assert job.headers[HEADER_DUE_AT_MS] > int(time.time() * 1000)
