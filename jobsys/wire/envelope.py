"""The job envelope: what a job looks like on the wire (pure, no I/O).

The body is the payload alone, as UTF-8 JSON, so any AMQP client can produce or read it. What
jobsys needs besides lives in AMQP properties and headers: the job type in ``type``, a fresh
``message_id`` per publish attempt (aiormq matches a ``basic.return`` to its publish by it), and
the job id, attempt counter and publish time in ``jobsys-`` headers (``jobsys.wire.headers``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from jobsys.errors import (
    ContentTypeError,
    DecodeError,
    PayloadTooLargeError,
    PayloadValidationError,
)
from jobsys.settings import DEFAULT_MAX_HEADER_BYTES
from jobsys.wire.headers import (
    HEADER_ATTEMPT,
    HEADER_DUE_AT_MS,
    HEADER_JOB_ID,
    HEADER_PUBLISHED_AT_MS,
    HEADER_UNREADABLE_HEADERS,
    PREFIX,
    ROUTING_HEADERS,
    escape_invalid,
    is_routing_header,
    is_utf8,
    positive_int,
    text,
)
from jobsys.wire.table import name_size, shown, table_size

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"


def new_job_id() -> str:
    """A fresh job id (a UUID4 string)."""
    return str(uuid.uuid4())


def new_message_id() -> str:
    """A fresh message id for one publish attempt (32 random hex digits, like a UUID's)."""
    # Called for every publish: os.urandom is several times cheaper than building a UUID.
    return os.urandom(16).hex()


@dataclass(frozen=True, slots=True)
class Envelope:
    """One decoded job: its identity, its payload and which run of it this is."""

    job_id: str
    job_type: str
    payload: Any
    attempt: int = 1
    #: The user's own headers (no ``jobsys-`` or broker ``x-`` ones).
    headers: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a delivery says it is, read once from its properties and headers, so that logs,
    spans and dead-letter records name the job even when its body cannot be decoded.

    ``None`` means unknown. ``problem`` says why the identity cannot be trusted (no job type,
    no job id, a malformed attempt counter); such a delivery is dead-lettered undecoded.
    """

    job_id: str | None
    job_type: str | None
    attempt: int = 1
    published_at_ms: int | None = None
    problem: str | None = None
    #: When the job is due (ms since the epoch), for a delayed job or a retry after a delay.
    due_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class JobProperties:
    """The AMQP properties of a job that a retry, a dead letter or a replay keeps from the
    message it copies (the body and headers travel separately). A reply address and its
    correlation id survive every republish; ``message_id`` never does, because aiormq matches
    a ``basic.return`` to its publish by it."""

    job_type: str | None
    priority: int | None = None
    content_type: str | None = CONTENT_TYPE
    content_encoding: str | None = CONTENT_ENCODING
    correlation_id: str | None = None
    reply_to: str | None = None
    app_id: str | None = None
    timestamp: datetime | None = None

    def sendable(self) -> JobProperties:
        """These properties with any bytes that were not UTF-8 escaped (see
        ``jobsys.wire.headers.escape_invalid``), so that they can be published again."""
        return replace(
            self,
            job_type=_escaped(self.job_type),
            content_type=_escaped(self.content_type),
            content_encoding=_escaped(self.content_encoding),
            correlation_id=_escaped(self.correlation_id),
            reply_to=_escaped(self.reply_to),
            app_id=_escaped(self.app_id),
        )


def _escaped(value: str | None) -> str | None:
    return escape_invalid(value) if value is not None else None


def not_utf8(properties: Mapping[str, str | None], header_names: Iterable[str]) -> str | None:
    """Why a delivery cannot be trusted because of bytes that were not UTF-8 in its AMQP short
    strings (property values by name, header names), or None when there are none."""
    for name, value in properties.items():
        if value is not None and not is_utf8(value):
            return f"AMQP property {name!r} is not UTF-8: {escape_invalid(value)!r}"
    for name in header_names:
        if not is_utf8(name):
            return f"a header name is not UTF-8: {escape_invalid(name)!r}"
    return None


def read_identity(message_type: str | None, headers: Mapping[str, Any] | None) -> Identity:
    """The identity of a delivery with AMQP ``type`` ``message_type`` and ``headers``."""
    headers = headers or {}
    job_type = escape_invalid(message_type) if message_type else None
    job_id = text(headers.get(HEADER_JOB_ID)) or None
    raw_attempt = headers.get(HEADER_ATTEMPT, 1)
    attempt = positive_int(raw_attempt)
    problem = None
    if HEADER_UNREADABLE_HEADERS in headers:
        # Put there by the frame reader in place of a table it could not decode: the job id
        # and the attempt, if they were there, went with it.
        problem = "its header table could not be decoded (tables nested too deeply)"
    elif job_type is None:
        problem = "message has no job type (AMQP 'type' property)"
    elif job_id is None:
        problem = f"message has no {HEADER_JOB_ID} header"
    elif attempt is None:
        problem = f"header {HEADER_ATTEMPT} must be a positive integer, got {raw_attempt!r}"
    return Identity(
        job_id=job_id,
        job_type=job_type,
        attempt=attempt or 1,
        published_at_ms=positive_int(headers.get(HEADER_PUBLISHED_AT_MS)),
        problem=problem,
        due_at_ms=positive_int(headers.get(HEADER_DUE_AT_MS)),
    )


#: Longest job id, in bytes of UTF-8: it travels in every header table and log line of its job.
MAX_JOB_ID_BYTES = 255


def check_job_id(job_id: object) -> str:
    """``job_id`` when it is a usable job id: a non-empty str of printable characters, at most
    ``MAX_JOB_ID_BYTES`` bytes in UTF-8. Raises ``PayloadValidationError`` or
    ``PayloadTooLargeError`` otherwise (a newline in a job id would forge log lines)."""
    if (
        type(job_id) is str
        and job_id.isascii()
        and 0 < len(job_id) <= MAX_JOB_ID_BYTES
        and job_id.isprintable()
    ):
        return job_id
    if not isinstance(job_id, str) or not job_id:
        raise PayloadValidationError(
            f"job id must be a non-empty string, got {type(job_id).__name__} {shown(job_id)}"
        )
    # Characters first: a huge id is refused without encoding it.
    size = len(job_id) if len(job_id) > MAX_JOB_ID_BYTES else len(_job_id_bytes(job_id))
    if size > MAX_JOB_ID_BYTES:
        raise PayloadTooLargeError(
            f"job id is {'more than ' if size == len(job_id) else ''}{size} bytes in UTF-8; "
            f"the limit is {MAX_JOB_ID_BYTES} bytes"
        )
    if not job_id.isprintable():
        raise PayloadValidationError(f"job id {shown(job_id, 80)} contains control characters")
    return job_id


def _job_id_bytes(job_id: str) -> bytes:
    try:
        return job_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PayloadValidationError(
            f"job id is not valid UTF-8 text (character {exc.start} is a lone surrogate)"
        ) from None


def check_header_name(name: object) -> None:
    """Refuse a header name a caller may not set: not text the broker keeps whole (see
    ``jobsys.wire.table``), one that belongs to the broker (``x-``) or to jobsys
    (``jobsys-``), or ``CC``/``BCC``, on which the broker routes copies of the job to other
    queues."""
    name_size(name)
    assert isinstance(name, str)  # name_size refuses anything else
    lowered = name.lower()
    if lowered.startswith("x-") or lowered.startswith(PREFIX):
        raise PayloadValidationError(
            f"header {name!r} is reserved (names starting with 'x-' or {PREFIX!r})"
        )
    if is_routing_header(name):
        raise PayloadValidationError(
            f"header {name!r} is reserved: RabbitMQ would send a copy of the job to every "
            "routing key it lists; publish the job once per job type instead"
        )


def check_user_headers(
    headers: Mapping[str, Any] | None,
    *,
    max_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    routed_on: Collection[str] = (),
) -> dict[str, Any]:
    """A copy of the caller's ``headers`` once every name passes ``check_header_name``, no
    name is one the job type's headers exchange ``routed_on`` (it would route the job
    elsewhere), every value is one AMQP carries exactly as given and the table is at most
    ``max_bytes`` encoded (``PayloadValidationError`` / ``PayloadTooLargeError``)."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise PayloadValidationError(
            f"headers must be a mapping of names to values, got {type(headers).__name__}"
        )
    if not headers:
        return {}
    for name in headers:
        if type(name) is str:
            lowered = name.lower()
            if not (
                lowered.startswith(_RESERVED_PREFIXES)
                or lowered in ROUTING_HEADERS
                or name in routed_on
            ):
                continue
        _refuse_name(name)
    # Also checks every name as text the broker keeps whole (see jobsys.wire.table).
    table_size(headers, max_bytes, " (Settings.max_header_bytes, JOBSYS_MAX_HEADER_BYTES)")
    return dict(headers)


