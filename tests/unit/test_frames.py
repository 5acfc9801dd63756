"""``jobsys.broker.frames`` against aiormq's own frame receiver, the oracle: the same bytes, fed
in any chunks, give the same frames in the same order and end in the same error with the same
text (a stream cut short, a protocol header where a frame was due, a broken frame end); only a
cut stream's byte counts differ, as the module says."""

from __future__ import annotations

import asyncio
import re
import struct
from typing import Any

import aiormq.connection
import pytest
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.frame import marshal
from pamqp.header import ContentHeader, ProtocolHeader
from pamqp.heartbeat import Heartbeat

from jobsys.broker import frames
from jobsys.broker.frames import FrameReader, mark
from jobsys.wire.headers import HEADER_UNREADABLE_HEADERS

_AIORMQ = frames._AIORMQ_RECEIVER

_names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
#: Exchange names as pamqp lets them be marshalled.
_exchanges = st.text("abcxyz0123-_.:", max_size=40)
_headers = st.dictionaries(
    st.text("abcdefghij-", min_size=1, max_size=12),
    st.integers(-(2**31), 2**31 - 1) | st.text(max_size=30) | st.booleans(),
    max_size=5,
)


def _frame_bytes() -> st.SearchStrategy[bytes]:
    channel = st.integers(1, 2047)
    deliver = st.builds(
        lambda c, tag, ex, rk: marshal(
            spec.Basic.Deliver(consumer_tag=c, delivery_tag=tag, exchange=ex, routing_key=rk),
            1,
        ),
        _names.filter(lambda s: len(s.encode()) < 200),
        st.integers(1, 2**63 - 1),
        _exchanges,
        _names.filter(lambda s: len(s.encode()) < 200),
    )
    header = st.builds(
        lambda size, headers, ch: marshal(
            ContentHeader(
                body_size=size,
                properties=spec.Basic.Properties(headers=headers, delivery_mode=2),
            ),
            ch,
        ),
        st.integers(0, 2**40),
        _headers,
        channel,
    )
    body = st.builds(lambda b, ch: marshal(ContentBody(b), ch), st.binary(max_size=3000), channel)
    ack = st.builds(
        lambda tag, multiple, ch: marshal(spec.Basic.Ack(delivery_tag=tag, multiple=multiple), ch),
        st.integers(1, 2**40),
        st.booleans(),
        channel,
    )
    heartbeat = st.just(marshal(Heartbeat(), 0))
    return deliver | header | body | ack | heartbeat


def _without_counts(text: str) -> str:
    """An error's text with the byte counts of a cut stream left out: aiormq reads a frame's
    header in two reads, jobsys in one, so they count differently (the module docstring)."""
    return re.sub(r"Read \d+ bytes but \d+ bytes expected", "Read N bytes but M expected", text)


def _seen(outcome: Any) -> Any:
    """A frame as comparable bytes (pamqp frames do not compare by value)."""
    if isinstance(outcome, tuple):
        consumed, channel, frame = outcome
        return (consumed, channel, type(frame).__name__, marshal(frame, channel))
    return outcome


async def _read_all(receiver_class: type[Any], data: bytes, chunks: list[int]) -> list[Any]:
    """Every frame ``receiver_class`` reads from ``data`` fed in ``chunks``, then the type of
    what ended it (StopAsyncIteration at a clean end)."""
    reader = mark(asyncio.StreamReader(limit=2**30))

    async def feed() -> None:
        offset = 0
        for size in chunks:
            reader.feed_data(data[offset : offset + size])
            offset += size
            await asyncio.sleep(0)
        reader.feed_data(data[offset:])
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    receiver = receiver_class(reader)
    seen: list[Any] = []
    try:
        while True:
            seen.append(_seen(await receiver.get_frame()))
    except (StopAsyncIteration, AMQPConnectionError, ProtocolSyntaxError, InvalidFrameError) as end:
        seen.append((type(end), _without_counts(str(end))))
    await feeder
    return seen


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(_frame_bytes(), max_size=12),
    chunks=st.lists(st.integers(1, 400), max_size=30),
    cut=st.none() | st.integers(0, 10_000),
    broken_end=st.none() | st.integers(0, 11),
    protocol_header_first=st.booleans(),
)
def test_the_same_frames_and_the_same_end_as_aiormqs_receiver(
    parts: list[bytes],
    chunks: list[int],
    cut: int | None,
    broken_end: int | None,
    protocol_header_first: bool,
) -> None:
    if broken_end is not None and broken_end < len(parts):
        part = parts[broken_end]
        parts[broken_end] = part[:-1] + b"\x00"  # not the frame-end octet 0xCE
    data = b"".join(parts)
    if protocol_header_first:
        data = ProtocolHeader().marshal() + data
    if cut is not None:
        data = data[:cut]

    async def both() -> tuple[list[Any], list[Any]]:
        return (
            await _read_all(_AIORMQ, data, chunks),
            await _read_all(FrameReader, data, chunks),
        )

    expected, got = asyncio.run(both())
    assert got == expected


