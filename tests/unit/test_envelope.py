"""The job envelope on the wire: a JSON payload body plus AMQP properties and headers."""

from __future__ import annotations

import math
from typing import Any

import pytest

from jobsys.errors import (
    ContentTypeError,
    DecodeError,
    PayloadTooLargeError,
    PayloadValidationError,
)
from jobsys.wire.envelope import (
    CONTENT_TYPE,
    Envelope,
    check_user_headers,
    decode_envelope,
    decode_payload,
    encode_payload,
    new_job_id,
    new_message_id,
    read_identity,
)
from jobsys.wire.headers import (
    HEADER_ATTEMPT,
    HEADER_JOB_ID,
    HEADER_PUBLISHED_AT_MS,
    HEADER_UNREADABLE_HEADERS,
    identity_headers,
    strip_death,
)

LIMIT = 1024 * 1024


def decode(
    body: bytes,
    *,
    headers: dict[str, Any] | None = None,
    content_type: str | None = CONTENT_TYPE,
    message_type: str | None = "send_email",
) -> Envelope:
    if headers is None:
        headers = {HEADER_JOB_ID: "job-1", HEADER_ATTEMPT: 1}
    return decode_envelope(
        body,
        read_identity(message_type, headers),
        content_type=content_type,
        headers=headers,
        max_bytes=LIMIT,
    )


# -- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"to": "a@example.com", "n": 3, "ok": True, "nested": {"list": [1, 2.5, None]}},
        {"text": "naïve café ✓ 日本"},
        [],
        "just a string",
        0,
        None,
    ],
)
def test_a_job_survives_encode_and_decode_unchanged(payload: Any) -> None:
    envelope = Envelope(
        job_id="job-1",
        job_type="send_email",
        payload=payload,
        attempt=3,
        headers={"tenant": "acme"},
    )
    headers = identity_headers(
        envelope.headers, job_id="job-1", attempt=3, published_at_ms=1_700_000_000_000
    )

    body = encode_payload(envelope.payload, LIMIT)
    decoded = decode(body, headers=headers, message_type="send_email")

    assert decoded == envelope
    assert read_identity("send_email", headers).published_at_ms == 1_700_000_000_000


def test_the_body_is_compact_utf8_json_readable_by_any_client() -> None:
    assert encode_payload({"to": "café", "n": [1, 2]}, LIMIT) == '{"to":"café","n":[1,2]}'.encode()


def test_identity_headers_carry_the_job_id_attempt_and_publish_time_besides_the_users_own() -> None:
    headers = identity_headers({"tenant": "acme"}, job_id="job-1", attempt=2, published_at_ms=7)

    assert headers == {
        "tenant": "acme",
        HEADER_JOB_ID: "job-1",
        HEADER_ATTEMPT: 2,
        HEADER_PUBLISHED_AT_MS: 7,
    }
    assert HEADER_ATTEMPT == "jobsys-attempt"  # never an x- header: the broker owns those


def test_identity_headers_stamp_the_publish_time_when_none_was_given() -> None:
    stamped = identity_headers({}, job_id="job-1")[HEADER_PUBLISHED_AT_MS]

    assert isinstance(stamped, int)
    assert stamped > 1_600_000_000_000


def test_job_ids_and_message_ids_are_fresh_every_time() -> None:
    assert len({new_job_id() for _ in range(100)}) == 100
    assert len({new_message_id() for _ in range(100)}) == 100


# -- encoding refuses ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {"x": [math.nan]}])
def test_nan_and_infinity_are_refused_when_encoding(bad: Any) -> None:
    with pytest.raises(PayloadValidationError, match="not JSON-serialisable"):
        encode_payload(bad, LIMIT)


@pytest.mark.parametrize("bad", [{1, 2}, b"bytes", object(), {"when": math}])
def test_values_json_cannot_hold_are_refused_when_encoding(bad: Any) -> None:
    with pytest.raises(PayloadValidationError, match="not JSON-serialisable"):
        encode_payload(bad, LIMIT)


def test_a_payload_over_the_limit_is_refused_with_its_size() -> None:
    with pytest.raises(PayloadTooLargeError) as caught:
        encode_payload("x" * 100, 50)

    assert str(caught.value) == "payload is 102 bytes encoded; the limit is 50 bytes"
    assert encode_payload("x" * 48, 50) == b'"' + b"x" * 48 + b'"'


def test_a_payload_nested_too_deeply_is_refused_not_a_recursion_error() -> None:
    payload: Any = []
    for _ in range(100_000):
        payload = [payload]

    with pytest.raises(PayloadValidationError):
        encode_payload(payload, LIMIT)


# -- decoding refuses ---------------------------------------------------------------------------


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity", b'{"x": NaN}'])
def test_nan_and_infinity_are_refused_when_decoding(constant: bytes) -> None:
    with pytest.raises(DecodeError, match="is not valid JSON"):
        decode_payload(constant, CONTENT_TYPE, LIMIT)


def test_a_body_nested_too_deeply_is_a_decode_error_not_a_recursion_error() -> None:
    body = b"[" * 200_000 + b"]" * 200_000

    with pytest.raises(DecodeError) as caught:
        decode_payload(body, CONTENT_TYPE, LIMIT)

    assert str(caught.value) == "body is JSON nested too deeply"


