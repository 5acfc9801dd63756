"""The job envelope: what a job looks like on the wire (pure, no I/O).

The body is the payload alone, as UTF-8 JSON, so any AMQP client can produce or read it. What
jobsys needs besides lives in AMQP properties and headers: the job type in ``type``, a fresh
``message_id`` per publish attempt (aiormq matches a ``basic.return`` to its publish by it), and
the job id, attempt counter and publish time in ``jobsys-`` headers. The attempt counter never
starts with ``x-``: the broker owns those names and, from 3.13, ignores client-set ``x-death``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobsys.errors import DecodeError, PayloadTooLargeError, PayloadValidationError

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
HEADER_PREFIX = "jobsys-"
HEADER_JOB_ID = "jobsys-job-id"
HEADER_ATTEMPT = "jobsys-attempt"
HEADER_PUBLISHED_AT_MS = "jobsys-published-at-ms"
HEADER_REPLAYS = "jobsys-replays"
#: Set on the first retry and carried on, so the dead-letter record knows when trouble began.
HEADER_FIRST_FAILED_AT_MS = "jobsys-first-failed-at-ms"

# Headers a dead-lettered job carries (never the body, never a password).
DL_ERROR_TYPE = "jobsys-error-type"
DL_ERROR_MESSAGE = "jobsys-error-message"  # truncated to DL_TEXT_LIMIT characters
DL_TRACEBACK = "jobsys-traceback"  # truncated, without local variables
DL_ATTEMPTS = "jobsys-attempts"
DL_FAILED_AT_MS = "jobsys-failed-at-ms"
DL_ORIGINAL_EXCHANGE = "jobsys-original-exchange"
DL_ORIGINAL_ROUTING_KEY = "jobsys-original-routing-key"
DL_ORIGINAL_QUEUE = "jobsys-original-queue"
DL_WORKER_HOST = "jobsys-worker-host"
#: Why the job was given up on, e.g. "gave up after 3 attempts: TimeoutError".
DL_REASON = "jobsys-dead-letter-reason"
DL_TEXT_LIMIT = 1024
DL_TRACEBACK_LIMIT = 4096
_BROKER_DEATH_HEADERS = ("x-death",)
_BROKER_DEATH_PREFIXES = ("x-first-death-", "x-last-death-")


def new_job_id() -> str:
    """A fresh job id (a UUID4 string)."""
    return str(uuid.uuid4())


def new_message_id() -> str:
    """A fresh message id for one publish attempt (32 random hex digits, like a UUID's)."""
    # Called for every publish: os.urandom is several times cheaper than building a UUID.
    return os.urandom(16).hex()


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Envelope:
    """One job: its identity, its payload and where it stands in its attempts."""

    job_id: str
    job_type: str
    payload: Any
    attempt: int = 1
    headers: Mapping[str, Any] = field(default_factory=dict)
    published_at_ms: int | None = None
    priority: int | None = None

    def amqp_headers(self) -> dict[str, Any]:
        """Headers to publish: the user's own plus jobsys's."""
        headers = dict(self.headers)
        headers[HEADER_JOB_ID] = self.job_id
        headers[HEADER_ATTEMPT] = self.attempt
        headers[HEADER_PUBLISHED_AT_MS] = (
            self.published_at_ms if self.published_at_ms is not None else now_ms()
        )
        return headers


def check_user_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Refuse header names that belong to the broker (``x-``) or to jobsys (``jobsys-``)."""
    if not headers:
        return {}
    for name in headers:
        if not isinstance(name, str) or not name:
            raise PayloadValidationError("header names must be non-empty strings")
        lowered = name.lower()
        if lowered.startswith("x-") or lowered.startswith(HEADER_PREFIX):
            raise PayloadValidationError(
                f"header {name!r} is reserved (names starting with 'x-' or {HEADER_PREFIX!r})"
            )
    return dict(headers)


# json.dumps with options builds a new encoder on every call; publishing reuses this one.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode_payload(payload: Any, max_bytes: int) -> bytes:
    """The payload as compact UTF-8 JSON; refuses NaN/Infinity, non-JSON values and bodies
    over ``max_bytes``."""
    try:
        body = _JSON_ENCODER.encode(payload).encode(CONTENT_ENCODING)
    except (TypeError, ValueError, RecursionError) as exc:
        raise PayloadValidationError(f"payload is not JSON-serialisable: {exc}") from None
    if len(body) > max_bytes:
        raise PayloadTooLargeError(
            f"payload is {len(body)} bytes encoded; the limit is {max_bytes} bytes"
        )
    return body


def decode_payload(body: bytes, content_type: str | None, max_bytes: int) -> Any:
    """The payload of a message body; raises ``DecodeError`` or ``PayloadTooLargeError``."""
    if len(body) > max_bytes:
        raise PayloadTooLargeError(f"body is {len(body)} bytes; the limit is {max_bytes} bytes")
    if content_type not in (CONTENT_TYPE, None, ""):
        raise DecodeError(f"content type {content_type!r} is not {CONTENT_TYPE}")
    try:
        text = body.decode(CONTENT_ENCODING)
    except UnicodeDecodeError as exc:
        raise DecodeError(f"body is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise DecodeError("body is JSON nested too deeply") from None
    except ValueError as exc:
        raise DecodeError(f"body is not JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_envelope(
    body: bytes,
    *,
    content_type: str | None,
    message_type: str | None,
    headers: Mapping[str, Any] | None,
    priority: int | None,
    max_bytes: int,
) -> Envelope:
    """Rebuild an ``Envelope`` from a delivery's body, properties and headers."""
    headers = dict(headers or {})
    if not message_type:
        raise DecodeError("message has no job type (AMQP 'type' property)")
    payload = decode_payload(body, content_type, max_bytes)
    job_id = headers.get(HEADER_JOB_ID)
    if isinstance(job_id, bytes):
        job_id = job_id.decode(CONTENT_ENCODING, "replace")
    if not isinstance(job_id, str) or not job_id:
        raise DecodeError(f"message has no {HEADER_JOB_ID} header")
    attempt = headers.get(HEADER_ATTEMPT, 1)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise DecodeError(f"header {HEADER_ATTEMPT} must be a positive integer, got {attempt!r}")
    published = headers.get(HEADER_PUBLISHED_AT_MS)
    published_at_ms = (
        published if isinstance(published, int) and not isinstance(published, bool) else None
    )
    user_headers = {
        k: v
        for k, v in headers.items()
        if not k.startswith(HEADER_PREFIX) and not k.startswith("x-")
    }
    return Envelope(
        job_id=job_id,
        job_type=message_type,
        payload=payload,
        attempt=attempt,
        headers=user_headers,
        published_at_ms=published_at_ms,
        priority=priority,
    )


def strip_death_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Headers without the broker's dead-letter history. Republishing a message that carries
    ``x-death`` through TTL queues makes the broker see a cycle and drop it silently."""
    return {
        k: v
        for k, v in headers.items()
        if k not in _BROKER_DEATH_HEADERS and not k.startswith(_BROKER_DEATH_PREFIXES)
    }
