"""Every ``jobsys-`` header, grouped by what it says, with typed readers and the pure builders of
the headers a job carries when it is published, retried or dead-lettered (pure, no I/O).

The names never start with ``x-``: the broker owns those and, from 3.13, ignores client-set
``x-death``. The values on the wire are part of the format other programs read; they never
change, even where a constant is renamed.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

PREFIX = "jobsys-"

# -- identity: which job, which run of it ----------------------------------------------------
HEADER_JOB_ID = "jobsys-job-id"
HEADER_ATTEMPT = "jobsys-attempt"
HEADER_PUBLISHED_AT_MS = "jobsys-published-at-ms"
HEADER_REPLAYS = "jobsys-replays"
#: When a delayed job (or a retry after a delay) is due, ms since the epoch by the clock of whoever
#: delayed it: no worker starts it before then, whatever the broker's own clock did meanwhile.
HEADER_DUE_AT_MS = "jobsys-due-at-ms"
#: On a job a schedule fired: the schedule's name, and its slot (ms since the epoch).
HEADER_SCHEDULE = "jobsys-schedule"
HEADER_SLOT_MS = "jobsys-slot-ms"
#: The job type that receives this job's handler's return value as its payload once the job
#: succeeded (``jobsys.wire.chain``).
HEADER_THEN = "jobsys-then"

# -- origin: where a job was first published, and when trouble began -------------------------
# A retry or a delayed job arrives through the delivery exchange; these say where it was meant
# to go, so that its dead-letter record can name that after any number of retries.
HEADER_ORIGINAL_EXCHANGE = "jobsys-original-exchange"
HEADER_ORIGINAL_ROUTING_KEY = "jobsys-original-routing-key"
#: Set on the first retry and carried on, so the dead-letter record knows when trouble began.
HEADER_FIRST_FAILED_AT_MS = "jobsys-first-failed-at-ms"

# -- the dead-letter record (never the body, never a password) -------------------------------
HEADER_ERROR_TYPE = "jobsys-error-type"
HEADER_ERROR_MESSAGE = "jobsys-error-message"  # truncated
HEADER_TRACEBACK = "jobsys-traceback"  # truncated, without local variables
HEADER_ATTEMPTS = "jobsys-attempts"
HEADER_FAILED_AT_MS = "jobsys-failed-at-ms"
HEADER_ORIGINAL_QUEUE = "jobsys-original-queue"
HEADER_WORKER_HOST = "jobsys-worker-host"
#: Why the job was given up on, e.g. "gave up after 3 attempts: TimeoutError".
HEADER_DEAD_LETTER_REASON = "jobsys-dead-letter-reason"

#: On a dead letter whose original headers could not be republished (too large for a frame,
#: or values no AMQP client can encode): what they were, as a digest, instead of them.
HEADER_DROPPED_HEADERS = "jobsys-dropped-headers"
#: On a delivery whose header table could not be decoded (nested past what Python's recursion
#: decodes: jobsys.broker.frame_decode), the one header it arrives with instead: why, as text.
#: Such a job is dead-lettered at once, carrying this header.
HEADER_UNREADABLE_HEADERS = "jobsys-unreadable-headers"

# -- the trace link ---------------------------------------------------------------------------
#: The span context of the attempt before this one, so attempts link up across retries.
HEADER_PREVIOUS_ATTEMPT = "jobsys-previous-attempt"

_BROKER_DEATH_HEADERS = ("x-death",)
_BROKER_DEATH_PREFIXES = ("x-first-death-", "x-last-death-")

#: Headers RabbitMQ routes on whatever the exchange type: it sends a copy of the message to
#: every routing key they list (sender-selected distribution), and closes the channel when
#: their value is not an array of strings. Lowercase; a job never carries them in any case.
ROUTING_HEADERS = frozenset({"cc", "bcc"})


#: The clock ``now_ms`` reads instead of the wall clock while an in-memory test kit runs
#: (``jobsys.testing``, which sets it through ``set_clock``); None: the wall clock.
_clock: Callable[[], int] | None = None


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch (a test kit's virtual time while one
    runs)."""
    clock = _clock
    return int(time.time() * 1000) if clock is None else clock()


def set_clock(clock: Callable[[], int] | None) -> Callable[[], int] | None:
    """Make ``now_ms`` read ``clock`` (None: the wall clock again); returns the one it
    replaced. For ``jobsys.testing`` only: the whole process then runs on that time."""
    global _clock
    previous, _clock = _clock, clock
    return previous


# -- typed readers ----------------------------------------------------------------------------


def text(value: object) -> str | None:
    """A header value as text: a string, or bytes decoded as UTF-8 (bad bytes replaced)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def integer(value: object) -> int | None:
    """A header value as an integer (booleans are not integers here)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def positive_int(value: object) -> int | None:
    """A header value as an integer above zero; None for anything else."""
    number = integer(value)
    return number if number is not None and number > 0 else None


