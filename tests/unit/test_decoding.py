"""Lenient decoding (``jobsys.broker.decoding``): bytes that are not UTF-8 in a property or a
header name, and timestamps past the year 9999, no longer make a content header undecodable;
everything else decodes exactly as pamqp decodes it."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

import pytest
from aio_pika.message import IncomingMessage
from aiormq.abc import DeliveredMessage
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp import decode as pamqp_decode
from pamqp import frame
from pamqp.header import ContentHeader

from jobsys.broker import decoding, frame_decode

decoding.install()


def _round_trip(props: spec.Basic.Properties, replace: dict[bytes, bytes] | None = None) -> Any:
    data = ContentHeader(0, 2, props).marshal()
    raw = frame.marshal(ContentHeader(0, 2, props), 1)
    for old, new in (replace or {}).items():
        assert old in raw and len(old) == len(new)
        raw = raw.replace(old, new)
    assert data  # the header encodes as usual
    _, _, header = frame.unmarshal(raw)
    assert isinstance(header, ContentHeader)
    return header.properties


def test_a_type_that_is_not_utf8_decodes_to_lone_surrogates_instead_of_failing() -> None:
    props = _round_trip(
        spec.Basic.Properties(message_type="QQQQ"), {b"\x04QQQQ": b"\x04\xff\xfeQQ"}
    )
    assert props.message_type == "\udcff\udcfeQQ"
    assert props.message_type.encode("utf-8", "surrogateescape") == b"\xff\xfeQQ"


def test_a_header_name_that_is_not_utf8_decodes_too() -> None:
    props = _round_trip(
        spec.Basic.Properties(headers={"QQQQ": "v", "ok": 1}), {b"\x04QQQQ": b"\x04\xff\xfeQQ"}
    )
    assert props.headers == {"\udcff\udcfeQQ": "v", "ok": 1}


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.one_of(st.text(max_size=50), st.integers(-(2**63), 2**63 - 1), st.booleans()),
        max_size=10,
    ),
    st.text(max_size=60),
)
def test_valid_properties_decode_exactly_as_before(headers: dict[str, Any], job_type: str) -> None:
    props = spec.Basic.Properties(headers=headers or None, message_type=job_type or None)
    decoded = _round_trip(props)
    assert decoded.headers == (headers or None)
    assert decoded.message_type == (job_type or None)


def test_install_is_idempotent_and_patches_pamqps_tables() -> None:
    decoding.install()
    assert pamqp_decode.METHODS["shortstr"] is decoding.short_str
    assert pamqp_decode.TABLE_MAPPING[b"F"] is decoding.field_table
    assert pamqp_decode.METHODS["timestamp"] is decoding.timestamp
    assert pamqp_decode.TABLE_MAPPING[b"T"] is decoding.timestamp


_SENT_S = 1_796_068_606  # 2026-11-30T19:56:46Z


@pytest.mark.parametrize("decode", [frame.unmarshal, frame_decode.unmarshal])
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_SENT_S, datetime.fromtimestamp(_SENT_S, UTC)),
        (_SENT_S * 1_000 + 483, datetime.fromtimestamp(_SENT_S + 0.483, UTC)),  # milliseconds
        (_SENT_S * 1_000_000, _SENT_S * 1_000_000),  # microseconds: past the year 9999
        (_SENT_S * 1_000_000_000, _SENT_S * 1_000_000_000),  # nanoseconds
        (2**64 - 1, 2**64 - 1),
    ],
)
def test_a_timestamp_past_the_year_9999_arrives_as_its_integer_instead_of_failing(
    decode: Any, raw: int, expected: object
) -> None:
    # Another client's microseconds or nanoseconds, in the property or in a header, made the
    # whole content header undecodable: aiormq dropped the connection at every redelivery.
    props = spec.Basic.Properties(
        headers={"sent": datetime.fromtimestamp(2, UTC)}, timestamp=datetime.fromtimestamp(1, UTC)
    )
    data = frame.marshal(ContentHeader(0, 2, props), 1)
    # The header's value is a "T" and 8 bytes; the property, last, its 8 bytes before the end.
    assert data.count(b"T" + struct.pack(">Q", 2)) == 1
    assert data.endswith(struct.pack(">Q", 1) + b"\xce")
    data = data.replace(b"T" + struct.pack(">Q", 2), b"T" + struct.pack(">Q", raw))
    data = data[:-9] + struct.pack(">Q", raw) + b"\xce"
    _, _, header = decode(data)
    assert header.properties.headers == {"sent": expected}
    assert header.properties.timestamp == expected


def test_an_aio_pika_message_of_such_a_timestamp_has_none_instead_of_failing() -> None:
    # aio-pika refused the int, then made a datetime of it past the year 9999 (OSError 75):
    # `jobsys dlq` failed on a dead-letter queue holding one such message.
    props = spec.Basic.Properties(timestamp=datetime.fromtimestamp(1, UTC))
    data = frame.marshal(ContentHeader(0, 2, props), 1)
    _, _, header = frame.unmarshal(data[:-9] + struct.pack(">Q", 1_796_068_607 * 10**9) + b"\xce")
    deliver = spec.Basic.Deliver(consumer_tag="c", delivery_tag=1, routing_key="q")
    message = IncomingMessage(DeliveredMessage(deliver, header, b"{}", None))  # type: ignore[arg-type]
    assert message.timestamp is None
    # A timestamp in range is the datetime it was.
    _, _, header = frame.unmarshal(data)
    message = IncomingMessage(DeliveredMessage(deliver, header, b"{}", None))  # type: ignore[arg-type]
    assert message.timestamp == datetime.fromtimestamp(1, UTC)
