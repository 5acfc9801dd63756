"""Hostile input to ``Producer.prepare``: every job id, header and delay it cannot send exactly
as given is refused before any I/O with a jobsys error that names the problem, never with a
raw TypeError, OverflowError or RecursionError, and never by cutting a name short (pure)."""

from __future__ import annotations

import datetime as dt
import math
import time
from decimal import Decimal
from typing import Any

import pytest
from pamqp import commands as spec
from pydantic import ValidationError

from jobsys.broker import encoding
from jobsys.errors import (
    ConfigError,
    JobsysError,
    PayloadTooLargeError,
    PayloadValidationError,
    UnknownJobTypeError,
)
from jobsys.publish.producer import JobRequest, PreparedJob, Producer
from jobsys.publish.properties import copied_properties, message_properties
from jobsys.settings import Settings
from jobsys.topology.model import Topology
from jobsys.wire.envelope import JobProperties, new_message_id

TOPOLOGY = Topology.model_validate(
    {
        "version": 1,
        "exchanges": {"jobs": {"type": "topic"}, "by-format": {"type": "headers"}},
        "queues": {
            "emails": {"type": "classic", "max_priority": 10},
            "pdfs": {"type": "classic"},
            "csvs": {"type": "classic"},
        },
        "bindings": [
            {"exchange": "jobs", "queue": "emails", "routing_key": "email.#"},
            {"exchange": "by-format", "queue": "pdfs", "headers": {"format": "pdf"}},
            {
                "exchange": "by-format",
                "queue": "csvs",
                "match": "any",
                "headers": {"format": "csv", "tabular": True},
            },
        ],
        "job_types": {
            "send_email": {"exchange": "jobs", "routing_key": "email.send"},
            "render_pdf": {"exchange": "by-format", "headers": {"format": "pdf"}},
        },
    }
)


def prepare(job_type: str = "send_email", **kwargs: Any) -> PreparedJob:
    producer = Producer(Settings(), TOPOLOGY)
    return producer.prepare(JobRequest(job_type, {"n": 1}, **kwargs))


def sent_headers(job: PreparedJob) -> dict[str, Any]:
    """The headers as the broker receives them: encoded, then decoded by pamqp."""
    props = message_properties(job.job_type, job.priority, job.headers, new_message_id())
    encoded = props.marshal()
    decoded = spec.Basic.Properties()
    decoded.unmarshal(int.from_bytes(encoded[:2], "big"), encoded[2:])
    return dict(decoded.headers or {})


# -- job ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize("job_id", [12345, 1.5, b"order-1", ["a"], True])
def test_a_job_id_that_is_not_a_string_is_refused(job_id: object) -> None:
    with pytest.raises(PayloadValidationError, match="job id must be a non-empty string"):
        prepare(job_id=job_id)


def test_an_empty_job_id_is_refused_rather_than_replaced() -> None:
    with pytest.raises(PayloadValidationError, match="job id must be a non-empty string"):
        prepare(job_id="")


@pytest.mark.parametrize("job_id", ["a\nb", "tab\there", "nul\x00", "\x1b[31mred", "del\x7f"])
def test_a_job_id_with_control_characters_is_refused(job_id: str) -> None:
    with pytest.raises(PayloadValidationError, match="control characters"):
        prepare(job_id=job_id)


def test_a_job_id_that_is_not_valid_unicode_text_is_refused() -> None:
    with pytest.raises(PayloadValidationError, match="not valid UTF-8"):
        prepare(job_id="half a pair \ud800")


@pytest.mark.parametrize("job_id", ["a" * 256, "é" * 128, "x" * 200_000])
def test_a_job_id_over_255_bytes_is_refused_naming_the_limit(job_id: str) -> None:
    with pytest.raises(PayloadTooLargeError, match="the limit is 255 bytes"):
        prepare(job_id=job_id)


@pytest.mark.parametrize("job_id", ["a" * 255, "é" * 127 + "a", "order 42 / café ✓"])
def test_a_job_id_up_to_255_bytes_of_printable_text_is_kept_as_given(job_id: str) -> None:
    assert prepare(job_id=job_id).job_id == job_id


# -- header values -----------------------------------------------------------------------------


