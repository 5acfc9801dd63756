"""Plans without a broker: the comparison with a management API listing, and the reading of the
broker's PRECONDITION_FAILED replies (captured from RabbitMQ 3.10.8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobsys.topology.entities import BindingSpec, Entities, ExchangeSpec, QueueSpec
from jobsys.topology.plan import Inequivalent, Plan, VhostSnapshot, compare, parse_inequivalent

CAPTURED = [
    line
    for line in (Path(__file__).parent / "fixtures" / "precondition_failed_3.10.8.txt")
    .read_text(encoding="utf-8")
    .splitlines()
    if line and not line.startswith("#")
]
#: What the probe sent for each captured reply: the types of the values it declared.
SENT = {"x-message-ttl": 2000, "x-queue-type": "quorum", "durable": False, "type": "direct"}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (CAPTURED[0], Inequivalent("x-message-ttl", 1000)),
        (CAPTURED[1], Inequivalent("x-queue-type", "classic")),
        (CAPTURED[2], Inequivalent("durable", True)),
        (CAPTURED[3], Inequivalent("x-max-priority", 5)),
        (CAPTURED[4], Inequivalent("x-dead-letter-exchange", "dlx")),
        (CAPTURED[5], Inequivalent("x-max-length", None)),
        (CAPTURED[6], Inequivalent("type", "topic")),
        (CAPTURED[7], Inequivalent("durable", True)),
    ],
)
def test_each_captured_refusal_is_read_as_the_argument_and_its_current_value(
    line: str, expected: Inequivalent
) -> None:
    assert parse_inequivalent(line, dict(SENT)) == expected


def test_a_refusal_in_quotes_as_aiormq_sometimes_carries_it_is_read_too() -> None:
    assert parse_inequivalent(f'"{CAPTURED[0]}"', dict(SENT)) == Inequivalent("x-message-ttl", 1000)


@pytest.mark.parametrize(
    "text",
    [
        "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/': "
        "{value_too_large,1000000000000000}",
        "NOT_FOUND - no queue 'q' in vhost '/'",
        "",
    ],
)
def test_other_refusals_are_not_mistaken_for_a_difference(text: str) -> None:
    assert parse_inequivalent(text, dict(SENT)) is None


def _entities() -> Entities:
    return Entities(
        exchanges=[ExchangeSpec("jobs", "direct")],
        queues=[
            QueueSpec("work", True, {"x-queue-type": "classic", "x-message-ttl": 1000}, "work")
        ],
        bindings=[BindingSpec("jobs", "work", "queue", "work")],
        delay_levels=1,
    )


def _snapshot(ttl: object = 1000, extra_queue: bool = False) -> VhostSnapshot:
    queues = [
        {
            "name": "work",
            "durable": True,
            "auto_delete": False,
            "exclusive": False,
            "type": "classic",
            "arguments": {"x-queue-type": "classic", "x-message-ttl": ttl},
        }
    ]
    if extra_queue:
        queues.append({"name": "old", "durable": True, "arguments": {}, "type": "classic"})
        queues.append({"name": "amq.gen-1", "exclusive": True, "arguments": {}})
    return VhostSnapshot(
        exchanges=[
            {"name": "jobs", "type": "direct", "durable": True, "auto_delete": False},
            {"name": "amq.direct", "type": "direct", "durable": True},
        ],
        queues=queues,
        bindings=[
            {
                "source": "",
                "destination": "work",
                "destination_type": "queue",
                "routing_key": "work",
            },
            {
                "source": "jobs",
                "destination": "work",
                "destination_type": "queue",
                "routing_key": "work",
            },
        ],
    )


def test_a_broker_that_holds_everything_matches_and_shows_no_extras() -> None:
    plan = Plan(compare(_entities(), _snapshot()), "management", extras_checked=True)

    assert plan.counts() == {"create": 0, "conflict": 0, "ensure": 0, "match": 3, "extra": 0}
    assert plan.changes_nothing


def test_an_argument_of_another_value_or_type_is_a_conflict() -> None:
    # The broker keeps the type a client sent: "1000" is not 1000.
    for other in (2000, "1000"):
        plan = Plan(compare(_entities(), _snapshot(ttl=other)), "management", extras_checked=True)
        [conflict] = plan.of("conflict")
        assert conflict.describe().startswith("~ queue work: x-message-ttl is ")
        assert plan.has_conflicts


def test_what_the_broker_lacks_is_created_and_what_the_file_lacks_is_extra() -> None:
    empty = VhostSnapshot(exchanges=[], queues=[], bindings=[])
    assert [i.action for i in compare(_entities(), empty)] == ["create", "create", "create"]

    extras = [
        i.name for i in compare(_entities(), _snapshot(extra_queue=True)) if i.action == "extra"
    ]
    assert extras == ["old"]  # amq.* and exclusive queues belong to running clients
