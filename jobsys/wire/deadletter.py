"""The headers a dead-lettered job carries (pure, no I/O).

A dead-lettered job is a copy of the original message: same body, same properties, the
broker's death history stripped, plus ``jobsys-`` headers that say what went wrong, where and
when. The error text is truncated and never contains the body; tracebacks carry no locals.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobsys.wire.envelope import (
    DL_ATTEMPTS,
    DL_ERROR_MESSAGE,
    DL_ERROR_TYPE,
    DL_FAILED_AT_MS,
    DL_ORIGINAL_EXCHANGE,
    DL_ORIGINAL_QUEUE,
    DL_ORIGINAL_ROUTING_KEY,
    DL_REASON,
    DL_TEXT_LIMIT,
    DL_TRACEBACK,
    DL_TRACEBACK_LIMIT,
    DL_WORKER_HOST,
    HEADER_FIRST_FAILED_AT_MS,
    strip_death_headers,
)

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
    """``module.Class`` of an exception (just ``Class`` for builtins)."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def format_traceback(exc: BaseException, limit: int = DL_TRACEBACK_LIMIT) -> str:
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
        error_message=truncate(str(exc) or type(exc).__name__, DL_TEXT_LIMIT),
        traceback=format_traceback(exc) if with_traceback else None,
        attempts=attempts,
        failed_at_ms=failed_at_ms,
        exchange=exchange,
        routing_key=routing_key,
        queue=queue,
        worker_host=worker_host,
        first_failed_at_ms=first_failed_at_ms,
        reason=truncate(reason, DL_TEXT_LIMIT) if reason is not None else None,
    )


def dead_letter_headers(
    original: Mapping[str, Any] | None, record: DeadLetterRecord
) -> dict[str, Any]:
    """The original headers without the broker's death history, plus the record's."""
    headers = strip_death_headers(original or {})
    headers[DL_ERROR_TYPE] = record.error_type
    headers[DL_ERROR_MESSAGE] = record.error_message
    if record.traceback is not None:
        headers[DL_TRACEBACK] = record.traceback
    else:
        headers.pop(DL_TRACEBACK, None)
    headers[DL_ATTEMPTS] = record.attempts
    headers[DL_FAILED_AT_MS] = record.failed_at_ms
    headers[DL_ORIGINAL_EXCHANGE] = record.exchange
    headers[DL_ORIGINAL_ROUTING_KEY] = record.routing_key
    headers[DL_ORIGINAL_QUEUE] = record.queue
    headers[DL_WORKER_HOST] = record.worker_host
    if record.first_failed_at_ms is not None:
        headers[HEADER_FIRST_FAILED_AT_MS] = record.first_failed_at_ms
    if record.reason is not None:
        headers[DL_REASON] = record.reason
    return headers
