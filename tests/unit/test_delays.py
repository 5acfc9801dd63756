"""The delay levels: the route for a delay, and a walk of messages through the entities the
topology declares, as the broker would move them (routing, queue TTL, dead-lettering)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobsys.errors import ConfigError
from jobsys.topology.delays import (
    LEVELS,
    MAX_DELAY_S,
    DelayLayout,
    level_ttl_ms,
)
from jobsys.topology.entities import Entities, desired_entities
from jobsys.topology.loader import load_topology_text
from jobsys.topology.routing import reachable_queues

DAY_S = 86400
LAYOUT = DelayLayout()

TOPOLOGY = """\
version: 1
exchanges:
  jobs: {type: direct}
queues:
  high: {type: classic}
  emails.high: {type: classic}
  emails: {type: quorum}
bindings:
  - {exchange: jobs, queue: high, routing_key: high}
  - {exchange: jobs, queue: emails.high, routing_key: emails.high}
  - {exchange: jobs, queue: emails, routing_key: emails}
"""


@pytest.fixture(scope="module")
def entities() -> Entities:
    return desired_entities(load_topology_text(TOPOLOGY).topology)


# -- the layout ---------------------------------------------------------------------------------


def test_the_layout_has_29_levels_whatever_the_topologys_max_delay() -> None:
    # Binding keys depend on the level count: two counts on the same exchanges route one
    # message both ways (a duplicate, delivered early). So the count never changes.
    layouts = [
        desired_entities(load_topology_text(TOPOLOGY + f"delays: {{max_delay: {m}}}\n").topology)
        for m in ("30d", "60d", "1000d", f"{int(MAX_DELAY_S)}s")
    ]
    delay_parts = [
        (
            [e for e in entities.exchanges if ".wait." in e.name or e.name.endswith(".due")],
            [q for q in entities.queues if q.role == "delay"],
            [b for b in entities.bindings if ".wait." in b.source or b.source.endswith(".due")],
        )
        for entities in layouts
    ]
    assert all(part == delay_parts[0] for part in delay_parts)
    assert len(delay_parts[0][1]) == LEVELS == 29


def test_the_longest_level_waits_the_longest_ttl_rabbitmq_accepts() -> None:
    # Measured on 3.10.8: 268435456000 ms (2**28 s) accepted, 2**29 s refused.
    assert level_ttl_ms(LEVELS - 1) == 268_435_456_000
    assert MAX_DELAY_S == 2**29 - 1


def test_levels_are_named_under_the_namespace_with_two_digits() -> None:
    assert LAYOUT.level_name(0) == "jobsys.wait.00"
    assert LAYOUT.level_name(28) == "jobsys.wait.28"
    assert LAYOUT.due_exchange == "jobsys.due"
    billing = DelayLayout("billing")
    assert (billing.level_name(7), billing.due_exchange) == ("billing.wait.07", "billing.due")
    assert [level_ttl_ms(level) for level in (0, 1, 2, 10, 21)] == [
        1000,
        2000,
        4000,
        1_024_000,
        2_097_152_000,
    ]


def test_a_topology_in_a_namespace_derives_every_name_in_it() -> None:
    text = TOPOLOGY + "namespace: billing\n"
    entities = desired_entities(load_topology_text(text).topology)
    derived = {e.name for e in entities.exchanges} - {"jobs"}
    assert all(name.startswith("billing.") for name in derived)
    assert {q.arguments["x-dead-letter-exchange"] for q in entities.queues if q.role == "work"} == {
        "billing.dead-letter"
    }


# -- routes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay_s", "bits", "exchange"),
    [
        (1, "0" * 28 + "1", "jobsys.wait.00"),
        (2, "0" * 27 + "10", "jobsys.wait.01"),
        (5, "0" * 26 + "101", "jobsys.wait.02"),
        (30, "0" * 24 + "11110", "jobsys.wait.04"),
        (3600, "0" * 17 + "111000010000", "jobsys.wait.11"),
        (30 * DAY_S, "0" * 7 + "1001111000110100000000", "jobsys.wait.21"),
        (2**29 - 1, "1" * 29, "jobsys.wait.28"),
    ],
)
def test_a_delay_is_written_in_binary_and_published_to_the_level_of_its_highest_bit(
    delay_s: float, bits: str, exchange: str
) -> None:
    route = LAYOUT.route("emails", delay_s)

    assert route.routing_key == ".".join(bits) + ".emails"
    assert route.exchange == exchange
    assert route.delay_s == delay_s


def test_no_delay_goes_straight_to_the_due_exchange_with_all_bits_zero() -> None:
    route = LAYOUT.route("emails", 0)

    assert route.exchange == LAYOUT.due_exchange == "jobsys.due"
    assert route.routing_key == ".".join("0" * LEVELS) + ".emails"
    assert route.delay_s == 0


def test_a_fraction_of_a_second_rounds_up_never_down() -> None:
    assert LAYOUT.route("q", 0.2).delay_s == 1
    assert LAYOUT.route("q", 1.2).delay_s == 2
    assert LAYOUT.route("q", 2.0).delay_s == 2
    # Float noise (0.1 * 3 is 0.30000000000000004) must not cost a whole extra second.
    assert LAYOUT.route("q", 0.1 * 30).delay_s == 3


@given(st.floats(min_value=0, max_value=MAX_DELAY_S, allow_nan=False))
def test_the_applied_delay_is_never_earlier_than_asked_and_less_than_a_second_later(
    delay_s: float,
) -> None:
    route = LAYOUT.route("q", delay_s)
    bits = route.routing_key.split(".")[:LEVELS]

    assert route.delay_s >= delay_s - 1e-6
    assert route.delay_s < delay_s + 1
    assert int("".join(bits), 2) == route.delay_s


def test_the_longest_delay_the_levels_can_hold_is_accepted_and_one_more_second_is_not() -> None:
    LAYOUT.route("q", MAX_DELAY_S)

    with pytest.raises(ConfigError) as caught:
        LAYOUT.route("q", MAX_DELAY_S + 1)

    assert str(caught.value).startswith("a delay of ")
    assert "is longer than the delay levels allow" in str(caught.value)


@pytest.mark.parametrize("delay_s", [-1.0, -1e-9, math.nan, math.inf, -math.inf])
def test_a_negative_or_non_finite_delay_is_a_config_error(delay_s: float) -> None:
    with pytest.raises(ConfigError, match="a delay must be zero or more seconds"):
        LAYOUT.route("q", delay_s)


# -- walking messages through the declared entities --------------------------------------------


@dataclass(frozen=True)
class Arrival:
    queue: str
    waited_ms: int
    levels_visited: tuple[str, ...]


def walk(entities: Entities, exchange: str, routing_key: str) -> Arrival:
    """Move a message the way the broker does: route it; in a delay level queue it waits the
    queue's TTL and is dead-lettered to the queue's dead-letter exchange with the same key; in
    a work queue it has arrived. Every step must reach exactly one queue."""
    types = {spec.name: spec.type for spec in entities.exchanges}
    queues = {spec.name: spec for spec in entities.queues}
    waited_ms = 0
    visited: list[str] = []
    for _ in range(LEVELS + 1):
        reached = reachable_queues(exchange, routing_key, types, entities.bindings)
        assert len(reached) == 1, f"{routing_key!r} at {exchange} reached {reached}"
        queue = queues[reached[0]]
        if queue.role != "delay":
            return Arrival(queue.name, waited_ms, tuple(visited))
        # No dead-letter routing key: the broker keeps the message's own key.
        assert "x-dead-letter-routing-key" not in queue.arguments
        ttl = queue.arguments["x-message-ttl"]
        next_exchange = queue.arguments["x-dead-letter-exchange"]
        assert isinstance(ttl, int)
        assert isinstance(next_exchange, str)
        waited_ms += ttl
        visited.append(queue.name)
        exchange = next_exchange
    raise AssertionError(f"{routing_key!r} was still in the delay levels after every level")


def test_the_walk_sees_a_wrong_ttl(entities: Entities) -> None:
    # Guards the walk: a route that skips a bit must show up as a different wait.
    route = LAYOUT.route("high", 5)
    wrong_key = route.routing_key.replace("1.0.1.high", "1.0.0.high")

    assert walk(entities, route.exchange, wrong_key).waited_ms == 4000


def test_every_delay_up_to_3000_seconds_arrives_in_its_queue_after_exactly_that_wait(
    entities: Entities,
) -> None:
    for delay_s in range(3001):
        for queue in ("high", "emails.high"):
            route = LAYOUT.route(queue, delay_s)
            arrival = walk(entities, route.exchange, route.routing_key)
            assert arrival == Arrival(
                queue,
                delay_s * 1000,
                tuple(
                    LAYOUT.level_name(bit) for bit in reversed(range(LEVELS)) if delay_s >> bit & 1
                ),
            ), f"delay {delay_s}s to {queue}"


@pytest.mark.parametrize(
    "delay_s",
    [4095, 4096, 65_535, 65_536, DAY_S, DAY_S + 1, 7 * DAY_S - 1, 30 * DAY_S - 1, 30 * DAY_S],
)
def test_long_delays_up_to_thirty_days_arrive_after_exactly_that_wait(
    entities: Entities, delay_s: int
) -> None:
    for queue in ("high", "emails.high", "emails"):
        route = LAYOUT.route(queue, delay_s)
        arrival = walk(entities, route.exchange, route.routing_key)
        assert (arrival.queue, arrival.waited_ms) == (queue, delay_s * 1000)


@given(st.integers(min_value=0, max_value=int(MAX_DELAY_S)))
def test_any_whole_second_delay_the_levels_allow_arrives_on_time(
    entities: Entities, delay_s: int
) -> None:
    route = LAYOUT.route("emails.high", delay_s)

    arrival = walk(entities, route.exchange, route.routing_key)

    assert (arrival.queue, arrival.waited_ms) == ("emails.high", delay_s * 1000)


def test_a_queue_whose_name_ends_another_queues_name_never_gets_its_messages(
    entities: Entities,
) -> None:
    types = {spec.name: spec.type for spec in entities.exchanges}
    zeros = ".".join("0" * LEVELS)

    def delivered(key: str) -> list[str]:
        return reachable_queues(LAYOUT.due_exchange, key, types, entities.bindings)

    assert delivered(f"{zeros}.emails.high") == ["emails.high"]
    assert delivered(f"{zeros}.high") == ["high"]
    assert delivered(f"{zeros}.emails") == ["emails"]
    # Too few or too many bit words reach nothing rather than the wrong queue.
    assert delivered("0.emails.high") == []
    assert delivered(f"{zeros}.0.high") == []


def test_quorum_delay_levels_walk_the_same_way() -> None:
    text = TOPOLOGY + "delays: {queue_type: quorum, max_delay: 60d}\n"
    entities = desired_entities(load_topology_text(text).topology)

    assert entities.delay_levels == LEVELS
    route = LAYOUT.route("high", 60 * DAY_S)
    assert walk(entities, route.exchange, route.routing_key).waited_ms == 60 * DAY_S * 1000
