"""AMQP properties of a job's message, encoded once per job type and priority (pure).

pamqp encodes every property of every message from scratch; the parts that never change for a
job type and priority are encoded once instead (``_template``) and only the headers, message id
and timestamp per message. The bytes are the ones pamqp would produce (a unit test holds that).
A republished job (a retry, a dead letter, a replay) keeps the properties of the message it
copies (``copied_properties``), encoded by pamqp as usual.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pamqp import commands as spec
from pamqp import encode

from jobsys.errors import PayloadTooLargeError, PayloadValidationError
from jobsys.wire.envelope import CONTENT_ENCODING, CONTENT_TYPE, JobProperties
from jobsys.wire.headers import HEADER_JOB_ID, text

#: ``delivery_mode`` of a persistent message.
PERSISTENT = 2


def message_properties(
    job_type: str, priority: int | None, headers: dict[str, Any], message_id: str
) -> spec.Basic.Properties:
    """The properties of one publish attempt, pre-encoded; ``message_id`` must be fresh for
    every attempt (aiormq matches a ``basic.return`` to its publish by it)."""
    now = time.time()
    props = _PreEncodedProperties(
        content_type=CONTENT_TYPE,
        content_encoding=CONTENT_ENCODING,
        headers=headers,
        delivery_mode=PERSISTENT,
        priority=priority,
        message_id=message_id,
        timestamp=datetime.fromtimestamp(int(now), UTC),
        message_type=job_type,
    )
    head, middle, tail = _template(job_type, priority)
    props.encoded = b"".join(
        (head, _table(headers), middle, _short(message_id), _U64(int(now)), tail)
    )
    return props


def copied_properties(
    kept: JobProperties, headers: dict[str, Any], message_id: str, *, max_bytes: int
) -> spec.Basic.Properties:
    """The properties of a republished job: what it ``kept`` of its original, persistent, with
    a fresh ``message_id`` (aiormq matches a ``basic.return`` to its publish by it).

    Encoded here, once, before any I/O: ``headers`` are copied as the broker delivered them,
    and pamqp decodes some values it cannot encode again (a 64-bit double, a long string that
    is not UTF-8); such a copy is refused with ``PayloadValidationError`` instead of a raw
    error from inside the publish. Properties over ``max_bytes`` encoded (they must fit one
    frame, or the broker closes the whole connection) raise ``PayloadTooLargeError``.
    """
    fields: dict[str, Any] = {
        "content_type": kept.content_type,
        "content_encoding": kept.content_encoding,
        "headers": headers,
        "delivery_mode": PERSISTENT,
        "priority": kept.priority,
        "correlation_id": kept.correlation_id,
        "reply_to": kept.reply_to,
        "message_id": message_id,
        "timestamp": kept.timestamp or datetime.fromtimestamp(int(time.time()), UTC),
        "message_type": kept.job_type,
        "app_id": kept.app_id,
    }
    try:
        encoded = spec.Basic.Properties(**fields).marshal()
    except (TypeError, ValueError, OverflowError, struct.error, RecursionError) as exc:
        raise PayloadValidationError(
            f"the copy of job {text(headers.get(HEADER_JOB_ID)) or '?'} cannot be encoded "
            f"({type(exc).__name__}: {exc}); it was not published"
        ) from None
    if len(encoded) > max_bytes:
        raise PayloadTooLargeError(
            f"its properties and headers are {len(encoded)} bytes encoded; one AMQP frame "
            f"carries at most {max_bytes} here"
        )
    props = _PreEncodedProperties(**fields)
    props.encoded = encoded
    return props


class _PreEncodedProperties(spec.Basic.Properties):
    """``Basic.Properties`` whose wire form jobsys built itself (see the module docstring)."""

    __slots__ = ("encoded",)
    encoded: bytes

    def marshal(self) -> bytes:
        return self.encoded


_FLAGS = spec.Basic.Properties.flags
_U64 = struct.Struct(">Q").pack
_U32 = struct.Struct(">I").pack


def _table(headers: Mapping[str, Any]) -> bytes:
    """``headers`` as an AMQP field table, byte for byte as pamqp encodes it, with a short
    path for the strings and integers jobsys's own headers are made of."""
    parts = []
    for key, value in sorted(headers.items()):
        name = key.encode("utf-8")
        if len(name) > 128:
            return encode.field_table(dict(headers))  # pamqp truncates, and warns
        parts.append(bytes((len(name),)) + name)
        if type(value) is str:
            data = value.encode("utf-8")
            parts.append(b"S" + _U32(len(data)) + data)
        elif type(value) is int:
            parts.append(encode.table_integer(value))
        else:
            parts.append(encode.encode_table_value(value))
    body = b"".join(parts)
    return _U32(len(body)) + body


def _short(text: str) -> bytes:
    data = text.encode("utf-8")
    return bytes((len(data),)) + data


@lru_cache(maxsize=1024)
def _template(job_type: str, priority: int | None) -> tuple[bytes, bytes, bytes]:
    """Encoded properties around the per-message parts: flags, content type and encoding
    (before the headers); delivery mode and priority (before message id and timestamp);
    the job type (last)."""
    flags = 0
    for name in (
        "content_type",
        "content_encoding",
        "headers",
        "delivery_mode",
        "message_id",
        "timestamp",
        "message_type",
    ):
        flags |= _FLAGS[name]
    middle = bytes((PERSISTENT,))
    if priority is not None:
        flags |= _FLAGS["priority"]
        middle += bytes((priority,))
    head = struct.pack(">H", flags) + _short(CONTENT_TYPE) + _short(CONTENT_ENCODING)
    return head, middle, _short(job_type)
