"""``jobsys.broker.frame_decode`` against pamqp, the oracle: for any frame, well formed or
damaged, ``unmarshal`` returns what ``pamqp.frame.unmarshal`` returns (the same types, the same
values, type for type: ``str`` and ``bytes``, ``bool`` and ``int``, ``bytearray``) or raises
what it raises. And the frames of a real delivery and of a confirm never reach pamqp, so the
fast path is the path taken."""

from __future__ import annotations

import math
import re
import struct
from datetime import UTC, datetime
from typing import Any

import pamqp.frame
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from jobsys.broker import decoding, frame_decode
from jobsys.broker.frame_decode import unmarshal
from jobsys.publish.properties import message_properties

# pamqp as jobsys connections use it: short strings and table keys that are not UTF-8 are kept
# as lone surrogates instead of dropping the connection (jobsys.broker.decoding).
decoding.install()

# -- frames written byte by byte, so every value type and every damage can be reached --------

_SIZES = {"b": 1, "B": 1, "s": 2, "u": 2, "I": 4, "i": 4, "l": 8, "L": 8, "f": 4, "d": 8}
_text = st.text(max_size=20).map(str.encode) | st.binary(max_size=20)  # UTF-8 or not


def _short(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


def _long(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def _values(tables: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    fixed = st.sampled_from(sorted(_SIZES)).flatmap(
        lambda code: st.binary(min_size=_SIZES[code], max_size=_SIZES[code]).map(
            lambda raw: code.encode() + raw
        )
    )
    stamps = st.integers(0, 2**64 - 1).map(lambda n: b"T" + struct.pack(">Q", n))
    plausible = st.integers(0, 2**33).map(lambda n: b"T" + struct.pack(">Q", n))
    return st.one_of(
        fixed,
        _text.map(lambda raw: b"S" + _long(raw)),
        st.binary(max_size=20).map(lambda raw: b"x" + _long(raw)),
        st.binary(min_size=1, max_size=1).map(lambda raw: b"t" + raw),
        stamps,
        plausible,
        st.just(b"V"),
        st.binary(min_size=5, max_size=5).map(lambda raw: b"D" + raw),  # pamqp decides
        st.binary(min_size=1, max_size=1).map(lambda raw: b"\x00"),
        tables.map(lambda raw: b"F" + raw),
        st.lists(tables.map(lambda raw: b"F" + raw), max_size=3).map(
            lambda items: b"A" + _long(b"".join(items))
        ),
        st.binary(min_size=1, max_size=9),  # any type code, any bytes
    )


def _table_of(values: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    entries = st.tuples(_text, values).map(lambda kv: _short(kv[0]) + kv[1])
    return st.lists(entries, max_size=4).map(lambda items: _long(b"".join(items)))


_tables = st.recursive(st.just(_long(b"")), lambda inner: _table_of(_values(inner)), max_leaves=12)
_stamp = st.integers(0, 2**64 - 1).map(lambda n: struct.pack(">Q", n))
#: What each property is written as, in wire order (pamqp's Basic.Properties).
_PROPERTY_VALUES: list[tuple[int, st.SearchStrategy[bytes]]] = [
    (0x8000, _text.map(_short)),
    (0x4000, _text.map(_short)),
    (0x2000, _tables),
    (0x1000, st.binary(min_size=1, max_size=1)),
    (0x0800, st.binary(min_size=1, max_size=1)),
    *((flag, _text.map(_short)) for flag in (0x0400, 0x0200, 0x0100, 0x0080)),
    (0x0040, _stamp),
    *((flag, _text.map(_short)) for flag in (0x0020, 0x0010, 0x0008, 0x0004)),
]


@st.composite
def _content_header(draw: st.DrawFn) -> bytes:
    flags = draw(st.integers(0, 0xFFFF)) & ~draw(st.sampled_from([0b11, 0b11, 0b11, 0]))
    props = b"".join(draw(value) for flag, value in _PROPERTY_VALUES if flags & flag)
    head = struct.pack(
        ">HHQH", draw(st.sampled_from([60, 0, 70])), 0, draw(st.integers(0, 2**64 - 1)), flags
    )
    return head + props


def _method(index: int, *parts: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.tuples(*parts).map(lambda raw: struct.pack(">I", index) + b"".join(raw))


_deliver = _method(
    spec.Basic.Deliver.index,
    _text.map(_short),
    st.binary(min_size=8, max_size=8),
    st.binary(min_size=1, max_size=1),
    _text.map(_short),
    _text.map(_short),
)
_ack = _method(
    spec.Basic.Ack.index, st.binary(min_size=8, max_size=8), st.binary(min_size=1, max_size=1)
)
_other = st.sampled_from(
    [spec.Basic.Nack.index, spec.Basic.Return.index, spec.Channel.Close.index, 0x003C0047]
).flatmap(lambda index: _method(index, st.binary(max_size=30)))


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


_payloads = st.one_of(
    st.tuples(st.just(1), _deliver | _ack | _other),
    st.tuples(st.just(2), _content_header()),
    st.tuples(st.just(3), st.binary(max_size=40)),
    st.tuples(st.sampled_from([8, 4, 0x41]), st.binary(max_size=8)),
)


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    kind, payload = draw(_payloads)
    channel = draw(st.integers(0, 0xFFFF))
    damage = draw(st.sampled_from(["none", "none", "cut", "extra", "flip", "size", "end", "raw"]))
    if damage == "cut" and payload:
        payload = payload[: draw(st.integers(0, len(payload) - 1))]
    elif damage == "extra":
        payload += draw(st.binary(min_size=1, max_size=4))
    elif damage == "flip" and payload:
        at = draw(st.integers(0, len(payload) - 1))
        payload = (
            payload[:at] + bytes([payload[at] ^ draw(st.integers(1, 255))]) + payload[at + 1 :]
        )
    data = _frame(kind, channel, payload)
    if damage == "size":
        data = data[:3] + struct.pack(">I", draw(st.integers(0, len(payload) + 3))) + data[7:]
    elif damage == "end":
        data = data[:-1] + draw(st.binary(min_size=1, max_size=1))
    elif damage == "raw":
        data = draw(st.binary(max_size=40))
    return data


def _regular_values(tables: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Values of every type the fast path decodes itself, well formed."""
    fixed = st.sampled_from(sorted(_SIZES)).flatmap(
        lambda code: st.binary(min_size=_SIZES[code], max_size=_SIZES[code]).map(
            lambda raw: code.encode() + raw
        )
    )
    return st.one_of(
        fixed,
        _text.map(lambda raw: b"S" + _long(raw)),  # UTF-8 or not: str or bytes
        st.binary(max_size=20).map(lambda raw: b"x" + _long(raw)),
        st.binary(min_size=1, max_size=1).map(lambda raw: b"t" + raw),
        st.integers(0, 2**33).map(lambda n: b"T" + struct.pack(">Q", n)),
        st.just(b"V"),
        tables.map(lambda raw: b"F" + raw),
        st.lists(_regular_values_leaf(), max_size=4).map(
            lambda items: b"A" + _long(b"".join(items))
        ),
    )


def _regular_values_leaf() -> st.SearchStrategy[bytes]:
    return _text.map(lambda raw: b"S" + _long(raw)) | st.binary(min_size=8, max_size=8).map(
        lambda raw: b"L" + raw
    )


_keys = st.text(max_size=12).map(str.encode).filter(lambda raw: len(raw) < 256)
_regular_tables = st.recursive(
    st.just(_long(b"")),
    lambda inner: st.lists(
        st.tuples(_keys, _regular_values(inner)).map(lambda kv: _short(kv[0]) + kv[1]),
        max_size=5,
    ).map(lambda items: _long(b"".join(items))),
    max_leaves=16,
)


# -- comparing what two decoders made, type for type -------------------------------------------


def _typed(value: Any) -> Any:
    if isinstance(value, dict):
        return ("dict", tuple((_typed(k), _typed(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(_typed(v) for v in value))
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else value)
    if type(value).__module__.startswith("pamqp."):  # a frame, a header, its properties
        names = getattr(value, "__slots__", None) or sorted(vars(value))
        return (type(value), tuple((n, _typed(getattr(value, n))) for n in names))
    return (type(value), value)


def _outcome(decode: Any, data: bytes) -> Any:
    try:
        consumed, channel, frame = decode(data)
    except Exception as exc:  # what is raised is what is compared
        # pamqp names the frame object in its messages; its address differs between two calls.
        return ("raised", type(exc), re.sub(r" at 0x[0-9a-f]+", "", str(exc)))
    return ("frame", consumed, channel, _typed(frame))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_frames())
@example(_frame(2, 1, struct.pack(">HHQH", 60, 0, 5, 0x0040) + struct.pack(">Q", 2**64 - 1)))
@example(_frame(2, 1, struct.pack(">HHQH", 60, 0, 5, 0x2000) + _long(b"\x01k" + b"Sxx")))
def test_any_frame_decodes_as_pamqp_decodes_it(data: bytes) -> None:
    assert _outcome(unmarshal, data) == _outcome(pamqp.frame.unmarshal, data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_regular_tables)
def test_any_regular_headers_table_takes_the_fast_path_and_decodes_as_pamqp_does(
    table: bytes,
) -> None:
    data = _frame(2, 1, struct.pack(">HHQH", 60, 0, 10, 0x2000) + table)
    assert frame_decode._decoded(data) is not None  # not given to pamqp
    assert _outcome(unmarshal, data) == _outcome(pamqp.frame.unmarshal, data)


# -- the frames a worker and a producer receive take the fast path -----------------------------


def _real_frames() -> list[bytes]:
    props = message_properties(
        "reports.render",
        5,
        {"jobsys-attempt": 1, "jobsys-job-id": "2c2c9f4e", "jobsys-published-at-ms": 1796068606483},
        "m-1",
    )
    delivered = spec.Basic.Properties(
        **{name: getattr(props, name) for name in spec.Basic.Properties.__slots__}
    )
    nested = spec.Basic.Properties(
        headers={
            "x-death": [{"count": 2, "reason": "expired", "queue": "q", "time": datetime.now(UTC)}],
            "x-first-death-reason": "rejected",
            "flag": True,
            "ratio": 0.5,
            "none": None,
        },
        correlation_id="c",
        reply_to="amq.rabbitmq.reply-to.g1h2",
        expiration="5000",
        app_id="svc",
    )
    return [
        pamqp.frame.marshal(
            spec.Basic.Deliver("ctag1.0f3a", 2**40, True, "jobs", "reports.render"), 7
        ),
        pamqp.frame.marshal(ContentHeader(0, 100, delivered), 7),
        pamqp.frame.marshal(ContentHeader(0, 0, nested), 7),
        pamqp.frame.marshal(ContentHeader(0, 0, spec.Basic.Properties()), 7),
        pamqp.frame.marshal(ContentBody(b'{"report": 42}'), 7),
        pamqp.frame.marshal(spec.Basic.Ack(123_456, multiple=True), 1),
    ]


@pytest.mark.parametrize("data", _real_frames(), ids=lambda d: f"type{d[0]}-{len(d)}")
def test_the_frames_of_a_delivery_and_a_confirm_never_reach_pamqp(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _outcome(pamqp.frame.unmarshal, data)

    def refuse(_: bytes) -> Any:
        raise AssertionError("given to pamqp")

    monkeypatch.setattr(frame_decode.pamqp.frame, "unmarshal", refuse)
    assert _outcome(unmarshal, data) == expected
    assert expected[0] == "frame"


def test_a_short_string_that_is_not_utf8_is_kept_as_surrogates_as_jobsys_decoding_keeps_it() -> (
    None
):
    # The fast path decodes strict UTF-8 only; such a header goes to pamqp as jobsys set it up.
    props = _short(b"application/json") + _long(_short(b"k\xff") + b"S" + _long(b"v"))
    data = _frame(2, 1, struct.pack(">HHQH", 60, 0, 3, 0xA000) + props)
    _, _, header = unmarshal(data)
    assert header.properties.content_type == "application/json"
    assert header.properties.headers == {"k\udcff": "v"}
    deliver = _frame(
        1,
        1,
        struct.pack(">I", spec.Basic.Deliver.index)
        + _short(b"c\xfe")
        + struct.pack(">QB", 9, 0)
        + _short(b"")
        + _short(b"rk"),
    )
    _, _, method = unmarshal(deliver)
    assert (method.consumer_tag, method.delivery_tag, method.routing_key) == ("c\udcfe", 9, "rk")


def _nested(depth: int, leaf: bytes = b"V") -> bytes:
    table = _long(b"\x01k" + leaf)
    for _ in range(depth):
        table = _long(b"\x01kF" + table)
    return _frame(2, 1, struct.pack(">HHQH", 60, 0, 1, 0x2000) + table)


@pytest.mark.parametrize("depth", [50, 150, 2_000, 20_000])
@pytest.mark.parametrize("leaf", [b"V", b"D\x00\x00\x00\x00\x01"])
def test_a_table_nested_past_pythons_recursion_goes_to_pamqp_and_ends_as_it_does(
    depth: int, leaf: bytes
) -> None:
    # Nested so deep (from some 490 levels) both decoders exhaust Python's recursion; the fast
    # path then never raises, and pamqp, asked from where it always was, decides.
    data = _nested(depth, leaf)
    assert (frame_decode.decoded(data) is None) == (depth > 1_000 or leaf != b"V")
    ours, theirs = _outcome(unmarshal, data), _outcome(pamqp.frame.unmarshal, data)
    if theirs[1] is RecursionError:
        assert ours[1] is RecursionError  # its text depends on where the stack ran out
    else:
        assert ours == theirs
