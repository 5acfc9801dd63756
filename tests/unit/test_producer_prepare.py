"""Everything ``publish`` checks before any I/O: job type, payload, size, priority, delay."""

from __future__ import annotations

import json
import math

import pytest
from pamqp import commands as spec
from pydantic import BaseModel, Field

from jobsys.errors import (
    ConfigError,
    PayloadTooLargeError,
    PayloadValidationError,
    UnknownJobTypeError,
)
from jobsys.publish.producer import JobRequest, PreparedJob, Producer
from jobsys.publish.properties import message_properties
from jobsys.settings import Settings
from jobsys.topology import delays
from jobsys.topology.model import Topology
from jobsys.wire.envelope import new_message_id
from jobsys.wire.headers import HEADER_ATTEMPT, HEADER_JOB_ID, HEADER_PUBLISHED_AT_MS

TOPOLOGY = Topology.model_validate(
    {
        "version": 1,
        "exchanges": {
            "jobs": {"type": "topic"},
            "fan": {"type": "fanout"},
            "by-format": {"type": "headers"},
        },
        "queues": {
            "emails": {"type": "classic", "max_priority": 10},
            "audit": {"type": "classic"},
            "archive": {"type": "classic"},
            "pdfs": {"type": "classic"},
        },
        "bindings": [
            {"exchange": "jobs", "queue": "emails", "routing_key": "email.#"},
            {"exchange": "fan", "queue": "audit"},
            {"exchange": "fan", "queue": "archive"},
            {"exchange": "by-format", "queue": "pdfs", "headers": {"format": "pdf"}},
        ],
        "job_types": {
            "send_email": {"exchange": "jobs", "routing_key": "email.send", "priority": 5},
            "audit_event": {"exchange": "fan"},
            "render_pdf": {"exchange": "by-format", "headers": {"format": "pdf"}},
        },
    }
)


class Email(BaseModel):
    to: str = Field(min_length=3)
    subject: str = ""


def make_producer(max_bytes: int = 1024) -> Producer:
    # Constructing a producer never connects; prepare() is pure.
    return Producer(Settings(max_payload_bytes=max_bytes), TOPOLOGY, models={"send_email": Email})


def prepare(**kwargs: object) -> PreparedJob:
    fields: dict[str, object] = {"job_type": "send_email", "payload": {"to": "a@b.c"}}
    fields.update(kwargs)
    return make_producer().prepare(JobRequest(**fields))  # type: ignore[arg-type]


def test_unknown_job_type_is_refused_naming_the_known_types() -> None:
    with pytest.raises(UnknownJobTypeError) as info:
        prepare(job_type="send_fax")
    message = str(info.value)
    assert "send_fax" in message
    assert "audit_event, render_pdf, send_email" in message


def test_payload_is_validated_by_its_model_with_the_field_path() -> None:
    with pytest.raises(PayloadValidationError) as info:
        prepare(payload={"to": "x", "subject": 3})
    message = str(info.value)
    assert "send_email" in message
    assert "to:" in message
    assert "subject:" in message


def test_a_model_normalises_the_payload_to_its_json_dump() -> None:
    job = prepare(payload=Email(to="someone@example.com"))
    assert json.loads(job.body) == {"to": "someone@example.com", "subject": ""}


def test_a_job_type_without_a_model_publishes_any_json_payload() -> None:
    job = make_producer().prepare(JobRequest("audit_event", [1, "two", {"three": 3.0}]))
    assert json.loads(job.body) == [1, "two", {"three": 3.0}]


def test_a_payload_that_is_not_json_is_refused() -> None:
    with pytest.raises(PayloadValidationError):
        make_producer().prepare(JobRequest("audit_event", {"when": object()}))
    with pytest.raises(PayloadValidationError):
        make_producer().prepare(JobRequest("audit_event", {"x": math.nan}))


def test_a_payload_over_the_limit_is_refused() -> None:
    with pytest.raises(PayloadTooLargeError) as info:
        make_producer(max_bytes=100).prepare(JobRequest("audit_event", {"x": "y" * 200}))
    assert "limit is 100 bytes" in str(info.value)


def test_the_job_id_defaults_to_a_fresh_uuid_and_the_caller_may_set_it() -> None:
    first, second = prepare(), prepare()
    assert first.job_id != second.job_id
    assert len(first.job_id) == 36
    assert prepare(job_id="order-42").job_id == "order-42"


def test_headers_carry_job_id_attempt_and_publish_time_and_the_callers_own() -> None:
    job = prepare(job_id="j1", headers={"tenant": "acme"})
    assert job.headers[HEADER_JOB_ID] == "j1"
    assert job.headers[HEADER_ATTEMPT] == 1
    assert isinstance(job.headers[HEADER_PUBLISHED_AT_MS], int)
    assert job.headers["tenant"] == "acme"
    assert not any(name.startswith("x-") for name in job.headers)