class Custom:
    pass


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (b"raw", "type bytes"),
        (bytearray(b"raw"), "type bytearray"),
        ({1, 2}, "type set"),
        ((1, 2), "type tuple"),
        (Custom(), "type Custom"),
        (2**63, "64-bit"),
        (-(2**63) - 1, "64-bit"),
        pytest.param(10**400, "64-bit", id="int of 400 digits"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (-math.inf, "finite"),
        (Decimal("NaN"), "decimal"),
        (Decimal("1e40"), "decimal"),
        (Decimal("1.00000000001"), "decimal"),
        (dt.datetime(1969, 12, 31, tzinfo=dt.UTC), "before 1970"),
        (time.gmtime(-5), "before 1970"),
        ({"inner": b"raw"}, "type bytes"),
        ([1, [2, {3}]], "type set"),
        ({1: "non-string key"}, "names must be non-empty strings"),
        ({"k" * 129: 1}, "128"),
        ("lone surrogate \udc80", "not valid UTF-8"),
    ],
)
def test_a_header_value_amqp_cannot_carry_as_given_is_refused_naming_it(
    value: object, problem: str
) -> None:
    with pytest.raises(PayloadValidationError) as caught:
        prepare(headers={"meta": value})
    assert "'meta'" in str(caught.value)
    assert problem in str(caught.value)


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deeply_nested_header_values_are_refused_without_a_recursion_error(depth: int) -> None:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    with pytest.raises(PayloadValidationError, match="nested more than 32"):
        prepare(headers={"deep": value})


@pytest.mark.parametrize(
    "value",
    [
        "text",
        "",
        "multi\nline\ttext is data",
        2**63 - 1,
        -(2**63),
        0,
        True,
        None,
        0.5,
        Decimal("12.50"),
        Decimal("-2147483648"),
        dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        {"nested": {"list": [1, "two", None, False]}},
        [],
        {},
    ],
)
def test_every_value_amqp_can_carry_arrives_as_sent(value: object) -> None:
    job = prepare(headers={"meta": value})
    assert sent_headers(job)["meta"] == value


def test_headers_that_are_not_a_mapping_are_refused() -> None:
    with pytest.raises(PayloadValidationError, match="mapping"):
        prepare(headers=[("tenant", "acme")])


# -- header names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["n" * 129, "é" * 65, "n" * 300])
def test_a_header_name_longer_than_the_broker_keeps_is_refused_not_cut(name: str) -> None:
    with pytest.raises(PayloadValidationError, match="at most 128 bytes"):
        prepare(headers={name: "v"})


@pytest.mark.parametrize("name", ["n" * 128, "é" * 64, "tenant id ✓"])
def test_a_header_name_up_to_128_bytes_arrives_whole(name: str) -> None:
    assert sent_headers(prepare(headers={name: "v"}))[name] == "v"


@pytest.mark.parametrize("name", ["a\nb", "nul\x00", "\x1b]0;title\x07", "del\x7f"])
def test_a_header_name_with_control_characters_is_refused(name: str) -> None:
    with pytest.raises(PayloadValidationError, match="control characters"):
        prepare(headers={name: "v"})


def test_a_header_name_that_is_not_valid_unicode_text_is_refused() -> None:
    with pytest.raises(PayloadValidationError, match="not valid UTF-8"):
        prepare(headers={"bad \udcff": "v"})


@pytest.mark.parametrize("name", ["format", "tabular"])
def test_a_header_the_job_types_headers_exchange_routes_on_is_refused(name: str) -> None:
    # A binding with match: any on "tabular" would send a copy to csvs.
    with pytest.raises(PayloadValidationError, match="routes on"):
        prepare("render_pdf", headers={name: True})
    assert prepare("send_email", headers={name: True}).headers[name] is True


# -- delays and priorities ---------------------------------------------------------------------


def test_a_delay_too_large_for_a_float_is_refused_as_too_long() -> None:
    for delay in (10**400, 2**1024, 2**53 + 1):
        with pytest.raises(ConfigError, match=r"longer than delays\.max_delay"):
            prepare(delay_s=delay)
    with pytest.raises(ConfigError, match="zero or more seconds"):
        prepare(delay_s=-(10**400))


@pytest.mark.parametrize("delay", [Decimal("5"), "5", b"5", [5], object()])
def test_a_delay_that_is_not_a_number_is_refused(delay: object) -> None:
    with pytest.raises(ConfigError, match="number of seconds"):
        prepare(delay_s=delay)


@pytest.mark.parametrize(
    "priority",
    ["5", 5.0, b"5", [5], Decimal(5), 10**400],
    ids=["str", "float", "bytes", "list", "decimal", "huge"],
)
def test_a_priority_that_is_not_an_integer_from_0_to_255_is_refused(priority: object) -> None:
    with pytest.raises(ConfigError, match="integer from 0 to 255"):
        prepare(priority=priority)