def _refuse_name(name: object) -> None:
    """Raise for ``name``: reserved, not a usable name, or (when it is neither) one the job
    type's headers exchange routes on."""
    check_header_name(name)
    raise PayloadValidationError(
        f"header {name!r} is one the job type's headers exchange routes on; set it in the job "
        "type's headers in the topology, or the job may reach other queues"
    )


_RESERVED_PREFIXES = ("x-", PREFIX)


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


def decode_payload(
    body: bytes, content_type: str | None, max_bytes: int, content_encoding: str | None = None
) -> Any:
    """The payload of a message body; raises ``ContentTypeError``, ``DecodeError`` or
    ``PayloadTooLargeError``.

    Only what jobsys writes is read: content type ``application/json`` and, when an encoding
    is named, ``utf-8``. A body in another form (no content type, ``gzip``, pickle) is refused
    before anything parses it, whatever the handler's annotation would accept.
    """
    if len(body) > max_bytes:
        raise PayloadTooLargeError(f"body is {len(body)} bytes; the limit is {max_bytes} bytes")
    if content_type != CONTENT_TYPE:
        shown = "no content type" if not content_type else f"content type {content_type!r}"
        raise ContentTypeError(f"{shown}; jobsys reads {CONTENT_TYPE} only")
    if content_encoding is not None and content_encoding.lower() != CONTENT_ENCODING:
        raise ContentTypeError(
            f"content encoding {content_encoding!r}; jobsys reads plain {CONTENT_ENCODING} "
            "JSON only (a compressed or otherwise encoded body is not decoded)"
        )
    try:
        text = body.decode(CONTENT_ENCODING)
    except UnicodeDecodeError as exc:
        raise DecodeError(f"body is not UTF-8 (byte {exc.start})") from None
    try:
        if text.startswith("\ufeff"):  # json.loads's own check, which the decoder lacks
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _JSON_DECODER.decode(text)
    except RecursionError:
        raise DecodeError("body is JSON nested too deeply") from None
    except ValueError as exc:
        raise DecodeError(f"body is not JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# json.loads with options builds a new decoder on every call; decoding reuses this one.
_JSON_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def decode_envelope(
    body: bytes,
    identity: Identity,
    *,
    content_type: str | None,
    headers: Mapping[str, Any] | None,
    max_bytes: int,
    content_encoding: str | None = None,
) -> Envelope:
    """The job a delivery carries: its ``identity`` (read once by ``read_identity``) and its
    body decoded. Raises ``DecodeError`` or ``PayloadTooLargeError``."""
    if identity.job_type is None:
        raise DecodeError(identity.problem or "message has no job type")
    payload = decode_payload(body, content_type, max_bytes, content_encoding)
    if identity.problem is not None or identity.job_id is None:
        raise DecodeError(identity.problem or f"message has no {HEADER_JOB_ID} header")
    user_headers = {
        k: v
        for k, v in (headers or {}).items()
        if not k.startswith(PREFIX) and not k.startswith("x-")
    }
    return Envelope(
        job_id=identity.job_id,
        job_type=identity.job_type,
        payload=payload,
        attempt=identity.attempt,
        headers=user_headers,
    )
