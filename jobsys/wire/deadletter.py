"""The dead-letter record: the headers a dead-lettered job carries, what a look at a dead-letter
queue reads from them, and the headers of a replay (pure, no I/O).

A dead-lettered job is a copy of the original message: same body, same properties, the
broker's death history stripped, plus ``jobsys-`` headers that say what went wrong, where and
when. The error text is truncated and never contains the body; tracebacks carry no locals.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobsys.wire.headers import (
    HEADER_ATTEMPT,
    HEADER_ATTEMPTS,
    HEADER_DEAD_LETTER_REASON,
    HEADER_DUE_AT_MS,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_FAILED_AT_MS,
    HEADER_FIRST_FAILED_AT_MS,
    HEADER_JOB_ID,
    HEADER_ORIGINAL_EXCHANGE,
    HEADER_ORIGINAL_QUEUE,
    HEADER_ORIGINAL_ROUTING_KEY,
    HEADER_PUBLISHED_AT_MS,
    HEADER_REPLAYS,
    HEADER_TRACEBACK,
    HEADER_UNREADABLE_HEADERS,
    HEADER_WORKER_HOST,
    escape_invalid,
    integer,
    is_routing_header,
    now_ms,
    republishable,
    text,
)

#: Longest error message and reason kept in a record, in characters.
TEXT_LIMIT = 1024
#: Longest traceback kept in a record (its tail), in characters.
TRACEBACK_LIMIT = 4096
_ELLIPSIS = "..."
_CUT_MARK = "...(truncated)\n"


@dataclass(frozen=True)
class DeadLetterRecord:
    """Why and where a job was dead-lettered."""

    error_type: str
    error_message: str
    traceback: str | None
    attempts: int
    failed_at_ms: int
    exchange: str
    routing_key: str
    queue: str
    worker_host: str
    #: When the first attempt failed (the same as ``failed_at_ms`` for a job never retried).
    first_failed_at_ms: int | None = None
    reason: str | None = None  # the retry policy's verdict


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, marked with ``...`` when cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(_ELLIPSIS), 0)] + _ELLIPSIS


def error_type_name(exc: BaseException) -> str:
    """``module.Class`` of an exception (just ``Class`` for builtins), as valid text."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return escape_invalid(cls.__qualname__)
    return escape_invalid(f"{cls.__module__}.{cls.__qualname__}")


def error_text(exc: BaseException) -> str:
    """What ``exc`` says (its class name when it says nothing), as text any encoder takes.

    A handler's exception is input like any other: its message may hold lone surrogates (built
    from bytes that are not UTF-8), which would make every record, reply and history event
    carrying it unencodable, and its ``__str__`` may raise. Neither may stop a job from being
    settled.
    """
    try:
        said = str(exc)
    except Exception as broken:  # any failure of a user's __str__ is reported, not raised
        said = f"(its message could not be read: {type(broken).__name__})"
    return escape_invalid(said or type(exc).__name__)


def format_traceback(exc: BaseException, limit: int = TRACEBACK_LIMIT) -> str:
    """The traceback of ``exc`` without local variables; when too long, its tail is kept
    because the frames nearest the error say the most."""
    text = "".join(traceback.format_exception(exc))
    if len(text) <= limit:
        return text
    return _CUT_MARK + text[-(limit - len(_CUT_MARK)) :]


def record_for(
    exc: BaseException,
    *,
    attempts: int,
    failed_at_ms: int,
    exchange: str,
    routing_key: str,
    queue: str,
    worker_host: str,
    with_traceback: bool,
    first_failed_at_ms: int | None = None,
    reason: str | None = None,
) -> DeadLetterRecord:
    """A record for ``exc``; ``with_traceback`` is off for message errors (bad input), whose
    traceback would only show jobsys's own decoding code."""
    return DeadLetterRecord(
        error_type=error_type_name(exc),
        error_message=truncate(error_text(exc), TEXT_LIMIT),
        traceback=escape_invalid(format_traceback(exc)) if with_traceback else None,
        attempts=attempts,
        failed_at_ms=failed_at_ms,
        exchange=exchange,
        routing_key=routing_key,
        queue=queue,
        worker_host=worker_host,
        first_failed_at_ms=first_failed_at_ms,
        reason=truncate(escape_invalid(reason), TEXT_LIMIT) if reason is not None else None,
    )