@pytest.mark.parametrize("name", ["x-death", "X-Custom", "jobsys-attempt"])
def test_reserved_header_names_are_refused(name: str) -> None:
    with pytest.raises(PayloadValidationError):
        prepare(headers={name: 1})


def test_priority_defaults_to_the_job_types_and_can_be_overridden() -> None:
    assert prepare().priority == 5
    assert prepare(priority=9).priority == 9
    assert prepare(priority=0).priority == 0


@pytest.mark.parametrize("priority", [-1, 256, 2.5, True])
def test_a_priority_outside_0_to_255_is_refused(priority: object) -> None:
    with pytest.raises(ConfigError):
        prepare(priority=priority)


def test_an_undelayed_job_goes_to_its_job_types_exchange_and_key() -> None:
    job = prepare()
    assert job.targets == (("jobs", "email.send", ("emails",)),)
    assert job.delay_s is None
    assert prepare(delay_s=0).targets == job.targets


def test_a_headers_exchange_job_carries_the_match_headers() -> None:
    job = make_producer().prepare(JobRequest("render_pdf", {}))
    assert job.headers["format"] == "pdf"
    assert job.targets == (("by-format", "", ("pdfs",)),)


def test_a_delayed_job_enters_the_delay_level_of_its_highest_bit() -> None:
    job = prepare(delay_s=90)
    route = TOPOLOGY.delay_layout.route("emails", 90)
    assert job.targets == ((route.exchange, route.routing_key, ("emails",)),)
    assert job.delay_s == 90.0
    assert route.exchange == TOPOLOGY.delay_layout.level_name(6)  # 90 = 0b1011010


def test_a_delayed_job_rounds_up_to_whole_seconds() -> None:
    assert prepare(delay_s=0.2).delay_s == 1.0


def test_a_delayed_job_that_fans_out_is_one_message_per_queue() -> None:
    job = make_producer().prepare(JobRequest("audit_event", {}, delay_s=5))
    assert [queues for _, _, queues in job.targets] == [("audit",), ("archive",)]
    assert all(key.endswith(queues[0]) for _, key, queues in job.targets)


def test_a_delayed_job_names_the_exchange_and_key_it_was_published_for() -> None:
    # It arrives through the delivery exchange; a dead-letter record must still say where it
    # was sent.
    job = prepare(delay_s=90)
    assert job.headers["jobsys-original-exchange"] == "jobs"
    assert job.headers["jobsys-original-routing-key"] == "email.send"
    assert "jobsys-original-exchange" not in prepare().headers


def test_a_delay_over_delays_max_delay_is_refused_though_the_levels_could_hold_it() -> None:
    # The levels hold about 17 years; the topology's limit is what counts.
    assert delays.MAX_DELAY_S > 40 * 86400
    with pytest.raises(ConfigError, match=r"longer than delays.max_delay \(30d\)"):
        prepare(delay_s=40 * 86400.0)
    assert prepare(delay_s=30 * 86400.0).delay_s == 30 * 86400.0


@pytest.mark.parametrize("delay", [-1.0, math.nan, math.inf, 10 * 365 * 86400.0, "5s"])
def test_a_negative_nan_or_too_long_delay_is_refused(delay: object) -> None:
    with pytest.raises(ConfigError):
        prepare(delay_s=delay)


@pytest.mark.parametrize("priority", [None, 0, 9, 255])
@pytest.mark.parametrize(
    "headers",
    [
        {"jobsys-job-id": "j-1", "jobsys-attempt": 1, "jobsys-published-at-ms": 1763900000000},
        {
            "tenant": "acmé",
            "big": 2**40,
            "neg": -70000,
            "flag": True,
            "ratio": 0.5,
            "nested": {"a": [1, "b"]},
            "none": None,
            "jobsys-attempt": 300,
        },
        {"k" * 129: "a key pamqp truncates"},
    ],
)
def test_pre_encoded_properties_are_the_bytes_pamqp_would_send(
    priority: int | None, headers: dict[str, object]
) -> None:
    props = message_properties("send_email", priority, headers, new_message_id())
    reference = spec.Basic.Properties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        headers=headers,  # type: ignore[arg-type]
        delivery_mode=2,
        priority=priority,
        message_id=props.message_id,
        timestamp=props.timestamp,
        message_type="send_email",
    )
    assert props.marshal() == reference.marshal()
    decoded = spec.Basic.Properties()
    flags = int.from_bytes(props.marshal()[:2], "big")
    decoded.unmarshal(flags, props.marshal()[2:])
    assert decoded.message_type == "send_email"
    assert decoded.delivery_mode == 2
    assert decoded.priority == priority
