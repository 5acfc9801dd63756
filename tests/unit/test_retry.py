"""Retry decisions: attempts, backoff, explicit delays, dont_retry and handler signals."""

from __future__ import annotations

import random

import pytest

from jobsys.consume.outcome import Outcome
from jobsys.consume.retry import DEFAULT_MAX_DELAY_S, decide, planned_delays
from jobsys.errors import DecodeError, PayloadValidationError, Reject, Retry
from jobsys.topology.model import ExponentialBackoff, RetryPolicy


def _seen(outcome: Outcome) -> tuple[str, float | None, str | None]:
    return outcome.kind, outcome.delay_s, outcome.reason


def _retry(delay_s: float, reason: str) -> tuple[str, float | None, str | None]:
    return "retry", delay_s, reason


def _dead_letter(reason: str) -> tuple[str, float | None, str | None]:
    return "dead_letter", None, reason


def backoff_policy(**kwargs: object) -> RetryPolicy:
    attempts = kwargs.pop("max_attempts", 10)
    dont_retry = kwargs.pop("dont_retry", [])
    return RetryPolicy(
        max_attempts=attempts,
        backoff=ExponentialBackoff(**kwargs),
        dont_retry=dont_retry,
    )


class CardDeclined(Exception):
    pass


class HardCardDeclined(CardDeclined):
    pass


# -- max_attempts ---------------------------------------------------------------------------


def test_a_failure_before_the_last_attempt_is_retried() -> None:
    decision = decide(RetryPolicy(max_attempts=3), 1, RuntimeError("boom"))
    assert decision.kind == "retry"


def test_the_last_attempt_dead_letters_saying_how_many_attempts_ran() -> None:
    decision = decide(RetryPolicy(max_attempts=3), 3, RuntimeError("boom"))
    assert _seen(decision) == _dead_letter("gave up after 3 attempts: RuntimeError")


def test_max_attempts_counts_every_run_so_a_policy_of_three_retries_twice() -> None:
    policy = RetryPolicy(max_attempts=3)
    outcomes = [decide(policy, attempt, RuntimeError()) for attempt in (1, 2, 3)]
    assert [o.kind for o in outcomes] == ["retry", "retry", "dead_letter"]


def test_max_attempts_of_one_never_retries() -> None:
    assert _seen(decide(RetryPolicy(max_attempts=1), 1, RuntimeError())) == _dead_letter(
        "gave up after 1 attempt: RuntimeError"
    )


def test_an_attempt_beyond_max_attempts_dead_letters_too() -> None:
    # The topology may have lowered max_attempts while the job was waiting.
    assert decide(RetryPolicy(max_attempts=2), 5, RuntimeError()).kind == "dead_letter"


def test_an_attempt_below_one_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="counts from 1"):
        decide(RetryPolicy(), 0, RuntimeError())


# -- exponential backoff --------------------------------------------------------------------


def test_exponential_backoff_without_jitter_doubles_from_initial() -> None:
    policy = backoff_policy(initial=1.0, multiplier=2.0, max=3600.0, jitter=0.0)
    delays = [decide(policy, n, RuntimeError()) for n in range(1, 6)]
    assert [d.delay_s for d in delays if d.kind == "retry"] == [1, 2, 4, 8, 16]


def test_exponential_backoff_is_capped_at_its_max() -> None:
    policy = backoff_policy(initial=2.0, multiplier=3.0, max=60.0, jitter=0.0)
    assert planned_delays(policy) == [2, 6, 18, 54, 60, 60, 60, 60, 60]


def test_a_huge_attempt_number_stays_at_the_max_without_overflowing() -> None:
    policy = backoff_policy(initial=1.0, multiplier=100.0, max=10.0, jitter=0.0, max_attempts=1000)
    decision = decide(policy, 999, RuntimeError())
    assert _seen(decision) == _retry(10.0, "RuntimeError")


def test_jitter_stays_within_its_fraction_of_the_nominal_delay() -> None:
    policy = backoff_policy(initial=10.0, multiplier=2.0, max=3600.0, jitter=0.2)
    rng = random.Random(7)
    seen = []
    for _ in range(500):
        decision = decide(policy, 2, RuntimeError(), rng=rng)
        assert decision.kind == "retry"
        seen.append(decision.delay_s)
    assert min(seen) >= 16.0
    assert max(seen) <= 24.0
    # it really spreads, both ways
    assert min(seen) < 17.0 and max(seen) > 23.0


