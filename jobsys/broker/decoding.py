"""AMQP short strings that are not UTF-8, and timestamps past the year 9999, decoded without
dropping the connection.

pamqp decodes every short string -- the ``type``, ``message_id``, ``content_type`` and other
string properties of a message, and the names in a header table -- as strict UTF-8. One message
with other bytes there (any client may publish it; the broker does not check) makes its content
header undecodable: aiormq then drops the whole connection, every pool on it stops, the message
is redelivered and drops it again, forever, and ``jobsys dlq`` cannot read past it.

``install()`` makes pamqp decode those two places with ``surrogateescape`` instead: the bytes
survive as lone surrogates (U+DC80-U+DCFF) in the ``str``. Long strings that are not UTF-8
already arrive as ``bytes``. jobsys then refuses such a message by itself
(``jobsys.wire.envelope.not_utf8``) and dead-letters it with the offending values escaped.

The same loop followed a timestamp (the ``timestamp`` property, or a header value of type ``T``)
that another client wrote in microseconds or nanoseconds: pamqp reads a value past 2**32 as
milliseconds, lands past the year 9999, and fails the whole content header. Such a value now
arrives as the integer that was sent (an aio-pika message, as ``jobsys dlq`` reads them, has no
timestamp then); a retry, dead letter or replay copies a header as that integer, and gives the
property the time of its own publish (``Delivery.kept_properties``).

The override replaces exactly three functions of ``pamqp.decode`` and their entries in its
dispatch tables; everything else pamqp decodes is unchanged. It is process-wide, idempotent, and
checked against the shape of pamqp it was written for (``install`` refuses a pamqp it does not
recognise rather than patching blind). A library using pamqp in the same process also gets
these values where it would have lost its connection.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

from aio_pika import message as aio_pika_message
from pamqp import common
from pamqp import decode as pamqp_decode

_installed = False


def short_str(value: bytes) -> tuple[int, str]:
    """pamqp's ``short_str``, keeping bytes that are not UTF-8 as lone surrogates."""
    try:
        length = common.Struct.byte.unpack(value[0:1])[0]
        return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack short string value") from err


def field_table(value: bytes) -> tuple[int, common.FieldTable]:
    """pamqp's ``field_table``, keeping key bytes that are not UTF-8 as lone surrogates."""
    try:
        length = common.Struct.integer.unpack(value[0:4])[0]
        offset = 4
        data: dict[str, Any] = {}
        end = offset + length
        if end > len(value):
            raise ValueError("Field table length exceeds available data")
        while offset < end:
            key_length = common.Struct.byte.unpack_from(value, offset)[0]
            offset += 1
            if offset + key_length > end:
                raise ValueError("Field table key length exceeds data")
            key = value[offset : offset + key_length].decode("utf-8", "surrogateescape")
            offset += key_length
            consumed, result = pamqp_decode.embedded_value(value[offset:])
            offset += consumed
            data[key] = result
        return end, data
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack data") from err


def timestamp(value: bytes) -> tuple[int, datetime | int]:
    """pamqp's ``timestamp`` (past 2**32 read as milliseconds), keeping a value that lands
    outside what a ``datetime`` holds as its integer, as it was sent."""
    try:
        raw: int = common.Struct.timestamp.unpack(value[0:8])[0]
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack timestamp value") from err
    try:
        return 8, datetime.fromtimestamp(raw / 1000.0 if raw > 0xFFFFFFFF else raw, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return 8, raw


def install() -> None:
    """Make pamqp decode short strings, table keys and timestamps leniently (see the module
    docstring)."""
    global _installed
    if _installed:
        return
    methods: dict[str, Any] = pamqp_decode.METHODS
    tables: dict[bytes, Any] = pamqp_decode.TABLE_MAPPING
    if (
        methods.get("shortstr") is not pamqp_decode.short_str
        or methods.get("table") is not pamqp_decode.field_table
        or tables.get(b"F") is not pamqp_decode.field_table
        or methods.get("timestamp") is not pamqp_decode.timestamp
        or tables.get(b"T") is not pamqp_decode.timestamp
    ):
        raise RuntimeError(
            "jobsys does not recognise this pamqp's decoder (pamqp.decode.METHODS); "
            "its lenient short-string decoding was written for pamqp 3.x/4.x"
        )
    methods["shortstr"] = short_str
    methods["table"] = field_table
    tables[b"F"] = field_table
    methods["timestamp"] = timestamp
    tables[b"T"] = timestamp
    pamqp_decode.short_str = short_str
    pamqp_decode.field_table = field_table
    pamqp_decode.timestamp = timestamp  # type: ignore[assignment]
    # aio-pika turns the property into its message's ``timestamp`` through this dispatch, which
    # refuses an int, and would then make a datetime of it, which fails past the year 9999:
    # ``jobsys dlq`` failed on a dead-letter queue holding one such message. aio-pika's
    # messages (the dlq commands', not a worker's deliveries) get no timestamp for it instead.
    register = getattr(getattr(aio_pika_message, "decode_timestamp", None), "register", None)
    if register is not None:
        register(int, _no_timestamp)
    _installed = True


def _no_timestamp(value: int) -> None:
    """No timestamp, for a value past the year 9999 (see ``timestamp``)."""
    return None
