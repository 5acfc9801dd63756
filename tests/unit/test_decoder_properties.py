"""Property tests of the consuming side's decoding: whatever bytes, properties and headers a
delivery carries, reading it ends in an Envelope or a MessageError (dead-lettered with its
reason), never in another exception that would leave the job unsettled."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jobsys.errors import MessageError
from jobsys.wire.envelope import Envelope, decode_envelope, not_utf8, read_identity
from jobsys.wire.headers import escape_invalid, sendable_headers

LIMIT = 4096

#: Text as the lenient decoder may hand it over: any code point, lone surrogates included.
_text = st.text(st.characters(codec=None, categories=None), max_size=40)
_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | _text
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_headers = st.dictionaries(_text, _values, max_size=8)


@settings(max_examples=500)
@given(
    body=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
    message_type=st.none() | _text,
    content_type=st.none() | st.sampled_from(["application/json", "text/plain", ""]) | _text,
    content_encoding=st.none() | st.sampled_from(["utf-8", "gzip"]) | _text,
    headers=st.none() | _headers,
)
def test_any_delivery_decodes_to_an_envelope_or_a_message_error(
    body: bytes,
    message_type: str | None,
    content_type: str | None,
    content_encoding: str | None,
    headers: dict[str, Any] | None,
) -> None:
    identity = read_identity(message_type, headers)
    try:
        envelope = decode_envelope(
            body,
            identity,
            content_type=content_type,
            content_encoding=content_encoding,
            headers=headers,
            max_bytes=LIMIT,
        )
    except MessageError:
        return
    assert isinstance(envelope, Envelope)
    assert envelope.job_id and envelope.job_type and envelope.attempt >= 1
    assert not any(str(name).startswith(("jobsys-", "x-")) for name in envelope.headers)


@settings(max_examples=300)
@given(headers=_headers, value=_text)
def test_what_a_republish_sends_is_always_valid_utf8(headers: dict[str, Any], value: str) -> None:
    sendable = sendable_headers(headers)
    assert all(not not_utf8({}, [name]) for name in sendable)
    escape_invalid(value).encode("utf-8")  # never raises
    assert not_utf8({"type": escape_invalid(value)}, []) is None
