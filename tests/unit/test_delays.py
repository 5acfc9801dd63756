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
    DELIVERY_EXCHANGE,
    delay_route,
    level_count,
    level_name,
    level_ttl_ms,
)
from jobsys.topology.entities import Entities, desired_entities
from jobsys.topology.loader import load_topology_text
from jobsys.topology.routing import reachable_queues

DAY_S = 86400
LEVELS_30D = 22  # 30 days = 2,592,000 s < 2**22 s

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


# -- level arithmetic --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_delay_s", "levels"),
    [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (0.5, 1), (2.5, 2), (30 * DAY_S, LEVELS_30D)],
)
def test_level_count_is_the_number_of_bits_of_the_longest_delay(
    max_delay_s: float, levels: int
) -> None:
    assert level_count(max_delay_s) == levels


def test_thirty_days_fit_in_the_levels_for_thirty_days_and_twice_as_long_would_not() -> None:
    levels = level_count(30 * DAY_S)

    assert 2**levels - 1 >= 30 * DAY_S
    assert 2 ** (levels - 1) - 1 < 30 * DAY_S


def test_levels_are_named_with_two_digits_and_wait_a_power_of_two_seconds() -> None:
    assert level_name(0) == "jobsys.delay.00"
    assert level_name(7) == "jobsys.delay.07"
    assert level_name(21) == "jobsys.delay.21"
    assert [level_ttl_ms(level) for level in (0, 1, 2, 10, 21)] == [
        1000,
        2000,
        4000,
        1_024_000,
        2_097_152_000,
    ]


# -- routes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay_s", "bits", "exchange"),
    [
        (1, "0" * 21 + "1", "jobsys.delay.00"),
        (2, "0" * 20 + "10", "jobsys.delay.01"),
        (5, "0" * 19 + "101", "jobsys.delay.02"),
        (30, "0" * 17 + "11110", "jobsys.delay.04"),
        (3600, "0" * 10 + "111000010000", "jobsys.delay.11"),
        (30 * DAY_S, "1001111000110100000000", "jobsys.delay.21"),
        (2**22 - 1, "1" * 22, "jobsys.delay.21"),
    ],
)
def test_a_delay_is_written_in_binary_and_published_to_the_level_of_its_highest_bit(
    delay_s: float, bits: str, exchange: str
) -> None:
    route = delay_route("emails", delay_s, LEVELS_30D)

    assert route.routing_key == ".".join(bits) + ".emails"
    assert route.exchange == exchange
    assert route.delay_s == delay_s


def test_no_delay_goes_straight_to_the_delivery_exchange_with_all_bits_zero() -> None:
    route = delay_route("emails", 0, LEVELS_30D)

    assert route.exchange == DELIVERY_EXCHANGE == "jobsys.delivery"
    assert route.routing_key == ".".join("0" * LEVELS_30D) + ".emails"
    assert route.delay_s == 0


def test_a_fraction_of_a_second_rounds_up_never_down() -> None:
    assert delay_route("q", 0.2, LEVELS_30D).delay_s == 1
    assert delay_route("q", 1.2, LEVELS_30D).delay_s == 2
    assert delay_route("q", 2.0, LEVELS_30D).delay_s == 2
    # Float noise (0.1 * 3 is 0.30000000000000004) must not cost a whole extra second.
    assert delay_route("q", 0.1 * 30, LEVELS_30D).delay_s == 3


@given(st.floats(min_value=0, max_value=2**LEVELS_30D - 1, allow_nan=False))
def test_the_applied_delay_is_never_earlier_than_asked_and_less_than_a_second_later(
    delay_s: float,
) -> None:
    route = delay_route("q", delay_s, LEVELS_30D)
    bits = route.routing_key.split(".")[:LEVELS_30D]

    assert route.delay_s >= delay_s - 1e-6
    assert route.delay_s < delay_s + 1
    assert int("".join(bits), 2) == route.delay_s


