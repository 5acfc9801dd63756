"""The circuit breaker of a job type (pure): when it opens, how long jobs wait, the one trial of
half-open state, and hostile breaker settings refused at their position."""

from __future__ import annotations

import pytest

from jobsys.consume.breaker import TRIAL_WAIT_S, Breaker
from jobsys.errors import TopologyLoadError
from jobsys.topology.loader import load_topology_text
from jobsys.topology.model import CircuitBreaker


def breaker(**settings: object) -> Breaker:
    return Breaker(CircuitBreaker.model_validate({"cool_down": 30, "window": 60, **settings}))


def test_it_opens_at_the_nth_failure_within_the_window_and_not_before() -> None:
    b = breaker(failures=3)
    assert b.record(0, ok=False) is None
    assert b.record(1, ok=True) is None
    assert b.record(2, ok=False) is None
    assert b.record(3, ok=False) == "open"
    assert b.wait_s(3) == 30


def test_failures_older_than_the_window_are_forgotten() -> None:
    b = breaker(failures=2)
    b.record(0, ok=False)
    assert b.record(61, ok=False) is None
    assert b.state == "closed"


def test_a_failure_ratio_needs_its_minimum_of_attempts() -> None:
    b = breaker(failure_ratio=0.5, min_calls=4)
    for t, ok in enumerate([False, False, False]):
        assert b.record(t, ok=ok) is None  # 3 of 3 failed, but fewer than 4 attempts
    assert b.record(3, ok=True) == "open"  # 3 of 4 failed


def test_after_the_cool_down_one_trial_runs_while_the_others_wait() -> None:
    b = breaker(failures=1)
    b.record(0, ok=False)
    assert b.wait_s(29.5) == pytest.approx(0.5)
    assert b.wait_s(30) is None  # the trial
    assert b.state == "half-open"
    assert b.wait_s(30.1) == TRIAL_WAIT_S


def test_a_trial_that_succeeds_closes_it_and_one_that_fails_opens_it_again() -> None:
    b = breaker(failures=1)
    b.record(0, ok=False)
    assert b.wait_s(30) is None
    assert b.record(31, ok=False) == "open"
    assert b.wait_s(31) == 30
    assert b.wait_s(61) is None
    assert b.record(62, ok=True) == "closed"
    assert b.wait_s(62) is None and b.wait_s(62) is None


def test_a_trial_given_back_lets_the_next_job_be_the_trial() -> None:
    b = breaker(failures=1)
    b.record(0, ok=False)
    assert b.wait_s(30) is None
    b.abandon_trial()
    assert b.wait_s(30) is None


BASE = """\
version: 1
exchanges:
  ex: {type: direct}
queues:
  a: {type: classic}
bindings:
  - {exchange: ex, queue: a, routing_key: a}
job_types:
  ja:
    exchange: ex
    routing_key: a
    breaker: BREAKER
"""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{failures: 0}", "greater than or equal to 1"),
        ("{failures: -2}", "greater than or equal to 1"),
        ("{failures: .nan}", "valid integer"),
        ('{failures: "5"}', "valid integer"),
        ("{failures: 5.0}", "valid integer"),
        ("{failures: 1000000000000000000000}", "less than or equal to 100000"),
        ("{failure_ratio: 0}", "greater than 0"),
        ("{failure_ratio: 1.5}", "less than or equal to 1"),
        ("{failure_ratio: .nan}", "finite number"),
        ("{failure_ratio: .inf}", "finite number"),
        ('{failure_ratio: "50%"}', "number above 0 and at most 1"),
        ("{failure_ratio: true}", "number above 0 and at most 1"),
        ("{failures: 3, failure_ratio: 0.5}", "either failures or failure_ratio"),
        ("{}", "either failures or failure_ratio"),
        ("{failures: 3, window: 0}", "window must be from 1s to 1d"),
        ("{failures: 3, window: 5/fortnight}", "duration"),
        ("{failures: 3, cool_down: -1s}", "duration"),
        ("{failures: 3, cool_down: 400d}", "cool_down must be from 1s to 1d"),
        ("{failures: 3, cooldown: 5s}", "did you mean 'cool_down'"),
        ("3", "valid dictionary"),
    ],
)
def test_a_hostile_breaker_is_refused_at_its_position(value: str, message: str) -> None:
    with pytest.raises(TopologyLoadError) as caught:
        load_topology_text(BASE.replace("BREAKER", value), "t.yaml")
    problems = caught.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith("t.yaml:12:"), problems
    assert "job_types.ja.breaker" in problems[0]
    assert message in problems[0], problems