def dead_letter_headers(
    original: Mapping[str, Any] | None,
    record: DeadLetterRecord,
    *,
    job_id: str,
) -> dict[str, Any]:
    """The headers of a dead-lettered copy: the original ones without the broker's death
    history or ``CC``/``BCC``, the job's identity where the original lacks it (an undecodable
    job), and the record. ``job_id`` is the id to file it under when the original carries
    none."""
    headers = {
        HEADER_JOB_ID: job_id,
        HEADER_ATTEMPT: record.attempts,
        HEADER_PUBLISHED_AT_MS: now_ms(),
    }
    headers.update(republishable(original or {}))
    headers[HEADER_ERROR_TYPE] = record.error_type
    headers[HEADER_ERROR_MESSAGE] = record.error_message
    if record.traceback is not None:
        headers[HEADER_TRACEBACK] = record.traceback
    else:
        headers.pop(HEADER_TRACEBACK, None)
    headers[HEADER_ATTEMPTS] = record.attempts
    headers[HEADER_FAILED_AT_MS] = record.failed_at_ms
    headers[HEADER_ORIGINAL_EXCHANGE] = record.exchange
    headers[HEADER_ORIGINAL_ROUTING_KEY] = record.routing_key
    headers[HEADER_ORIGINAL_QUEUE] = record.queue
    headers[HEADER_WORKER_HOST] = record.worker_host
    if record.first_failed_at_ms is not None:
        headers[HEADER_FIRST_FAILED_AT_MS] = record.first_failed_at_ms
    if record.reason is not None:
        headers[HEADER_DEAD_LETTER_REASON] = record.reason
    return headers


# -- reading a dead-letter queue ----------------------------------------------------------------

#: Headers a dead-lettered job carries that a replay drops: the record of the last failure.
#: The first-failure time goes too, because a replayed job starts its attempts afresh.
DEAD_LETTER_HEADERS = frozenset(
    {
        HEADER_ERROR_TYPE,
        HEADER_ERROR_MESSAGE,
        HEADER_TRACEBACK,
        HEADER_ATTEMPTS,
        HEADER_FAILED_AT_MS,
        HEADER_ORIGINAL_EXCHANGE,
        HEADER_ORIGINAL_ROUTING_KEY,
        HEADER_ORIGINAL_QUEUE,
        HEADER_WORKER_HOST,
        HEADER_DEAD_LETTER_REASON,
        HEADER_FIRST_FAILED_AT_MS,
        HEADER_DUE_AT_MS,  # a replay runs now
    }
)


@dataclass(frozen=True)
class DeadJob:
    """What the dead-letter queue knows about one job: its headers and size, and its body's
    first bytes only when a look asked for them (``body_head``)."""

    job_id: str | None
    job_type: str | None
    attempts: int | None
    error_type: str | None
    error_message: str | None
    failed_at_ms: int | None
    original_queue: str | None
    replays: int
    body_size: int
    headers: dict[str, Any] = field(repr=False)
    body_head: bytes | None = field(default=None, repr=False)


def dead_job(
    headers: Mapping[str, Any],
    job_type: str | None,
    body_size: int,
    body_head: bytes | None = None,
) -> DeadJob:
    """Describe a dead-lettered delivery. Jobs the broker dead-lettered itself (max length,
    delivery limit, message TTL) carry no ``jobsys-`` error headers; their reason and queue
    come from the broker's ``x-first-death-*`` headers. A job whose header table could not be
    decoded (the frame reader put ``HEADER_UNREADABLE_HEADERS`` in its place) lost those with
    it: it reads as the ``DecodeError`` a worker would dead-letter it with, and says why."""
    error_type = text(headers.get(HEADER_ERROR_TYPE))
    error_message = text(headers.get(HEADER_ERROR_MESSAGE))
    reason = text(headers.get("x-first-death-reason"))
    if error_type is None and reason is not None:
        error_type = f"broker: {reason}"
    if error_type is None and HEADER_UNREADABLE_HEADERS in headers:
        error_type = "DecodeError"
        marked = text(headers[HEADER_UNREADABLE_HEADERS])
        error_message = error_message or marked or "its header table could not be decoded"
    return DeadJob(
        job_id=text(headers.get(HEADER_JOB_ID)),
        job_type=job_type,
        attempts=integer(headers.get(HEADER_ATTEMPTS)) or integer(headers.get(HEADER_ATTEMPT)),
        error_type=error_type,
        error_message=error_message,
        failed_at_ms=integer(headers.get(HEADER_FAILED_AT_MS)),
        original_queue=text(headers.get(HEADER_ORIGINAL_QUEUE))
        or text(headers.get("x-first-death-queue")),
        replays=integer(headers.get(HEADER_REPLAYS)) or 0,
        body_size=body_size,
        headers=dict(headers),
        body_head=body_head,
    )


def replay_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Headers of a replayed job: no failure record, no broker (``x-``) headers, no
    ``CC``/``BCC`` (a replay goes to its queue only), attempt 1, and the replay count one
    higher. User headers, the job id and trace context stay."""
    kept = {
        name: value
        for name, value in headers.items()
        if name not in DEAD_LETTER_HEADERS
        and not name.lower().startswith("x-")
        and not is_routing_header(name)
    }
    kept[HEADER_ATTEMPT] = 1
    kept[HEADER_REPLAYS] = (integer(headers.get(HEADER_REPLAYS)) or 0) + 1
    return kept