def strip_death(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Headers without the broker's dead-letter history. Republishing a message that carries
    ``x-death`` through TTL queues makes the broker see a cycle and drop it silently."""
    return {
        k: v
        for k, v in headers.items()
        if k not in _BROKER_DEATH_HEADERS and not k.startswith(_BROKER_DEATH_PREFIXES)
    }


def escape_invalid(value: str) -> str:
    """``value`` with the bytes that were not UTF-8 written as ``\\xNN``: valid UTF-8 text again.

    jobsys decodes AMQP short strings leniently (``jobsys.broker.decoding``): bytes that are not
    UTF-8 arrive as lone surrogates, which no client can encode again.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            # The lenient decoder's surrogates stand for bytes: show those bytes.
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # other lone surrogates (not from the wire)
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def is_utf8(value: str) -> bool:
    """False when ``value`` carries bytes that were not UTF-8 (see ``escape_invalid``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def sendable_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """``headers`` in a form any AMQP client can encode again: names and text made valid UTF-8,
    byte strings (a long string that was not UTF-8 arrives as ``bytes``) turned into text."""
    return {escape_invalid(str(name)): _sendable(value) for name, value in headers.items()}


def _sendable(value: Any) -> Any:
    if isinstance(value, str):
        return escape_invalid(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, Mapping):
        return sendable_headers(value)
    if isinstance(value, list | tuple):
        return [_sendable(item) for item in value]
    return value


def dropped_digest(headers: Mapping[str, Any]) -> str:
    """A short account of headers that could not be republished: how many, a hash of their
    names and values, and the first names (escaped), at most about 1 KiB."""
    names = sorted(escape_invalid(str(name)) for name in headers)
    digest = hashlib.sha256(repr(sorted(headers.items(), key=str)).encode("utf-8", "replace"))
    shown = ", ".join(names)
    if len(shown) > 800:
        shown = shown[:800] + "..."
    return f"{len(names)} headers, sha256 {digest.hexdigest()[:16]}; names: {shown}"


def is_routing_header(name: object) -> bool:
    """Whether ``name`` is ``CC`` or ``BCC`` in any case (see ``ROUTING_HEADERS``)."""
    return isinstance(name, str) and len(name) <= 3 and name.lower() in ROUTING_HEADERS


def republishable(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Headers safe to copy into a retry or a dead letter: without the broker's death history
    (``strip_death``) and without ``CC``/``BCC``, which would send copies to other queues
    however they got onto the original (a message published past jobsys)."""
    return {k: v for k, v in strip_death(headers).items() if not is_routing_header(k)}


# -- builders ---------------------------------------------------------------------------------


def identity_headers(
    user_headers: Mapping[str, Any],
    *,
    job_id: str,
    attempt: int = 1,
    published_at_ms: int | None = None,
) -> dict[str, Any]:
    """The headers of a job as first published: the user's own plus its identity."""
    headers = dict(user_headers)
    headers[HEADER_JOB_ID] = job_id
    headers[HEADER_ATTEMPT] = attempt
    headers[HEADER_PUBLISHED_AT_MS] = published_at_ms if published_at_ms is not None else now_ms()
    return headers


@dataclass(frozen=True, slots=True)
class Origin:
    """The exchange and routing key a job was first published with."""

    exchange: str
    routing_key: str


def origin_headers(origin: Origin) -> dict[str, str]:
    """The headers that carry ``origin`` on a job that travels through the delay levels."""
    return {
        HEADER_ORIGINAL_EXCHANGE: origin.exchange,
        HEADER_ORIGINAL_ROUTING_KEY: origin.routing_key,
    }


def origin_of(headers: Mapping[str, Any], exchange: str, routing_key: str) -> Origin:
    """Where a delivered job was first published: its origin headers when it came through the
    delay levels, else the ``exchange`` and ``routing_key`` it was delivered with."""
    original_exchange = text(headers.get(HEADER_ORIGINAL_EXCHANGE))
    original_key = text(headers.get(HEADER_ORIGINAL_ROUTING_KEY))
    if original_exchange is None or original_key is None:
        return Origin(exchange, routing_key)
    return Origin(original_exchange, original_key)


def first_failed_at_ms(headers: Mapping[str, Any], now: int) -> int:
    """When the job first failed: the carried time, or ``now`` for a first failure."""
    return positive_int(headers.get(HEADER_FIRST_FAILED_AT_MS)) or now


def due_at_ms(delay_s: float, now: int) -> int:
    """When a job delayed by ``delay_s`` from ``now`` (ms) is due, in whole ms, never early."""
    return now + math.ceil(delay_s * 1000)


def retry_headers(
    original: Mapping[str, Any],
    *,
    job_id: str,
    attempt: int,
    origin: Origin,
    first_failed_at_ms: int,
    published_at_ms: int | None = None,
    due_at: int | None = None,
) -> dict[str, Any]:
    """The headers of a job published again as run ``attempt``: the original ones without the
    broker's death history or ``CC``/``BCC``, a fresh identity, its origin and first failure
    carried on, and its due time (``due_at``, ms) when it waits first."""
    headers = republishable(original)
    headers.update(
        identity_headers({}, job_id=job_id, attempt=attempt, published_at_ms=published_at_ms)
    )
    headers[HEADER_FIRST_FAILED_AT_MS] = first_failed_at_ms
    headers.update(origin_headers(origin))
    if due_at is not None:
        headers[HEADER_DUE_AT_MS] = due_at
    else:
        headers.pop(HEADER_DUE_AT_MS, None)
    return headers
