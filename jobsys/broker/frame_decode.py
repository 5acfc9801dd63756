"""The frames a worker and a producer receive most, decoded without pamqp's generic machinery.

A delivery arrives as three frames (``basic.deliver``, a content header, a body) and a publisher
confirm as one (``basic.ack``). ``pamqp.frame.unmarshal`` decodes each field through a lookup by
type name, slices the rest of the frame after every field and builds each object through its
validating ``__init__``: 36 of the ~40 us it spends on a jobsys delivery (bench/README.md).
``unmarshal`` here decodes those four kinds straight from the bytes into the same pamqp objects.

It is ``pamqp.frame.unmarshal`` by construction: anything else (another method, a heartbeat, a
protocol header) and anything irregular in those four (a length past its end, bytes left over,
text that is not UTF-8, a flag pamqp ignores, a decimal value, a continued flag word) goes to
pamqp itself, which then returns or raises exactly what it always did: a short string that is
not UTF-8, for one, arrives with its bytes kept as surrogates (``jobsys.broker.decoding``). So
the fast path only has to be right on what it accepts, and tests/unit/test_frame_decode.py
holds it to pamqp there, value for value and type for type, on random frames and on random
damage to them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pamqp.frame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from jobsys.wire.headers import HEADER_UNREADABLE_HEADERS

_FRAME_END = 0xCE
_METHOD, _HEADER, _BODY = 1, 2, 3
_DELIVER = spec.Basic.Deliver.index.to_bytes(4, "big")
_ACK = spec.Basic.Ack.index.to_bytes(4, "big")

_Q = struct.Struct(">q").unpack_from  # pamqp's longlong: signed
_U64 = struct.Struct(">Q").unpack_from
_HEAD = struct.Struct(">HHQH").unpack_from  # class id, weight, body size, flags

#: A table's value types, as pamqp decodes them (pamqp.decode.TABLE_MAPPING): a struct and its
#: size for the fixed-size numbers (``L`` is signed in pamqp, and so here).
_NUMBERS: dict[int, tuple[Any, int]] = {
    ord(code): (struct.Struct(fmt).unpack_from, struct.calcsize(fmt))
    for code, fmt in (
        ("b", ">b"),
        ("B", ">B"),
        ("s", ">h"),
        ("u", ">H"),
        ("I", ">l"),
        ("i", ">L"),
        ("l", ">q"),
        ("L", ">q"),
        ("f", ">f"),
        ("d", ">d"),
    )
}
_LENGTH = struct.Struct(">I").unpack_from
#: Reads a field table at ``at`` within ``end``: the table and where it ends.
_TableReader = Callable[[bytes, int, int], tuple[dict[str, Any], int]]

_Properties = spec.Basic.Properties
#: The property flags ``_content_header`` decodes, as pamqp's Basic.Properties has them: checked
#: at import, so a pamqp that changed them is caught by the first test, not by a wrong header.
_FLAGS = {
    "content_type": 0x8000,
    "content_encoding": 0x4000,
    "headers": 0x2000,
    "delivery_mode": 0x1000,
    "priority": 0x0800,
    "correlation_id": 0x0400,
    "reply_to": 0x0200,
    "expiration": 0x0100,
    "message_id": 0x0080,
    "timestamp": 0x0040,
    "message_type": 0x0020,
    "user_id": 0x0010,
    "app_id": 0x0008,
    "cluster_id": 0x0004,
}
if _Properties.flags != _FLAGS or list(_Properties.__slots__) != list(_FLAGS):
    raise ImportError("pamqp's Basic.Properties differ from what jobsys.broker.frame_decode reads")


class _Irregular(Exception):
    """What pamqp must decide: the fast path gives the frame up."""


def unmarshal(data: bytes) -> tuple[int, int, Any]:
    """What ``pamqp.frame.unmarshal(data)`` returns for one whole frame (bytes consumed,
    channel, frame), or raises."""
    return decoded(data) or pamqp.frame.unmarshal(data)


def decoded(data: bytes) -> tuple[int, int, Any] | None:
    """``unmarshal``'s answer when the fast path can give it, else None (never raises): the
    caller then asks pamqp, from the stack depth it always did (a table nested some 490
    levels deep exhausts Python's recursion in either decoder; here it goes to pamqp)."""
    try:
        frame = _decoded(data)
    except (
        _Irregular,
        struct.error,
        IndexError,
        ValueError,
        OverflowError,
        OSError,
        RecursionError,
    ):
        return None
    if frame is None:
        return None
    return len(data), (data[1] << 8) | data[2], frame


def with_unreadable_headers(data: bytes) -> tuple[int, int, ContentHeader] | None:
    """A content header frame whose header table neither decoder could read (pamqp ran out of
    Python's recursion on a table nested some 490 levels deep), with that table replaced by
    one header, ``HEADER_UNREADABLE_HEADERS``, that says so; None for any other frame.

    Raised out of the frame reader, the ``RecursionError`` would drop the connection, and the
    broker would redeliver the message to do it again, forever. Read this way the delivery
    arrives, and the worker dead-letters it with that reason (``read_identity``). The other
    properties are kept when the fast path reads them; else only the body size is."""
    if len(data) < 22 or data[0] != _HEADER or data[-1] != _FRAME_END:
        return None
    if int.from_bytes(data[3:7], "big") + 8 != len(data):
        return None
    try:
        header = _content_header(data, _left_unread)
    except (_Irregular, struct.error, IndexError, ValueError, OverflowError, OSError):
        class_id, weight, body_size, _flags = _HEAD(data, 7)
        header = ContentHeader(weight, body_size, _Properties(headers=dict(_UNREAD)))
        header.class_id = class_id
    return len(data), (data[1] << 8) | data[2], header


#: What a delivery whose header table could not be decoded carries instead of it.
_UNREAD = {
    HEADER_UNREADABLE_HEADERS: "its header table could not be decoded: tables nested too deeply"
}


def _left_unread(data: bytes, at: int, end: int) -> tuple[dict[str, Any], int]:
    """A header table skipped by its length, as ``_UNREAD``."""
    return dict(_UNREAD), _extent(data, at, end)


def _decoded(data: bytes) -> Any:
    if len(data) < 8 or data[-1] != _FRAME_END:
        return None
    size = int.from_bytes(data[3:7], "big")
    if not size or size + 8 != len(data):
        return None
    kind = data[0]
    if kind == _BODY:
        body = ContentBody.__new__(ContentBody)
        body.value = data[7:-1]
        return body
    if kind == _HEADER:
        return _content_header(data, _table)
    if kind == _METHOD:
        index = data[7:11]
        if index == _DELIVER:
            return _deliver(data)
        if index == _ACK:
            return _ack(data)
    return None


def _short_str(data: bytes, at: int, end: int) -> tuple[str, int]:
    stop = at + 1 + data[at]
    if stop > end:
        raise _Irregular
    return data[at + 1 : stop].decode("utf-8"), stop


def _deliver(data: bytes) -> spec.Basic.Deliver:
    end = len(data) - 1
    method = spec.Basic.Deliver.__new__(spec.Basic.Deliver)
    method.consumer_tag, at = _short_str(data, 11, end)
    if at + 9 > end:
        raise _Irregular
    (method.delivery_tag,) = _Q(data, at)
    method.redelivered = bool(data[at + 8] & 1)
    method.exchange, at = _short_str(data, at + 9, end)
    method.routing_key, at = _short_str(data, at, end)
    if at != end:
        raise _Irregular
    return method


def _ack(data: bytes) -> spec.Basic.Ack:
    if len(data) != 7 + 4 + 8 + 1 + 1:
        raise _Irregular
    method = spec.Basic.Ack.__new__(spec.Basic.Ack)
    (method.delivery_tag,) = _Q(data, 11)
    method.multiple = bool(data[19] & 1)
    return method


def _content_header(data: bytes, read_table: _TableReader) -> ContentHeader:
    end = len(data) - 1
    class_id, weight, body_size, flags = _HEAD(data, 7)
    # Bit 0 continues the flag word; bit 1 is no property: pamqp decides both.
    if flags & 0b11:
        raise _Irregular
    # One line per property, in wire order: a loop of setattr over the fourteen cost 1.6 us
    # where these assignments cost 0.3 us, and an absent property costs no call.
    props = _Properties.__new__(_Properties)
    at = 21
    props.content_type, at = _short_str(data, at, end) if flags & 0x8000 else (None, at)
    props.content_encoding, at = _short_str(data, at, end) if flags & 0x4000 else (None, at)
    props.headers, at = read_table(data, at, end) if flags & 0x2000 else (None, at)
    props.delivery_mode, at = _octet(data, at, end) if flags & 0x1000 else (None, at)
    props.priority, at = _octet(data, at, end) if flags & 0x0800 else (None, at)
    props.correlation_id, at = _short_str(data, at, end) if flags & 0x0400 else (None, at)
    props.reply_to, at = _short_str(data, at, end) if flags & 0x0200 else (None, at)
    props.expiration, at = _short_str(data, at, end) if flags & 0x0100 else (None, at)
    props.message_id, at = _short_str(data, at, end) if flags & 0x0080 else (None, at)
    props.timestamp, at = _timestamp_value(data, at, end) if flags & 0x0040 else (None, at)  # type: ignore[assignment]
    props.message_type, at = _short_str(data, at, end) if flags & 0x0020 else (None, at)
    props.user_id, at = _short_str(data, at, end) if flags & 0x0010 else (None, at)
    props.app_id, at = _short_str(data, at, end) if flags & 0x0008 else (None, at)
    props.cluster_id, at = _short_str(data, at, end) if flags & 0x0004 else ("", at)
    if at != end:
        raise _Irregular
    header = ContentHeader.__new__(ContentHeader)
    header.class_id = class_id
    header.weight = weight
    header.body_size = body_size
    header.properties = props
    return header


def _octet(data: bytes, at: int, end: int) -> tuple[int, int]:
    if at >= end:
        raise _Irregular
    return data[at], at + 1


def _timestamp(data: bytes, at: int) -> datetime | int:
    raw: int = _U64(data, at)[0]
    # pamqp reads a value past the year 2106 as milliseconds; one past what a datetime holds
    # (microseconds, nanoseconds) stays the integer it was, as jobsys.broker.decoding has it.
    try:
        return datetime.fromtimestamp(raw / 1000.0 if raw > 0xFFFFFFFF else raw, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return raw


def _extent(data: bytes, at: int, end: int) -> int:
    """Where a value with a 4-byte length at ``at`` ends, within ``end``."""
    if at + 4 > end:
        raise _Irregular
    stop: int = at + 4 + _LENGTH(data, at)[0]
    if stop > end:
        raise _Irregular
    return stop


def _table(data: bytes, at: int, end: int) -> tuple[dict[str, Any], int]:
    stop = _extent(data, at, end)
    at += 4
    table: dict[str, Any] = {}
    while at < stop:
        key_stop = at + 1 + data[at]
        if key_stop >= stop:
            raise _Irregular
        key = data[at + 1 : key_stop].decode("utf-8")
        table[key], at = _value(data, key_stop, stop)
    if at != stop:
        raise _Irregular
    return table, stop


def _array(data: bytes, at: int, end: int) -> tuple[list[Any], int]:
    stop = _extent(data, at, end)
    at += 4
    values: list[Any] = []
    while at < stop:
        value, at = _value(data, at, stop)
        values.append(value)
    if at != stop:
        raise _Irregular
    return values, stop


def _value(data: bytes, at: int, end: int) -> tuple[Any, int]:
    """One typed value of a table or an array, within ``end``."""
    code = data[at]
    number = _NUMBERS.get(code)
    if number is not None:
        unpack, size = number
        if at + 1 + size > end:
            raise _Irregular
        return unpack(data, at + 1)[0], at + 1 + size
    decode = _VALUES.get(code)
    if decode is None:
        raise _Irregular  # D (a decimal), pamqp's undocumented NUL, or a type pamqp refuses
    return decode(data, at + 1, end)


def _long_bytes(data: bytes, at: int, end: int) -> tuple[bytes, int]:
    stop = _extent(data, at, end)
    return data[at + 4 : stop], stop


def _long_str(data: bytes, at: int, end: int) -> tuple[str | bytes, int]:
    raw, at = _long_bytes(data, at, end)
    try:
        return raw.decode("utf-8"), at
    except UnicodeDecodeError:
        return raw, at  # pamqp hands a long string that is not UTF-8 over as bytes


def _byte_array(data: bytes, at: int, end: int) -> tuple[bytearray, int]:
    raw, at = _long_bytes(data, at, end)
    return bytearray(raw), at


def _boolean(data: bytes, at: int, end: int) -> tuple[bool, int]:
    if at >= end:
        raise _Irregular
    return bool(data[at]), at + 1


def _timestamp_value(data: bytes, at: int, end: int) -> tuple[datetime | int, int]:
    if at + 8 > end:
        raise _Irregular
    return _timestamp(data, at), at + 8


def _void(data: bytes, at: int, end: int) -> tuple[None, int]:
    return None, at


#: The other value types, by their code byte.
_VALUES: dict[int, Callable[[bytes, int, int], tuple[Any, int]]] = {
    ord("S"): _long_str,
    ord("x"): _byte_array,
    ord("t"): _boolean,
    ord("F"): _table,
    ord("A"): _array,
    ord("T"): _timestamp_value,
    ord("V"): _void,
}