async def test_a_stream_jobsys_did_not_open_is_read_by_aiormqs_own_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    original = _AIORMQ.get_frame

    async def counted(self: Any) -> Any:
        calls.append("aiormq")
        return await original(self)

    monkeypatch.setattr(_AIORMQ, "get_frame", counted)
    data = marshal(Heartbeat(), 0)
    for reader, expected in (
        (asyncio.StreamReader(), ["aiormq"]),
        (mark(asyncio.StreamReader()), []),
    ):
        calls.clear()
        reader.feed_data(data)
        reader.feed_eof()
        consumed, channel, frame = await FrameReader(reader).get_frame()
        assert (consumed, channel, type(frame)) == (8, 0, Heartbeat)
        assert calls == expected


def test_install_puts_the_reader_in_aiormq_once_and_leaves_a_foreign_receiver_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aiormq.connection, "FrameReceiver", _AIORMQ)
    frames.install()
    assert aiormq.connection.FrameReceiver is FrameReader
    frames.install()
    assert aiormq.connection.FrameReceiver is FrameReader

    class Foreign(_AIORMQ):
        pass

    monkeypatch.setattr(aiormq.connection, "FrameReceiver", Foreign)
    frames.install()
    assert aiormq.connection.FrameReceiver is Foreign


def test_a_broken_frame_is_aiormqs_invalid_frame_error() -> None:
    async def read() -> None:
        reader = mark(asyncio.StreamReader())
        reader.feed_data(marshal(spec.Basic.Ack(delivery_tag=1), 1)[:-1] + b"\x00")
        reader.feed_eof()
        await FrameReader(reader).get_frame()

    with pytest.raises(InvalidFrameError):
        asyncio.run(read())


def _deep_table(depth: int) -> bytes:
    table = struct.pack(">I", 3) + b"\x01kV"
    for _ in range(depth):
        table = struct.pack(">I", len(table) + 3) + b"\x01kF" + table
    return table


def _short(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


def _deep_header(depth: int, content_type: bytes = b"application/json") -> bytes:
    """A content header frame (body of 5 bytes) whose header table nests ``depth`` levels."""
    flags = 0x8000 | 0x2000 | 0x1000 | 0x0080 | 0x0020
    properties = _short(content_type) + _deep_table(depth) + b"\x02" + _short(b"m1")
    properties += _short(b"jt")
    payload = struct.pack(">HHQH", 60, 0, 5, flags) + properties
    return struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce"


async def _frames_read(data: bytes, count: int) -> list[Any]:
    reader = mark(asyncio.StreamReader(limit=2**30))
    reader.feed_data(data)
    reader.feed_eof()
    receiver = FrameReader(reader)
    return [(await receiver.get_frame())[2] for _ in range(count)]


def test_a_header_table_nested_past_pythons_recursion_arrives_as_one_header_saying_so() -> None:
    # Raised out of the reader, the RecursionError dropped the connection, and the broker
    # redelivered the message to drop it again, forever.
    body = marshal(ContentBody(b"hello"), 1)
    header, content = asyncio.run(_frames_read(_deep_header(5_000) + body, 2))
    props = header.properties
    assert header.body_size == 5 and header.class_id == 60
    assert props.headers == {
        HEADER_UNREADABLE_HEADERS: "its header table could not be decoded: tables nested too deeply"
    }
    assert (props.content_type, props.delivery_mode, props.message_id) == (
        "application/json",
        2,
        "m1",
    )
    assert props.message_type == "jt"
    assert content.value == b"hello"  # the stream read on past it
    # A table nested less deeply is read as it is.
    [shallow] = asyncio.run(_frames_read(_deep_header(100), 1))
    assert HEADER_UNREADABLE_HEADERS not in shallow.properties.headers


def test_an_unreadable_table_among_irregular_properties_keeps_only_the_body_size() -> None:
    [header] = asyncio.run(_frames_read(_deep_header(5_000, content_type=b"\xff\xfe"), 1))
    assert header.body_size == 5 and header.class_id == 60
    assert list(header.properties.headers) == [HEADER_UNREADABLE_HEADERS]
    assert header.properties.content_type is None and header.properties.message_type is None


def test_a_method_frame_nested_past_pythons_recursion_still_fails_the_read() -> None:
    # Only a broker sends method frames with tables; the reader has no message to keep there.
    arguments = _deep_table(5_000)
    payload = struct.pack(">I", spec.Basic.Consume.index) + b"\x00\x00" + _short(b"q")
    payload += _short(b"tag") + b"\x00" + arguments
    data = struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce"
    with pytest.raises(RecursionError):
        asyncio.run(_frames_read(data, 1))
