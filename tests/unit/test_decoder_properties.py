"""Property tests of the consuming side's decoding: whatever bytes, properties and headers a
delivery carries, reading it ends in an Envelope or a MessageError (dead-lettered with its
reason), never in another exception that would leave the job unsettled."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jobsys.errors import MessageError
from jobsys.wire.envelope import (
    CONTENT_TYPE,
    Envelope,
    decode_envelope,
    not_utf8,
    read_identity,
)
from jobsys.wire.headers import HEADER_ATTEMPT, HEADER_JOB_ID, escape_invalid, sendable_headers

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


# -- deliveries as jobsys writes them, one property at a time spoiled ------------------------
#
# The property above draws every field at random, so a delivery almost never carries a job type,
# a job id and the JSON content type together: in 500 cases it decodes no Envelope at all, and
# never reaches the body. This one starts from what a producer sends and spoils some fields, so
# both outcomes are common, and it checks each against what the decoder promises.

_json: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_job_bodies = (
    _json.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=100)
    | st.sampled_from([b"NaN", b'{"x": Infinity}', b"[" * 5000 + b"]" * 5000, b"\xef\xbb\xbf{}"])
    | st.integers(LIMIT - 10, LIMIT + 10).map(lambda n: b'"' + b"x" * (n - 2) + b'"')
)
_attempts = st.none() | st.integers(1, 2**40) | st.sampled_from([0, -1, "2", 1.5, True])
CASES: Counter[str] = Counter()


def _is_valid_json_text(body: bytes) -> bool:
    try:
        json.loads(body.decode("utf-8"), parse_constant=lambda name: 1 / 0)
    except (UnicodeDecodeError, ValueError, RecursionError, ZeroDivisionError):
        return False
    return True


@settings(max_examples=1000)
@given(
    body=_job_bodies,
    message_type=st.text(min_size=1, max_size=20) | st.sampled_from([None, ""]),
    content_type=st.just(CONTENT_TYPE) | st.sampled_from([None, "", "text/plain"]) | _text,
    content_encoding=st.sampled_from([None, "utf-8", "UTF-8", "gzip", "deflate", ""]),
    job_id=st.text(min_size=1, max_size=20) | st.sampled_from([None, "", 42]),
    attempt=_attempts,
    user_headers=_headers,
)
def test_a_delivery_decodes_exactly_when_it_is_what_jobsys_writes(
    body: bytes,
    message_type: str | None,
    content_type: str | None,
    content_encoding: str | None,
    job_id: object,
    attempt: object,
    user_headers: dict[str, Any],
) -> None:
    headers = dict(user_headers)
    if job_id is not None:
        headers[HEADER_JOB_ID] = job_id
    if attempt is not None:
        headers[HEADER_ATTEMPT] = attempt
    acceptable = (
        bool(message_type)
        and isinstance(job_id, str)
        and job_id != ""
        and (attempt is None or (type(attempt) is int and attempt >= 1))
        and content_type == CONTENT_TYPE
        and (content_encoding is None or content_encoding.lower() == "utf-8")
        and len(body) <= LIMIT
        and _is_valid_json_text(body)
    )
    CASES["all"] += 1
    try:
        envelope = decode_envelope(
            body,
            read_identity(message_type, headers),
            content_type=content_type,
            content_encoding=content_encoding,
            headers=headers,
            max_bytes=LIMIT,
        )
    except MessageError as exc:
        assert not acceptable, f"refused a job jobsys would write: {exc}"
        CASES["refused"] += 1
        return
    assert acceptable, "decoded a delivery jobsys would never write"
    CASES["decoded"] += 1
    assert envelope.payload == json.loads(body)
    assert (envelope.job_id, envelope.job_type) == (job_id, escape_invalid(str(message_type)))
    assert envelope.attempt == (attempt or 1)
    assert envelope.headers == {
        name: value
        for name, value in user_headers.items()
        if not name.startswith(("jobsys-", "x-"))
    }


def test_the_delivery_property_decoded_and_refused_many() -> None:
    # Runs after the property above (file order): it proves both outcomes were reached.
    if CASES["all"] == 0:
        test_a_delivery_decodes_exactly_when_it_is_what_jobsys_writes()
    print(f"delivery property: {dict(CASES)}")
    assert CASES["decoded"] >= 20 and CASES["refused"] >= 20


def _as_json_loads_decodes(body: bytes) -> tuple[str, Any]:
    """What ``decode_payload`` answered when it called ``json.loads`` (which built a decoder
    per call): the value, or the error message; the reference for the reused decoder."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "error", f"body is not UTF-8 (byte {exc.start})"
    try:
        return "value", json.loads(text, parse_constant=refuse)
    except RecursionError:
        return "error", "body is JSON nested too deeply"
    except ValueError as exc:
        return "error", f"body is not JSON: {exc}"


_json_texts = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
).map(lambda value: json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@settings(max_examples=400)
@given(
    st.one_of(
        st.binary(max_size=60),
        _json_texts,
        # Valid JSON with a byte-order mark, a stray byte, or cut short.
        _json_texts.map(lambda body: b"\xef\xbb\xbf" + body),
        st.tuples(_json_texts, st.binary(min_size=1, max_size=2)).map(lambda t: t[0] + t[1]),
        _json_texts.map(lambda body: body[: len(body) // 2]),
    )
)
def test_the_reused_decoder_answers_as_json_loads_did(body: bytes) -> None:
    from jobsys.wire.envelope import decode_payload

    expected = _as_json_loads_decodes(body)
    try:
        got: tuple[str, Any] = ("value", decode_payload(body, CONTENT_TYPE, LIMIT))
    except MessageError as exc:
        got = ("error", str(exc))
    # repr: NaN never equals itself, and -0.0 == 0.0 would hide a sign.
    assert repr(got) == repr(expected)