def test_small_jitter_on_whole_seconds_keeps_the_planned_schedule() -> None:
    # Delays run in whole seconds and fractions round up: 1 s + 5 % must not become 2 s.
    policy = backoff_policy(initial=1.0, multiplier=2.0, max=3600.0, jitter=0.1)
    rng = random.Random(11)
    for _ in range(200):
        delays = [decide(policy, n, RuntimeError(), rng=rng) for n in (1, 2, 3)]
        assert [d.delay_s for d in delays if d.kind == "retry"] == [1, 2, 4]


def test_jitter_never_pushes_a_delay_past_the_backoff_max() -> None:
    policy = backoff_policy(initial=10.0, multiplier=2.0, max=10.0, jitter=0.5)
    rng = random.Random(1)
    for attempt in range(1, 9):
        decision = decide(policy, attempt, RuntimeError(), rng=rng)
        assert decision.kind == "retry"
        assert 5.0 <= decision.delay_s <= 10.0


def test_full_jitter_of_one_never_gives_a_negative_delay() -> None:
    policy = backoff_policy(initial=1.0, multiplier=1.0, max=1.0, jitter=1.0)
    rng = random.Random(3)
    for _ in range(200):
        decision = decide(policy, 1, RuntimeError(), rng=rng)
        assert decision.kind == "retry"
        assert 0.0 <= decision.delay_s <= 1.0


def test_the_same_seed_gives_the_same_jittered_delays() -> None:
    policy = backoff_policy(jitter=0.3)
    error = RuntimeError()
    first = [_seen(decide(policy, n, error, rng=random.Random(42))) for n in (1, 2, 3)]
    second = [_seen(decide(policy, n, error, rng=random.Random(42))) for n in (1, 2, 3)]
    assert first == second


def test_a_zero_initial_delay_retries_at_once() -> None:
    policy = backoff_policy(initial=0.0, multiplier=2.0, max=5.0, jitter=0.1)
    assert _seen(decide(policy, 3, RuntimeError())) == _retry(0.0, "RuntimeError")


def test_delays_never_exceed_the_topologys_max_delay() -> None:
    policy = backoff_policy(initial=100.0, multiplier=10.0, max=10_000_000.0, jitter=0.0)
    decision = decide(policy, 5, RuntimeError(), max_delay_s=3600.0)
    assert _seen(decision) == _retry(3600.0, "RuntimeError")
    assert max(planned_delays(policy, max_delay_s=3600.0)) == 3600.0


def test_the_default_max_delay_is_the_models_thirty_days() -> None:
    assert DEFAULT_MAX_DELAY_S == 30 * 86400
    policy = backoff_policy(initial=86400.0, multiplier=10.0, max=10_000_000.0, jitter=0.0)
    assert _seen(decide(policy, 3, RuntimeError())) == _retry(30 * 86400.0, "RuntimeError")


def test_the_reason_names_the_error_type_and_a_truncated_message() -> None:
    decision = decide(backoff_policy(jitter=0.0), 1, KeyError("x" * 1000))
    assert decision.kind == "retry"
    assert decision.reason.startswith("KeyError: ")
    assert len(decision.reason) < 220


# -- default policy -------------------------------------------------------------------------


def test_no_policy_means_the_models_default_policy() -> None:
    default = RetryPolicy()
    assert default.max_attempts == 3
    assert planned_delays(None) == planned_delays(default) == [1.0, 2.0]
    assert decide(None, 2, RuntimeError()).kind == "retry"
    assert _seen(decide(None, 3, RuntimeError())) == _dead_letter(
        "gave up after 3 attempts: RuntimeError"
    )


def test_the_default_schedule_jitters_by_ten_percent() -> None:
    rng = random.Random(0)
    for _ in range(100):
        decision = decide(None, 2, RuntimeError(), rng=rng)
        assert decision.kind == "retry"
        assert 1.8 <= decision.delay_s <= 2.2


# -- explicit delays ------------------------------------------------------------------------


def test_explicit_delays_are_used_in_order_without_jitter() -> None:
    policy = RetryPolicy(max_attempts=4, delays=[2.0, 5.0, 30.0])
    assert planned_delays(policy) == [2.0, 5.0, 30.0]
    decisions = [decide(policy, n, RuntimeError(), rng=random.Random(n)) for n in (1, 2, 3)]
    assert [d.delay_s for d in decisions if d.kind == "retry"] == [2.0, 5.0, 30.0]


def test_the_last_explicit_delay_repeats_when_attempts_outnumber_the_list() -> None:
    policy = RetryPolicy(max_attempts=6, delays=[2.0, 5.0])
    assert planned_delays(policy) == [2.0, 5.0, 5.0, 5.0, 5.0]


