"""CC and BCC: RabbitMQ sends a copy of a message to every routing key these headers list, on
any exchange type (sender-selected distribution). A job must never carry them: not from the
caller, not from the topology, and not into a retry, a dead letter or a replay, even when a
message published past jobsys carried them (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from jobsys.errors import PayloadValidationError, TopologyLoadError
from jobsys.topology.loader import load_topology_text
from jobsys.wire.deadletter import dead_letter_headers, record_for, replay_headers
from jobsys.wire.envelope import check_user_headers
from jobsys.wire.headers import HEADER_JOB_ID, Origin, retry_headers

ROUTING_NAMES = ["CC", "BCC", "cc", "Bcc", "bCC"]


def _raw_headers(name: str) -> dict[str, Any]:
    return {HEADER_JOB_ID: "j-1", "tenant": "acme", name: ["other.key"]}


@pytest.mark.parametrize("name", ROUTING_NAMES)
def test_cc_and_bcc_in_any_case_are_refused_from_the_caller(name: str) -> None:
    with pytest.raises(PayloadValidationError) as caught:
        check_user_headers({name: ["other.key"]})
    message = str(caught.value)
    assert repr(name) in message
    assert "copy" in message  # says why: the broker would send copies elsewhere


@pytest.mark.parametrize("name", ROUTING_NAMES)
def test_a_retry_never_carries_cc_or_bcc_from_the_message_it_copies(name: str) -> None:
    headers = retry_headers(
        _raw_headers(name),
        job_id="j-1",
        attempt=2,
        origin=Origin("jobs", "email.send"),
        first_failed_at_ms=1,
    )
    assert name not in headers
    assert headers["tenant"] == "acme"


@pytest.mark.parametrize("name", ROUTING_NAMES)
def test_a_dead_letter_never_carries_cc_or_bcc_from_the_message_it_copies(name: str) -> None:
    record = record_for(
        RuntimeError("boom"),
        attempts=3,
        failed_at_ms=5,
        exchange="jobs",
        routing_key="email.send",
        queue="emails",
        worker_host="h",
        with_traceback=False,
    )
    headers = dead_letter_headers(_raw_headers(name), record, job_id="j-1")
    assert name not in headers
    assert headers["tenant"] == "acme"


@pytest.mark.parametrize("name", ROUTING_NAMES)
def test_a_replay_never_carries_cc_or_bcc_from_the_dead_letter_queue(name: str) -> None:
    headers = replay_headers(_raw_headers(name))
    assert name not in headers
    assert headers["tenant"] == "acme"


@pytest.mark.parametrize("name", ["CC", "bcc"])
def test_a_job_type_in_the_topology_cannot_set_cc_or_bcc(name: str) -> None:
    text = f"""\
version: 1
exchanges:
  jobs: {{type: topic}}
queues:
  q: {{type: classic}}
bindings:
  - {{exchange: jobs, queue: q, routing_key: "#"}}
job_types:
  j: {{exchange: jobs, routing_key: k, headers: {{{name}: other}}}}
"""
    with pytest.raises(TopologyLoadError) as caught:
        load_topology_text(text, "t.yaml")
    [problem] = caught.value.problems
    assert problem.startswith("t.yaml:9:")
    assert "job_types.j.headers" in problem and repr(name) in problem
