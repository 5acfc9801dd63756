"""The bytes of a direct publish against the oracle of pamqp's and aiormq's own code: the same
``basic.publish``, content header and body frames as pamqp marshals them after aiormq's
``_split_body``, for any properties, body size (empty, below, at and past the frame's room) and
channel; and the cache of ``basic.publish`` frames gives pamqp's frame and stays bounded."""

from __future__ import annotations

import types
from datetime import UTC, datetime

import aiormq
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.frame import marshal
from pamqp.header import ContentHeader

from jobsys.broker import direct_publish
from jobsys.broker.direct_publish import DirectPublisher, publish_frames
from jobsys.publish.properties import message_properties

_names = st.text("abcxyz0123-_.:", max_size=40)
_keys = st.text(max_size=60).filter(lambda s: len(s.encode()) < 256)
_headers = st.dictionaries(
    st.text(max_size=12),
    st.integers(-(2**31), 2**31 - 1) | st.text(max_size=30) | st.booleans() | st.none(),
    max_size=5,
)
_plain = st.builds(
    spec.Basic.Properties,
    content_type=st.none() | _keys,
    headers=st.none() | _headers,
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 255),
    correlation_id=st.none() | _keys,
    message_id=st.none() | _keys,
    timestamp=st.none() | st.integers(0, 2**32 - 1).map(lambda s: datetime.fromtimestamp(s, UTC)),
    message_type=st.none() | _keys,
)
_ours = st.builds(
    message_properties,
    _keys.filter(bool),
    st.none() | st.integers(0, 255),
    _headers,
    _keys,
)


def _aiormq_frames(
    method: spec.Basic.Publish, number: int, props: spec.Basic.Properties, body: bytes, room: int
) -> bytes:
    channel = types.SimpleNamespace(max_content_size=room)
    parts = aiormq.Channel._split_body(channel, body)  # type: ignore[arg-type]
    frames = [marshal(method, number), marshal(ContentHeader(0, len(body), props), number)]
    return b"".join(frames + [marshal(part, number) for part in parts])


@settings(max_examples=400, deadline=None)
@given(
    exchange=_names,
    routing_key=_keys,
    mandatory=st.booleans(),
    number=st.integers(1, 65535),
    props=_plain | _ours,
    room=st.sampled_from([1, 7, 100, 131_064]),
    body=st.binary(max_size=300) | st.sampled_from([b"", b"x" * 99, b"x" * 100, b"x" * 201]),
)
def test_the_frames_of_a_publish_are_pamqps_bytes(
    exchange: str,
    routing_key: str,
    mandatory: bool,
    number: int,
    props: spec.Basic.Properties,
    room: int,
    body: bytes,
) -> None:
    method = spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
    expected = _aiormq_frames(method, number, props, body, room)
    assert publish_frames(marshal(method, number), number, props, body, room) == expected


def test_a_body_over_a_frame_is_split_as_aiormq_splits_it() -> None:
    props = spec.Basic.Properties(delivery_mode=2)
    method = spec.Basic.Publish(exchange="x", routing_key="k")
    body = bytes(range(256)) * 2049  # 524,544 bytes: four full frames and a rest
    room = 131_064
    got = publish_frames(marshal(method, 3), 3, props, body, room)
    assert got == _aiormq_frames(method, 3, props, body, room)
    assert got.count(b"\x03\x00\x03") >= 5 and len(ContentBody(body)) == len(body)


def test_the_publish_frame_cache_gives_pamqps_frame_and_starts_over_when_full() -> None:
    publisher = DirectPublisher.__new__(DirectPublisher)
    publisher._methods = {}
    for i in range(direct_publish._METHOD_FRAMES + 50):
        frame = publisher._method_frame(1, "jobs", f"key-{i}", True)
        assert frame == marshal(
            spec.Basic.Publish(exchange="jobs", routing_key=f"key-{i}", mandatory=True), 1
        )
        assert len(publisher._methods) <= direct_publish._METHOD_FRAMES
    # The channel, the exchange, the routing key and mandatory each make another frame.
    cases = [(1, "jobs", "k", True), (1, "jobs", "k", False), (2, "jobs", "k", False)]
    cases += [(2, "other", "k", False), (2, "other", "k2", False)]
    for _ in range(2):  # marshalled, then from the cache
        for number, exchange, key, mandatory in cases:
            method = spec.Basic.Publish(exchange=exchange, routing_key=key, mandatory=mandatory)
            assert publisher._method_frame(number, exchange, key, mandatory) == marshal(
                method, number
            )