def test_a_body_over_the_limit_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(PayloadTooLargeError) as caught:
        decode_payload(b"[" * 100, CONTENT_TYPE, 10)

    assert str(caught.value) == "body is 100 bytes; the limit is 10 bytes"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "body is not UTF-8 (byte 0)"),
        (b"{not json", "body is not JSON: "),
        (b"", "body is not JSON: "),
    ],
)
def test_a_body_that_is_not_utf8_json_is_a_decode_error(body: bytes, message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_payload(body, CONTENT_TYPE, LIMIT)

    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("encoding", [None, "utf-8", "UTF-8"])
def test_json_in_utf8_is_read(encoding: str | None) -> None:
    assert decode_payload(b"[1]", CONTENT_TYPE, LIMIT, encoding) == [1]


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        (None, "no content type"),
        ("", "no content type"),
        ("application/x-pickle", "content type 'application/x-pickle'"),
        ("text/plain", "content type 'text/plain'"),
        ("application/json; charset=latin-1", "content type 'application/json; charset=latin-1'"),
    ],
)
def test_a_missing_or_other_content_type_is_refused_with_its_own_error(
    content_type: str | None, shown: str
) -> None:
    with pytest.raises(ContentTypeError) as caught:
        decode_payload(b"[1]", content_type, LIMIT)

    assert str(caught.value) == f"{shown}; jobsys reads application/json only"
    assert isinstance(caught.value, DecodeError)  # dead-lettered at once, never retried


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "latin-1", ""])
def test_a_content_encoding_jobsys_did_not_write_is_refused_before_parsing(encoding: str) -> None:
    # A gzip flag on a plain JSON body would otherwise be read as if it were plain.
    with pytest.raises(ContentTypeError, match=f"content encoding {encoding!r}"):
        decode_payload(b"[1]", CONTENT_TYPE, LIMIT, encoding)


@pytest.mark.parametrize("message_type", [None, ""])
def test_a_message_without_a_job_type_is_a_decode_error(message_type: str | None) -> None:
    with pytest.raises(DecodeError, match="message has no job type"):
        decode(b"{}", message_type=message_type)


@pytest.mark.parametrize("headers", [{}, {HEADER_JOB_ID: ""}, {HEADER_JOB_ID: 42}])
def test_a_message_without_a_job_id_is_a_decode_error(headers: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(b"{}", headers=headers)

    assert str(caught.value) == "message has no jobsys-job-id header"


def test_a_job_id_header_that_arrives_as_bytes_is_read_as_text() -> None:
    assert decode(b"{}", headers={HEADER_JOB_ID: b"job-7"}).job_id == "job-7"


def test_a_missing_attempt_header_means_the_first_attempt() -> None:
    assert decode(b"{}", headers={HEADER_JOB_ID: "job-1"}).attempt == 1


@pytest.mark.parametrize("attempt", [0, -1, "2", 1.5, True, None])
def test_an_attempt_header_that_is_not_a_positive_integer_is_a_decode_error(
    attempt: object,
) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(b"{}", headers={HEADER_JOB_ID: "job-1", HEADER_ATTEMPT: attempt})

    assert str(caught.value) == (
        f"header jobsys-attempt must be a positive integer, got {attempt!r}"
    )


def test_decoded_user_headers_leave_out_jobsys_and_broker_headers() -> None:
    envelope = decode(
        b"{}",
        headers={
            HEADER_JOB_ID: "job-1",
            HEADER_ATTEMPT: 2,
            HEADER_PUBLISHED_AT_MS: True,  # not a time: ignored, not trusted
            "x-death": [{"count": 1}],
            "traceparent": "00-abc-def-01",
            "tenant": "acme",
        },
    )

    assert envelope.headers == {"traceparent": "00-abc-def-01", "tenant": "acme"}
    assert read_identity("t", {HEADER_PUBLISHED_AT_MS: True}).published_at_ms is None


# -- headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x-death", "X-Custom", "jobsys-attempt", "JobSys-Job-Id"])
def test_header_names_reserved_for_the_broker_or_jobsys_are_refused(name: str) -> None:
    with pytest.raises(PayloadValidationError) as caught:
        check_user_headers({name: "v"})

    assert str(caught.value) == (
        f"header {name!r} is reserved (names starting with 'x-' or 'jobsys-')"
    )


def test_empty_or_non_string_header_names_are_refused() -> None:
    for headers in ({"": 1}, {1: "v"}):
        with pytest.raises(PayloadValidationError, match="non-empty strings"):
            check_user_headers(headers)  # type: ignore[arg-type]


def test_ordinary_user_headers_pass_through_as_a_copy() -> None:
    headers = {"tenant": "acme", "xray": 1}

    checked = check_user_headers(headers)

    assert checked == headers and checked is not headers
    assert check_user_headers(None) == {}


def test_strip_death_headers_removes_the_brokers_dead_letter_history_only() -> None:
    headers = {
        "x-death": [{"count": 1}],
        "x-first-death-queue": "q",
        "x-first-death-reason": "expired",
        "x-first-death-exchange": "e",
        "x-last-death-queue": "q",
        "x-last-death-reason": "expired",
        "x-last-death-exchange": "e",
        "x-custom": "kept",
        HEADER_ATTEMPT: 3,
        "tenant": "acme",
    }

    assert strip_death(headers) == {
        "x-custom": "kept",
        HEADER_ATTEMPT: 3,
        "tenant": "acme",
    }


@pytest.mark.parametrize("value", ["its header table could not be decoded", "", 7, None])
def test_a_delivery_carrying_the_unreadable_headers_mark_is_refused_whatever_else_it_has(
    value: object,
) -> None:
    # The frame reader puts the mark in place of a table it could not decode; another client
    # may also send it. Either way the job is not run: its id and attempt cannot be trusted.
    headers = {HEADER_JOB_ID: "job-1", HEADER_ATTEMPT: 1, HEADER_UNREADABLE_HEADERS: value}
    identity = read_identity("send_email", headers)
    assert identity.problem == "its header table could not be decoded (tables nested too deeply)"
    with pytest.raises(DecodeError, match="nested too deeply"):
        decode(b"{}", headers=headers)