def test_the_longest_delay_the_levels_can_hold_is_accepted_and_one_more_second_is_not() -> None:
    delay_route("q", 2**LEVELS_30D - 1, LEVELS_30D)

    with pytest.raises(ConfigError) as caught:
        delay_route("q", 2**LEVELS_30D, LEVELS_30D)

    assert str(caught.value) == (
        "a delay of 48d13h5m4s is longer than the topology allows (48d13h5m3s); "
        "raise delays.max_delay"
    )


def test_a_fraction_past_the_longest_delay_is_too_long_because_it_rounds_up() -> None:
    with pytest.raises(ConfigError):
        delay_route("q", 3.5, 2)


@pytest.mark.parametrize("delay_s", [-1.0, -1e-9, math.nan, math.inf, -math.inf])
def test_a_negative_or_non_finite_delay_is_a_config_error(delay_s: float) -> None:
    with pytest.raises(ConfigError, match="a delay must be zero or more seconds"):
        delay_route("q", delay_s, LEVELS_30D)


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
    for _ in range(entities.delay_levels + 1):
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
    route = delay_route("high", 5, entities.delay_levels)
    wrong_key = route.routing_key.replace("1.0.1.high", "1.0.0.high")

    assert walk(entities, route.exchange, wrong_key).waited_ms == 4000


def test_every_delay_up_to_3000_seconds_arrives_in_its_queue_after_exactly_that_wait(
    entities: Entities,
) -> None:
    levels = entities.delay_levels
    for delay_s in range(3001):
        for queue in ("high", "emails.high"):
            route = delay_route(queue, delay_s, levels)
            arrival = walk(entities, route.exchange, route.routing_key)
            assert arrival == Arrival(
                queue,
                delay_s * 1000,
                tuple(level_name(bit) for bit in reversed(range(levels)) if delay_s >> bit & 1),
            ), f"delay {delay_s}s to {queue}"


@pytest.mark.parametrize(
    "delay_s",
    [4095, 4096, 65_535, 65_536, DAY_S, DAY_S + 1, 7 * DAY_S - 1, 30 * DAY_S - 1, 30 * DAY_S],
)
def test_long_delays_up_to_thirty_days_arrive_after_exactly_that_wait(
    entities: Entities, delay_s: int
) -> None:
    for queue in ("high", "emails.high", "emails"):
        route = delay_route(queue, delay_s, entities.delay_levels)
        arrival = walk(entities, route.exchange, route.routing_key)
        assert (arrival.queue, arrival.waited_ms) == (queue, delay_s * 1000)


@given(st.integers(min_value=0, max_value=2**LEVELS_30D - 1))
def test_any_whole_second_delay_the_levels_allow_arrives_on_time(
    entities: Entities, delay_s: int
) -> None:
    route = delay_route("emails.high", delay_s, entities.delay_levels)

    arrival = walk(entities, route.exchange, route.routing_key)

    assert (arrival.queue, arrival.waited_ms) == ("emails.high", delay_s * 1000)


def test_a_queue_whose_name_ends_another_queues_name_never_gets_its_messages(
    entities: Entities,
) -> None:
    types = {spec.name: spec.type for spec in entities.exchanges}
    zeros = ".".join("0" * entities.delay_levels)

    def delivered(key: str) -> list[str]:
        return reachable_queues(DELIVERY_EXCHANGE, key, types, entities.bindings)

    assert delivered(f"{zeros}.emails.high") == ["emails.high"]
    assert delivered(f"{zeros}.high") == ["high"]
    assert delivered(f"{zeros}.emails") == ["emails"]
    # Too few or too many bit words reach nothing rather than the wrong queue.
    assert delivered("0.emails.high") == []
    assert delivered(f"{zeros}.0.high") == []


def test_quorum_delay_levels_walk_the_same_way() -> None:
    text = TOPOLOGY + "delays: {queue_type: quorum, max_delay: 60d}\n"
    entities = desired_entities(load_topology_text(text).topology)

    assert entities.delay_levels == 23
    route = delay_route("high", 60 * DAY_S, entities.delay_levels)
    assert walk(entities, route.exchange, route.routing_key).waited_ms == 60 * DAY_S * 1000
