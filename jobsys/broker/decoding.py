"""AMQP short strings that are not UTF-8, decoded without dropping the connection.

pamqp decodes every short string -- the ``type``, ``message_id``, ``content_type`` and other
string properties of a message, and the names in a header table -- as strict UTF-8. One message
with other bytes there (any client may publish it; the broker does not check) makes its content
header undecodable: aiormq then drops the whole connection, every pool on it stops, the message
is redelivered and drops it again, forever, and ``jobsys dlq`` cannot read past it.

``install()`` makes pamqp decode those two places with ``surrogateescape`` instead: the bytes
survive as lone surrogates (U+DC80-U+DCFF) in the ``str``. Everything else pamqp decodes is
unchanged (long strings that are not UTF-8 already arrive as ``bytes``). jobsys then refuses
such a message by itself (``jobsys.wire.envelope.not_utf8``) and dead-letters it with the
offending values escaped. The override replaces exactly two functions of ``pamqp.decode`` and
their entries in its dispatch tables; it is process-wide, idempotent, and checked against the
shape of pamqp it was written for (``install`` refuses a pamqp it does not recognise rather than
patching blind). A library using pamqp in the same process also gets strings with surrogates
where it would have lost its connection.
"""

from __future__ import annotations

import struct
from typing import Any

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


def install() -> None:
    """Make pamqp decode short strings and table keys leniently (see the module docstring)."""
    global _installed
    if _installed:
        return
    methods: dict[str, Any] = pamqp_decode.METHODS
    tables: dict[bytes, Any] = pamqp_decode.TABLE_MAPPING
    if (
        methods.get("shortstr") is not pamqp_decode.short_str
        or methods.get("table") is not pamqp_decode.field_table
        or tables.get(b"F") is not pamqp_decode.field_table
    ):
        raise RuntimeError(
            "jobsys does not recognise this pamqp's decoder (pamqp.decode.METHODS); "
            "its lenient short-string decoding was written for pamqp 3.x/4.x"
        )
    methods["shortstr"] = short_str
    methods["table"] = field_table
    tables[b"F"] = field_table
    pamqp_decode.short_str = short_str
    pamqp_decode.field_table = field_table
    _installed = True
