"""Retry decisions: (policy, attempt, error) -> retry after N seconds, or dead-letter (pure).

``AttemptRunner.failed`` asks ``decide()`` what to do with a job whose attempt failed, and
``settle.Settler`` carries the ``Outcome`` out; this module never touches the broker.
``attempt`` is the run that just failed, counted from 1, and ``max_attempts`` counts every run,
the first included: with ``max_attempts: 3`` a job runs at most three times and waits twice.
"""

from __future__ import annotations

import math
import random

from jobsys.consume.outcome import Outcome
from jobsys.errors import MessageError, Reject, Retry
from jobsys.topology.model import Delays, ExponentialBackoff, RetryPolicy
from jobsys.wire.deadletter import error_text

#: The schedule of a policy that names neither ``backoff`` nor ``delays``.
DEFAULT_BACKOFF = ExponentialBackoff()
#: The longest delay a topology allows unless it says otherwise (``delays.max_delay``).
DEFAULT_MAX_DELAY_S = Delays().max_delay
_REASON_LIMIT = 200


def decide(
    policy: RetryPolicy | None,
    attempt: int,
    error: BaseException,
    *,
    rng: random.Random | None = None,
    max_delay_s: float = DEFAULT_MAX_DELAY_S,
) -> Outcome:
    """What to do after run ``attempt`` of a job failed with ``error``: a ``retry`` or a
    ``dead_letter`` outcome.

    In order: ``Reject`` and ``MessageError`` (bad input cannot get better) dead-letter at
    once; so does an error whose class, or any base class, is named in ``dont_retry``; the last
    allowed attempt dead-letters ("gave up after N attempts: ErrorType");
    ``Retry(delay_s=...)`` waits exactly that long; otherwise the policy's schedule decides.
    Delays are never negative and never above ``max_delay_s``: pass the topology's
    ``delays.max_delay`` (the default is the model's default, 30 days), so a retry can always
    be published through the delay levels.
    A dead letter carries the error's traceback unless the error is bad input
    (``MessageError``), whose traceback would only show jobsys's own decoding code.
    ``rng`` makes jitter reproducible in tests.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    policy = policy if policy is not None else RetryPolicy()
    if isinstance(error, Reject):
        return Outcome.dead_letter(error, reason=f"rejected by the handler: {error.reason}")
    if isinstance(error, MessageError):
        return Outcome.dead_letter(
            error, reason=f"{type(error).__name__}: {error_text(error)}", with_traceback=False
        )
    blocked = _dont_retry_match(error, policy.dont_retry)
    if blocked is not None:
        return Outcome.dead_letter(
            error, reason=f"{type(error).__name__} is not retried (dont_retry: {blocked})"
        )
    if attempt >= policy.max_attempts:
        plural = "s" if attempt != 1 else ""
        return Outcome.dead_letter(
            error, reason=f"gave up after {attempt} attempt{plural}: {type(error).__name__}"
        )
    if isinstance(error, Retry) and error.delay_s is not None:
        return Outcome.retry(
            error, _bounded(error.delay_s, max_delay_s), f"retry requested: {error.reason}"
        )
    delay = _scheduled_delay(policy, attempt, rng or random.Random())
    reason = error.reason if isinstance(error, Retry) else _describe(error)
    return Outcome.retry(error, _bounded(delay, max_delay_s), reason)


def planned_delays(
    policy: RetryPolicy | None, *, max_delay_s: float = DEFAULT_MAX_DELAY_S
) -> list[float]:
    """The nominal wait before each retry, without jitter: one entry per retry, so
    ``max_attempts - 1`` entries in all."""
    policy = policy if policy is not None else RetryPolicy()
    return [
        _bounded(_nominal_delay(policy, attempt), max_delay_s)
        for attempt in range(1, policy.max_attempts)
    ]


def _nominal_delay(policy: RetryPolicy, attempt: int) -> float:
    if policy.delays is not None:
        # One entry per retry; the last one repeats when attempts outnumber the list.
        return float(policy.delays[min(attempt, len(policy.delays)) - 1])
    backoff = policy.backoff or DEFAULT_BACKOFF
    # Computed in logs so that a large attempt count cannot overflow a float.
    exponent = attempt - 1
    if backoff.initial == 0:
        return 0.0
    log_delay = math.log(backoff.initial) + exponent * math.log(backoff.multiplier)
    if log_delay >= math.log(backoff.max):
        return float(backoff.max)
    return float(backoff.initial * backoff.multiplier**exponent)


def _scheduled_delay(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    nominal = _nominal_delay(policy, attempt)
    if policy.delays is not None:
        return nominal
    backoff = policy.backoff or DEFAULT_BACKOFF
    if backoff.jitter == 0:
        return nominal
    # Jitter spreads a burst of failures so their retries do not arrive together; it never
    # pushes a delay past the policy's own max.
    jittered = min(nominal * (1.0 + rng.uniform(-backoff.jitter, backoff.jitter)), backoff.max)
    # Delays are kept in whole seconds and a fraction would be rounded up: 1 s with +5 % jitter
    # would wait 2 s. Rounding to the nearest second keeps the schedule the policy describes.
    return max(1.0, float(round(jittered))) if nominal >= 1.0 else jittered


def _bounded(delay_s: float, max_delay_s: float) -> float:
    if math.isnan(delay_s) or delay_s < 0:
        return 0.0
    return float(min(delay_s, max_delay_s))


def _describe(error: BaseException) -> str:
    name = type(error).__name__
    text = error_text(error)
    if len(text) > _REASON_LIMIT:
        text = text[: _REASON_LIMIT - 3] + "..."
    return f"{name}: {text}" if text != name else name


def _dont_retry_match(error: BaseException, names: list[str]) -> str | None:
    """The ``dont_retry`` entry that names ``error``'s class or one of its bases, if any."""
    if not names:
        return None
    wanted = set(names)
    for cls in type(error).__mro__:
        candidates = {
            cls.__name__,
            cls.__qualname__,
            f"{cls.__module__}.{cls.__qualname__}",
        }
        hit = candidates & wanted
        if hit:
            return sorted(hit)[0]
    return None
