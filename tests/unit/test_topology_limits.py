"""What the broker and AMQP can carry, refused in the file with its position (F13).

``validate`` and ``apply`` must agree: whatever the file check accepts, the wire encoder
(pamqp) can encode and the broker (RabbitMQ 3.10.8, measured) accepts. The measurements are in
``jobsys/topology/limits.py``; the broker side is checked for real in
tests/integration/test_topology_limits.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobsys.errors import TopologyLoadError
from jobsys.topology.entities import desired_entities
from jobsys.topology.limits import (
    MAX_AMQP_INT,
    MAX_MESSAGE_TTL_MS,
    check_entities,
)
from jobsys.topology.loader import load_topology_text

TOPOLOGY = """\
version: 1
exchanges:
  ex: {type: direct}
  hx: {type: headers}
queues:
  q: {type: QTYPE, QUEUE}
bindings:
  - {exchange: ex, queue: q, routing_key: k}
  - {exchange: hx, queue: q, headers: {kind: pdf}}
job_types:
  j: {exchange: ex, routing_key: k}
  h: {exchange: hx, headers: {kind: pdf}}
"""


def topology(queue: str = "durable: true", qtype: str = "classic") -> str:
    return TOPOLOGY.replace("QUEUE", queue).replace("QTYPE", qtype)


def problems_of(text: str) -> list[str]:
    with pytest.raises(TopologyLoadError) as caught:
        load_topology_text(text, "t.yaml")
    return caught.value.problems


BIGGER_THAN_AMQP = [str(2**63), str(2**64), "9" * 400]


@pytest.mark.parametrize("value", BIGGER_THAN_AMQP, ids=["2^63", "2^64", "400 digits"])
@pytest.mark.parametrize("key", ["max_length", "max_length_bytes"])
def test_a_queue_length_beyond_what_amqp_carries_is_refused_at_its_key(
    key: str, value: str
) -> None:
    assert problems_of(topology(f"{key}: {value}")) == [
        f"t.yaml:6:22: queues.q.{key}: must be at most 9223372036854775807 (2**63 - 1), the "
        "largest integer an AMQP argument carries"
    ]


def test_a_delivery_limit_of_30_digits_is_refused_at_its_key() -> None:
    text = topology("delivery_limit: " + "9" * 30, qtype="quorum")

    assert problems_of(text) == [
        "t.yaml:6:21: queues.q.delivery_limit: must be at most 9223372036854775807 (2**63 - 1), "
        "the largest integer an AMQP argument carries"
    ]


def test_the_largest_amqp_integer_itself_is_accepted() -> None:
    text = topology(f"max_length: {MAX_AMQP_INT}, max_length_bytes: {MAX_AMQP_INT}")

    queue = desired_entities(load_topology_text(text).topology).queue("q")

    assert queue.arguments["x-max-length"] == queue.arguments["x-max-length-bytes"] == 2**63 - 1


@pytest.mark.parametrize("written", ["10000000000d", "3650.0001d", "315360000001ms", "3651d"])
def test_a_message_ttl_longer_than_rabbitmq_accepts_is_refused_at_its_key(written: str) -> None:
    assert problems_of(topology(f"message_ttl: {written}")) == [
        "t.yaml:6:22: queues.q.message_ttl: must be at most 3650d (315360000000 ms), the "
        "longest x-message-ttl RabbitMQ accepts"
    ]


def test_the_longest_message_ttl_rabbitmq_accepts_is_accepted() -> None:
    text = topology("message_ttl: 3650d")

    queue = desired_entities(load_topology_text(text).topology).queue("q")

    assert queue.arguments["x-message-ttl"] == MAX_MESSAGE_TTL_MS == 315_360_000_000


def test_a_job_type_routing_key_over_255_bytes_is_refused_though_under_200_characters() -> None:
    text = topology().replace(
        "j: {exchange: ex, routing_key: k}", "j: {exchange: ex, routing_key: " + "✓" * 100 + "}"
    )

    assert problems_of(text) == [
        "t.yaml:11:21: job_types.j.routing_key: is 300 bytes in UTF-8; an AMQP routing key "
        "has at most 255"
    ]


def test_a_binding_key_over_255_bytes_is_refused_though_under_255_characters() -> None:
    text = topology().replace(
        "routing_key: k}\n  - {exchange: hx", "routing_key: " + "é" * 200 + "}\n  - {exchange: hx"
    )

    assert problems_of(text)[0] == (
        "t.yaml:8:30: bindings.0.routing_key: is 400 bytes in UTF-8; an AMQP routing key has "
        "at most 255"
    )


@pytest.mark.parametrize("where", ["binding", "job type"])
def test_a_header_name_over_128_bytes_is_refused_not_cut_short(where: str) -> None:
    name = "h" * 129
    old = "queue: q, headers: {kind: pdf}" if where == "binding" else "hx, headers: {kind: pdf}"
    new = old.replace("kind: pdf", f"kind: pdf, {name}: 1")
    problems = problems_of(topology().replace(old, new))

    assert len(problems) == 1
    assert problems[0].endswith(
        f".{name}: a header name is at most 128 bytes in AMQP (this one is 129); longer ones "
        "are cut short"
    )


@pytest.mark.parametrize("value", [str(2**63), str(-(2**63) - 1), "9" * 30])
def test_a_header_integer_beyond_what_amqp_carries_is_refused(value: str) -> None:
    text = topology().replace(
        "h: {exchange: hx, headers: {kind: pdf}}",
        f"h: {{exchange: hx, headers: {{kind: pdf, n: {value}}}}}",
    )

    problems = problems_of(text)

    assert len(problems) == 1
    assert problems[0].startswith("t.yaml:12:42: ")
    assert "job_types.h.headers.n: must be between -9223372036854775808 and " in problems[0]


def test_headers_larger_than_4_kib_encoded_are_refused() -> None:
    big = "x" * 5000
    text = topology().replace(
        "queue: q, headers: {kind: pdf}", f"queue: q, headers: {{kind: pdf, blob: {big}}}"
    )

    assert problems_of(text) == [
        "t.yaml:9:30: bindings.1.headers: headers encode to 5023 bytes; at most 4096 are "
        "allowed (a binding is declared in one AMQP frame, and every job carries its type's "
        "headers)"
    ]


# -- the entities apply would declare: a last check before touching the broker ---------------


def test_every_entity_of_a_valid_file_fits_what_the_broker_accepts() -> None:
    entities = desired_entities(load_topology_text(topology("message_ttl: 3650d")).topology)

    assert check_entities(entities) == []


def test_a_derived_queue_with_a_ttl_over_the_limit_is_caught_before_declaring() -> None:
    # A delay level whose TTL is over the broker's limit: the file check cannot see it, since
    # the delay levels are derived, but apply must not start declaring.
    entities = desired_entities(load_topology_text(topology()).topology)
    level = entities.queues[-1]
    too_long = type(level)(
        level.name, level.durable, {**level.arguments, "x-message-ttl": 2**39 * 1000}, level.role
    )
    entities.queues[-1] = too_long

    assert check_entities(entities) == [
        (
            level.name,
            f"queue {level.name}: x-message-ttl is 549755813888000 ms; RabbitMQ accepts at most "
            "315360000000 ms (3650d)",
        )
    ]


def test_export_of_entities_the_broker_would_refuse_exits_2_with_located_problems(
    tmp_path: Path,
) -> None:
    # Definitions a broker loads at boot must hold what it accepts, like apply's declares.
    file = tmp_path / "t.yaml"
    file.write_text(topology() + "delays: {max_delay: 100000000d}\n")

    result = subprocess.run(
        [str(Path(sys.executable).with_name("jobsys")), "topology", "export", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    # The delay levels are fixed (29 of them): the model refuses such a max_delay itself.
    assert f"{file}:13:1: delays: max_delay must be at most" in result.stderr


@pytest.mark.parametrize("written", ["1.797693134862316e+305", "1.0e+300", "9" * 300 + ".5"])
def test_a_message_ttl_whose_milliseconds_overflow_a_float_is_refused_not_a_crash(
    written: str,
) -> None:
    assert problems_of(topology(f"message_ttl: {written}")) == [
        "t.yaml:6:22: queues.q.message_ttl: must be at most 3650d (315360000000 ms), the "
        "longest x-message-ttl RabbitMQ accepts"
    ]