def test_explicit_delays_are_bounded_by_the_topologys_max_delay() -> None:
    policy = RetryPolicy(max_attempts=2, delays=[90 * 86400.0])
    assert planned_delays(policy) == [30 * 86400.0]


# -- dont_retry -----------------------------------------------------------------------------


def test_an_error_named_in_dont_retry_by_bare_class_name_dead_letters_at_once() -> None:
    policy = RetryPolicy(max_attempts=5, dont_retry=["ValueError"])
    decision = decide(policy, 1, ValueError("bad"))
    assert decision.kind == "dead_letter"
    assert "ValueError" in decision.reason and "dont_retry" in decision.reason


def test_dont_retry_matches_a_qualified_module_and_class_name() -> None:
    policy = RetryPolicy(max_attempts=5, dont_retry=[f"{__name__}.CardDeclined"])
    assert decide(policy, 1, CardDeclined()).kind == "dead_letter"


def test_dont_retry_matches_a_base_class_of_the_error() -> None:
    policy = RetryPolicy(max_attempts=5, dont_retry=[f"{__name__}.CardDeclined"])
    decision = decide(policy, 1, HardCardDeclined())
    assert decision.kind == "dead_letter"
    assert "HardCardDeclined" in decision.reason


def test_dont_retry_matches_builtin_bases_by_qualified_name() -> None:
    policy = RetryPolicy(max_attempts=5, dont_retry=["builtins.LookupError"])
    assert decide(policy, 1, KeyError("k")).kind == "dead_letter"


def test_dont_retry_does_not_match_a_subclass_name_for_its_base() -> None:
    policy = RetryPolicy(max_attempts=5, dont_retry=["HardCardDeclined"])
    assert decide(policy, 1, CardDeclined()).kind == "retry"


def test_dont_retry_does_not_match_a_different_module_with_the_same_class_name() -> None:
    policy = RetryPolicy(max_attempts=5, dont_retry=["other_app.CardDeclined"])
    assert decide(policy, 1, CardDeclined()).kind == "retry"


# -- handler signals and message errors -----------------------------------------------------


def test_reject_dead_letters_at_once_with_its_reason() -> None:
    decision = decide(RetryPolicy(max_attempts=10), 1, Reject("customer unknown"))
    assert _seen(decision) == _dead_letter("rejected by the handler: customer unknown")


def test_retry_with_a_delay_overrides_the_backoff() -> None:
    policy = backoff_policy(initial=1.0, jitter=0.5)
    decision = decide(policy, 1, Retry(delay_s=42.0), rng=random.Random(0))
    assert _seen(decision) == _retry(42.0, "retry requested: retry requested")


def test_retry_without_a_delay_uses_the_backoff() -> None:
    policy = backoff_policy(initial=3.0, multiplier=2.0, jitter=0.0)
    decision = decide(policy, 2, Retry(reason="rate limited"))
    assert _seen(decision) == _retry(6.0, "rate limited")


def test_retry_is_still_bounded_by_max_attempts() -> None:
    decision = decide(RetryPolicy(max_attempts=2), 2, Retry(delay_s=1.0))
    assert _seen(decision) == _dead_letter("gave up after 2 attempts: Retry")


def test_a_retry_delay_is_clamped_to_zero_and_to_the_max_delay() -> None:
    assert _seen(decide(RetryPolicy(), 1, Retry(delay_s=-5.0))) == _retry(
        0.0, "retry requested: retry requested"
    )
    big = decide(RetryPolicy(), 1, Retry(delay_s=float("inf")), max_delay_s=60.0)
    assert _seen(big) == _retry(60.0, "retry requested: retry requested")
    assert _seen(decide(RetryPolicy(), 1, Retry(delay_s=float("nan")))) == _retry(
        0.0, "retry requested: retry requested"
    )


@pytest.mark.parametrize("error", [DecodeError("not json"), PayloadValidationError("to: missing")])
def test_message_errors_dead_letter_at_once_without_retries(error: Exception) -> None:
    decision = decide(RetryPolicy(max_attempts=10), 1, error)
    assert decision.kind == "dead_letter"
    assert not decision.with_traceback  # it would only show jobsys's own decoding code
    assert type(error).__name__ in decision.reason


def test_reject_wins_even_on_an_attempt_that_could_retry() -> None:
    policy = RetryPolicy(max_attempts=10, dont_retry=[])
    assert decide(policy, 1, Reject("no")).kind == "dead_letter"


def test_planned_delays_of_a_single_attempt_policy_is_empty() -> None:
    assert planned_delays(RetryPolicy(max_attempts=1)) == []
