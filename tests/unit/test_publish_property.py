"""A property of the publish path, with arbitrary input (pure): ``Producer.prepare`` either
refuses a job with a jobsys error or returns one whose properties encode exactly as pamqp
would send them, keep every header name whole and fit one frame. Never another exception.
The broker's side of the same property is in tests/integration/test_publish_property.py."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from pamqp import commands as spec
from pamqp import frame
from pamqp.header import ContentHeader
from pydantic import BaseModel

from jobsys.errors import JobsysError
from jobsys.publish.producer import JobRequest, PreparedJob, Producer
from jobsys.publish.properties import message_properties
from jobsys.settings import Settings
from jobsys.topology.model import Topology
from jobsys.wire.envelope import new_message_id
from tests.strategies import any_requests

FRAME_MAX = 131072
#: Raise it for a longer hunt: JOBSYS_PROPERTY_EXAMPLES=20000.
EXAMPLES = int(os.environ.get("JOBSYS_PROPERTY_EXAMPLES", "1500"))

TOPOLOGY = Topology.model_validate(
    {
        "version": 1,
        "exchanges": {"jobs": {"type": "topic"}, "fan": {"type": "fanout"}},
        "queues": {
            "emails": {"type": "classic", "max_priority": 10},
            "audit": {"type": "classic"},
            "archive": {"type": "classic"},
        },
        "bindings": [
            {"exchange": "jobs", "queue": "emails", "routing_key": "email.#"},
            {"exchange": "fan", "queue": "audit"},
            {"exchange": "fan", "queue": "archive"},
        ],
        "job_types": {
            "send_email": {"exchange": "jobs", "routing_key": "email.send", "priority": 3},
            "audit_event": {"exchange": "fan"},
        },
    }
)


class Email(BaseModel):
    to: str


PRODUCER = Producer(Settings(), TOPOLOGY, models={"send_email": Email})
RUNS = {"cases": 0, "prepared": 0}


def _check_prepared(job: PreparedJob, given_headers: Any) -> None:
    props = message_properties(job.job_type, job.priority, job.headers, new_message_id())
    reference = spec.Basic.Properties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        headers=job.headers,
        delivery_mode=2,
        priority=job.priority,
        message_id=props.message_id,
        timestamp=props.timestamp,
        message_type=job.job_type,
    )
    encoded = props.marshal()
    assert encoded == reference.marshal()
    decoded = spec.Basic.Properties()
    decoded.unmarshal(int.from_bytes(encoded[:2], "big"), encoded[2:])
    assert set(decoded.headers or {}) == set(job.headers)  # no name cut short
    if given_headers:
        assert set(given_headers) <= set(job.headers)
    assert len(frame.marshal(ContentHeader(0, len(job.body), props), 1)) <= FRAME_MAX


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=any_requests)
def test_prepare_refuses_with_a_jobsys_error_or_returns_a_job_that_encodes_exactly(
    request: tuple[Any, Any, Any, Any, Any, Any],
) -> None:
    RUNS["cases"] += 1
    headers = request[5]
    try:
        job = PRODUCER.prepare(JobRequest(*request))
    except JobsysError:
        return
    RUNS["prepared"] += 1
    _check_prepared(job, headers)


def test_the_property_ran_its_cases_and_prepared_some_jobs() -> None:
    # Runs after the property above (file order): it proves the strategies reach both sides.
    if RUNS["cases"] == 0:
        test_prepare_refuses_with_a_jobsys_error_or_returns_a_job_that_encodes_exactly()
    print(f"publish property: {RUNS['cases']} cases, {RUNS['prepared']} prepared")
    assert RUNS["cases"] >= EXAMPLES * 0.9
    assert RUNS["prepared"] > 0