def test_every_refusal_is_a_jobsys_error() -> None:
    for kwargs in ({"job_id": 1}, {"headers": {"b": b""}}, {"delay_s": 10**400}):
        with pytest.raises(JobsysError):
            prepare(**kwargs)


# -- a priority the queues cannot honour -------------------------------------------------------


def test_a_priority_for_a_queue_without_max_priority_is_refused_as_having_no_effect() -> None:
    with pytest.raises(ConfigError) as caught:
        prepare("render_pdf", priority=5)
    assert str(caught.value) == (
        "priority 5 has no effect: queue 'pdfs' has no max_priority (job type 'render_pdf')"
    )


def test_a_priority_above_the_queues_max_priority_is_refused() -> None:
    for priority in (11, 255):
        with pytest.raises(ConfigError) as caught:
            prepare(priority=priority)
        assert str(caught.value) == (
            f"priority {priority} is above max_priority 10 of queue 'emails' "
            "(job type 'send_email')"
        )


def test_a_priority_the_queues_honour_and_priority_0_everywhere_are_kept() -> None:
    assert prepare(priority=10).priority == 10
    assert prepare(priority=1).priority == 1
    assert prepare("render_pdf", priority=0).priority == 0
    assert prepare("render_pdf").priority is None


# -- what reaches the encoder anyway -----------------------------------------------------------


def test_a_job_type_whose_routing_key_is_over_255_bytes_is_refused_before_any_io() -> None:
    # AMQP counts bytes (255), not characters: 100 check marks are 300 bytes.
    with pytest.raises(ValidationError, match="300 bytes in UTF-8; an AMQP routing key"):
        Topology.model_validate(
            {
                "version": 1,
                "exchanges": {"jobs": {"type": "topic"}},
                "queues": {"q": {"type": "classic"}},
                "bindings": [{"exchange": "jobs", "queue": "q", "routing_key": "#"}],
                "job_types": {"wide": {"exchange": "jobs", "routing_key": "✓" * 100}},
            }
        )


@pytest.mark.parametrize(
    "headers",
    [{"s": b"\xff\xfe"}, {"n": {"deep": 2**64}}],
    ids=["bytes not UTF-8", "an int beyond 64 bits"],
)
def test_a_copied_message_whose_headers_cannot_be_encoded_is_a_jobsys_error(
    headers: dict[str, Any],
) -> None:
    # A retry, dead letter or replay copies headers as the broker delivered them; pamqp decodes
    # some values (a 64-bit double, a long string that is not UTF-8) that it cannot encode.
    kept = JobProperties("send_email")
    with pytest.raises(PayloadValidationError, match="cannot be encoded"):
        copied_properties(
            kept, {"jobsys-job-id": "j-1", **headers}, new_message_id(), max_bytes=131072 - 20
        )


def test_a_copied_message_with_a_double_beyond_32_bits_keeps_it_exact() -> None:
    # Another client's double (AMQP "d") header; as a 32-bit float it could not be copied.
    encoding.install()  # as every BrokerConnection does before its first frame
    kept = JobProperties("send_email")
    props = copied_properties(
        kept, {"jobsys-job-id": "j-1", "d": 1e300, "r": 0.1}, new_message_id(), max_bytes=131072
    )
    assert props.headers is not None
    assert props.headers["d"] == 1e300 and props.headers["r"] == 0.1


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"job_id": 10**5000},
        {"job_id": BrokenRepr()},
        {"priority": 10**5000},
        {"priority": BrokenRepr()},
        {"delay_s": BrokenRepr()},
        {"headers": {"h": 10**5000}},
        {"headers": {"h": BrokenRepr()}},
        {"headers": {"h": [1, {"k": BrokenRepr()}]}},
    ],
    ids=lambda kwargs: f"{next(iter(kwargs))}",
)
def test_a_value_python_cannot_show_is_still_refused_with_a_jobsys_error(
    kwargs: dict[str, Any],
) -> None:
    # repr() of an int over 4300 digits raises ValueError; a caller's object may raise too.
    with pytest.raises(JobsysError):
        prepare(**kwargs)


def test_an_unknown_job_type_python_cannot_show_is_still_an_unknown_job_type() -> None:
    with pytest.raises(UnknownJobTypeError, match="an int of 16610 bits"):
        Producer(Settings(), TOPOLOGY).prepare(JobRequest(10**5000, {}))  # type: ignore[arg-type]
