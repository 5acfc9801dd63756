"""The reply to a waiting caller: its address, its headers, and reading it back (pure, no I/O).

``Producer.call`` publishes a job with ``reply_to`` set to RabbitMQ's direct reply-to
pseudo-queue (``amq.rabbitmq.reply-to``), which the broker rewrites into an address of the
caller's own channel (``amq.rabbitmq.reply-to.<opaque>``), and a ``correlation_id`` of its own.
Both are AMQP properties, which retries, delays and dead letters keep. When the job succeeds or
fails for good, the worker publishes one reply to that address through the default exchange:

* the outcome in ``jobsys-outcome`` (``ok``, ``dead_lettered`` or ``cancelled``) and the job id;
* on success, the result as the body (JSON; ``null`` for a handler that returned None);
* on failure, an empty body and the error's type, message, the attempts made, the retry
  policy's verdict and whether resubmitting can help (``jobsys-safe-to-resubmit``).

A worker replies to nothing but a direct reply-to address: a ``reply_to`` naming a queue or
anything else (a publisher past jobsys, or a hostile one) is ignored, so no reply ever lands in
a queue of the topology.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jobsys.wire.deadletter import TEXT_LIMIT, truncate
from jobsys.wire.headers import (
    HEADER_ATTEMPTS,
    HEADER_DEAD_LETTER_REASON,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_JOB_ID,
    integer,
    is_utf8,
    text,
)

#: The pseudo-queue a caller consumes (no-ack) and names as ``reply_to``.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
#: What the broker turns ``DIRECT_REPLY_TO`` into on a delivered request.
_ADDRESS_PREFIX = DIRECT_REPLY_TO + "."
#: An AMQP short string: routing keys and correlation ids are at most 255 bytes.
_SHORT_STRING_BYTES = 255
#: The AMQP type of a reply.
REPLY_TYPE = "jobsys.reply"

HEADER_OUTCOME = "jobsys-outcome"
HEADER_SAFE_TO_RESUBMIT = "jobsys-safe-to-resubmit"

ReplyOutcome = Literal["ok", "dead_lettered", "cancelled"]
_OUTCOMES: frozenset[str] = frozenset({"ok", "dead_lettered", "cancelled"})


def is_reply_address(value: object) -> bool:
    """Whether ``value`` is a direct reply-to address the broker made (printable ASCII after
    ``amq.rabbitmq.reply-to.``, at most 255 bytes): the only ``reply_to`` a worker answers."""
    if not isinstance(value, str) or not value.startswith(_ADDRESS_PREFIX):
        return False
    if len(value) <= len(_ADDRESS_PREFIX) or len(value) > _SHORT_STRING_BYTES:
        return False
    return value.isascii() and value.isprintable() and " " not in value


def is_correlation_id(value: object) -> bool:
    """Whether ``value`` can be sent back as a reply's ``correlation_id``: non-empty text that
    is valid UTF-8 and fits a short string."""
    if not isinstance(value, str) or not value or not is_utf8(value):
        return False
    return len(value.encode("utf-8")) <= _SHORT_STRING_BYTES


def ok_headers(job_id: str, attempts: int) -> dict[str, Any]:
    """The headers of a success reply (its body is the result)."""
    return {HEADER_OUTCOME: "ok", HEADER_JOB_ID: job_id, HEADER_ATTEMPTS: attempts}


def failed_headers(
    job_id: str,
    *,
    outcome: ReplyOutcome,
    error_type: str,
    error_message: str,
    attempts: int,
    reason: str | None,
    safe_to_resubmit: bool,
) -> dict[str, Any]:
    """The headers of a reply saying the job failed for good (dead-lettered or cancelled);
    texts are truncated as in a dead-letter record, and never hold the job's body."""
    headers: dict[str, Any] = {
        HEADER_OUTCOME: outcome,
        HEADER_JOB_ID: job_id,
        HEADER_ATTEMPTS: attempts,
        HEADER_ERROR_TYPE: truncate(error_type, TEXT_LIMIT),
        HEADER_ERROR_MESSAGE: truncate(error_message, TEXT_LIMIT),
        HEADER_SAFE_TO_RESUBMIT: safe_to_resubmit,
    }
    if reason is not None:
        headers[HEADER_DEAD_LETTER_REASON] = truncate(reason, TEXT_LIMIT)
    return headers


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply as the caller reads it."""

    outcome: ReplyOutcome
    job_id: str | None
    attempts: int | None
    body: bytes
    error_type: str | None = None
    error_message: str | None = None
    reason: str | None = None
    safe_to_resubmit: bool = False


def read_reply(headers: Mapping[str, Any] | None, body: bytes) -> Reply | None:
    """The reply carried by ``headers`` and ``body``; None when it is not one (no or an
    unknown ``jobsys-outcome``)."""
    headers = headers or {}
    outcome = text(headers.get(HEADER_OUTCOME))
    if outcome not in _OUTCOMES:
        return None
    safe = headers.get(HEADER_SAFE_TO_RESUBMIT)
    return Reply(
        outcome=outcome,  # type: ignore[arg-type]  # checked against _OUTCOMES above
        job_id=text(headers.get(HEADER_JOB_ID)),
        attempts=integer(headers.get(HEADER_ATTEMPTS)),
        body=body,
        error_type=text(headers.get(HEADER_ERROR_TYPE)),
        error_message=text(headers.get(HEADER_ERROR_MESSAGE)),
        reason=text(headers.get(HEADER_DEAD_LETTER_REASON)),
        safe_to_resubmit=safe is True,
    )
