"""Follow-up job ids and the ``jobsys-then`` header (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobsys.app import JobContext
from jobsys.errors import PayloadTooLargeError, PayloadValidationError, UnknownJobTypeError
from jobsys.publish.prepare import JobRequest, build_routes, prepare_job
from jobsys.topology.loader import load_topology_text
from jobsys.wire.chain import followup_id, then_job_type
from jobsys.wire.envelope import MAX_JOB_ID_BYTES, check_job_id
from jobsys.wire.headers import HEADER_THEN

TOPOLOGY = """\
version: 1
exchanges:
  x: {type: direct}
queues:
  q: {type: classic}
bindings:
  - {exchange: x, queue: q, routing_key: k}
job_types:
  a: {exchange: x, routing_key: k}
  b: {exchange: x, routing_key: k}
"""


def test_a_follow_up_id_is_the_parents_with_its_place() -> None:
    assert followup_id("order-42", 1) == "order-42/1"
    assert followup_id("order-42", "then") == "order-42/then"


@given(st.text(min_size=1, max_size=400), st.integers(min_value=1, max_value=10_000))
def test_a_follow_up_id_is_deterministic_usable_and_distinct(parent: str, index: int) -> None:
    job_id = followup_id(parent, index)
    assert job_id == followup_id(parent, index)
    assert check_job_id(job_id) == job_id
    assert job_id != followup_id(parent, index + 1)


def test_a_parent_id_at_the_limit_gives_a_hashed_id_within_it() -> None:
    parent = "p" * MAX_JOB_ID_BYTES
    job_id = followup_id(parent, 7)
    assert job_id.startswith("fu-") and len(job_id) <= MAX_JOB_ID_BYTES
    assert job_id != followup_id(parent, 8)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (b"a", PayloadValidationError, "must be text, got bytes"),
        (42, PayloadValidationError, "must be a job type, got int"),
        ("", PayloadValidationError, "must be a job type"),
        ("a" * 300, PayloadTooLargeError, "longer than 255 bytes"),
        ("a\nb", PayloadValidationError, "control characters"),
        ("\x1b[31ma", PayloadValidationError, "control characters"),
        ("nope", UnknownJobTypeError, "not in the topology"),
    ],
)
def test_a_hostile_then_value_is_refused_with_the_reason(
    value: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        then_job_type(value, {"a", "b"})
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)


def test_publishing_with_then_sets_the_header_and_refuses_an_unknown_job_type() -> None:
    topology = load_topology_text(TOPOLOGY).topology
    routes = build_routes(topology)

    def prepare(then: object) -> dict[str, object]:
        request = JobRequest("a", {}, then=then)  # type: ignore[arg-type]
        return prepare_job(request, routes, {}, 1 << 20, topology.delay_layout).headers

    assert prepare("b")[HEADER_THEN] == "b"
    assert HEADER_THEN not in prepare(None)
    with pytest.raises(UnknownJobTypeError):
        prepare("c")
    with pytest.raises(PayloadValidationError):
        prepare(["b"])


def test_the_then_header_cannot_be_set_as_a_user_header() -> None:
    topology = load_topology_text(TOPOLOGY).topology
    request = JobRequest("a", {}, headers={HEADER_THEN: "b"})
    with pytest.raises(PayloadValidationError, match="reserved"):
        prepare_job(request, build_routes(topology), {}, 1 << 20, topology.delay_layout)


async def test_a_context_not_made_by_a_worker_cannot_hold_follow_ups() -> None:
    ctx = JobContext("id", "a", 1, {}, "q", False)
    with pytest.raises(RuntimeError, match="need a worker"):
        await ctx.publish("b", {})
