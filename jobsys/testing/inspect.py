"""What a test asks a kit: which attempts ran and how they ended, what waits in a queue, what
is in a dead-letter queue and why. Plain values, read with jobsys's own header readers
(``jobsys.wire``), so a dead letter reads here as ``jobsys dlq peek`` shows it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jobsys.consume.outcome import Outcome
from jobsys.testing.broker import StoredMessage
from jobsys.wire.deadletter import DeadJob, dead_job
from jobsys.wire.envelope import Identity
from jobsys.wire.headers import (
    HEADER_ATTEMPT,
    HEADER_DEAD_LETTER_REASON,
    HEADER_JOB_ID,
    positive_int,
    text,
)


@dataclass(frozen=True)
class Run:
    """One attempt the kit ran: the job, the queue, and how it was settled."""

    job_id: str | None
    job_type: str | None
    queue: str
    attempt: int
    #: ``ack``, ``retry``, ``dead_letter``, ``requeue``, ``wait`` or ``cancel``.
    outcome: str
    #: The class name of the error that failed the attempt, None when it succeeded.
    error_type: str | None
    #: For a retry: how long the job waits before its next attempt.
    retry_in_s: float | None
    at_ms: int
    redelivered: bool
    error: BaseException | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(
        cls, identity: Identity, queue: str, outcome: Outcome, at_ms: int, redelivered: bool
    ) -> Run:
        """The record of one settled attempt."""
        error = outcome.error
        return cls(
            identity.job_id,
            identity.job_type,
            queue,
            identity.attempt,
            outcome.kind,
            type(error).__name__ if error is not None else None,
            outcome.delay_s if outcome.kind == "retry" else None,
            at_ms,
            redelivered,
            error,
        )


@dataclass(frozen=True)
class Queued:
    """A job waiting in a queue."""

    job_id: str | None
    job_type: str | None
    attempt: int
    priority: int | None
    headers: dict[str, Any] = field(repr=False)
    body: bytes = field(repr=False)

    @property
    def payload(self) -> Any:
        """The payload as JSON (what the handler would be given before validation)."""
        return json.loads(self.body)


@dataclass(frozen=True)
class DeadLetter:
    """A job in a dead-letter queue: jobsys's record of why (``record``, as ``dlq peek``
    reads it), the reason it was given, and its body."""

    record: DeadJob
    reason: str | None
    body: bytes = field(repr=False)

    @property
    def job_id(self) -> str | None:
        """The dead job's id."""
        return self.record.job_id

    @property
    def error_type(self) -> str | None:
        """The class name of the error that ended it (``broker: maxlen`` and the like when
        the broker dead-lettered it itself)."""
        return self.record.error_type

    @property
    def attempts(self) -> int | None:
        """How many attempts it had."""
        return self.record.attempts


def queued_of(message: StoredMessage) -> Queued:
    """The ``Queued`` view of a stored message."""
    headers = dict(message.properties.headers or {})
    return Queued(
        text(headers.get(HEADER_JOB_ID)),
        message.properties.message_type,
        positive_int(headers.get(HEADER_ATTEMPT)) or 1,
        message.properties.priority,
        headers,
        message.body,
    )


def dead_letter_of(message: StoredMessage) -> DeadLetter:
    """The ``DeadLetter`` view of a message in a dead-letter queue."""
    headers = dict(message.properties.headers or {})
    record = dead_job(headers, message.properties.message_type, len(message.body))
    return DeadLetter(record, text(headers.get(HEADER_DEAD_LETTER_REASON)), message.body)
