"""What a topology asks the broker to hold: arguments, dead-letter queues, delay levels."""

from __future__ import annotations

import pytest

from jobsys.topology.entities import (
    BindingSpec,
    Entities,
    ExchangeSpec,
    QueueSpec,
    desired_entities,
)
from jobsys.topology.loader import load_topology_text

TOPOLOGY = """\
version: 1
exchanges:
  jobs: {type: topic}
  by-format: {type: headers, durable: false}
queues:
  emails:
    type: classic
    max_priority: 10
    max_length: 1000
    max_length_bytes: 1048576
    overflow: reject-publish-dlx
    message_ttl: 1.5s
  billing:
    type: quorum
    delivery_limit: 10
    max_length: 500
    overflow: reject-publish
    dead_letter_strategy: at-least-once
  scratch: {type: classic, durable: false}
bindings:
  - {exchange: jobs, queue: emails, routing_key: "email.#"}
  - {exchange: jobs, queue: billing, routing_key: "billing.*"}
  - {exchange: by-format, queue: scratch, match: any, headers: {format: pdf, pages: 3}}
"""


def entities_of(text: str = TOPOLOGY) -> Entities:
    return desired_entities(load_topology_text(text).topology)


def test_a_classic_work_queue_gets_every_argument_it_asked_for_and_its_dead_letter_target() -> None:
    assert entities_of().queue("emails") == QueueSpec(
        "emails",
        True,
        {
            "x-queue-type": "classic",
            "x-dead-letter-exchange": "jobsys.dead-letter",
            "x-dead-letter-routing-key": "emails.dead",
            "x-max-priority": 10,
            "x-max-length": 1000,
            "x-max-length-bytes": 1048576,
            "x-overflow": "reject-publish-dlx",
            "x-message-ttl": 1500,
        },
        role="work",
    )


def test_a_quorum_work_queue_gets_its_delivery_limit_and_dead_letter_strategy() -> None:
    assert entities_of().queue("billing").arguments == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "jobsys.dead-letter",
        "x-dead-letter-routing-key": "billing.dead",
        "x-max-length": 500,
        "x-overflow": "reject-publish",
        "x-delivery-limit": 10,
        "x-dead-letter-strategy": "at-least-once",
    }


def test_a_plain_queue_still_names_its_type_and_dead_letter_target_explicitly() -> None:
    scratch = entities_of().queue("scratch")

    assert scratch.durable is False
    assert scratch.arguments == {
        "x-queue-type": "classic",
        "x-dead-letter-exchange": "jobsys.dead-letter",
        "x-dead-letter-routing-key": "scratch.dead",
    }


@pytest.mark.parametrize(
    ("written", "ttl_ms"), [("250ms", 250), ("90", 90_000), ("1d", 86_400_000)]
)
def test_a_message_ttl_becomes_whole_milliseconds(written: str, ttl_ms: int) -> None:
    text = TOPOLOGY.replace("message_ttl: 1.5s", f"message_ttl: {written}")

    ttl = entities_of(text).queue("emails").arguments["x-message-ttl"]

    assert ttl == ttl_ms
    assert type(ttl) is int


def test_every_work_queue_has_one_durable_dead_letter_queue_of_its_own_type() -> None:
    entities = entities_of()
    dead = [q for q in entities.queues if q.role == "dead-letter"]

    assert dead == [
        QueueSpec("emails.dead", True, {"x-queue-type": "classic"}, role="dead-letter"),
        QueueSpec("billing.dead", True, {"x-queue-type": "quorum"}, role="dead-letter"),
        QueueSpec("scratch.dead", True, {"x-queue-type": "classic"}, role="dead-letter"),
    ]
    dead_letter_bindings = [b for b in entities.bindings if b.source == "jobsys.dead-letter"]
    assert dead_letter_bindings == [
        BindingSpec("jobsys.dead-letter", name, "queue", name)
        for name in ("emails.dead", "billing.dead", "scratch.dead")
    ]


def test_the_derived_exchanges_follow_the_users_own() -> None:
    exchanges = entities_of().exchanges

    assert exchanges[:4] == [
        ExchangeSpec("jobs", "topic"),
        ExchangeSpec("by-format", "headers", durable=False),
        ExchangeSpec("jobsys.dead-letter", "direct"),
        ExchangeSpec("jobsys.due", "topic"),
    ]
    assert exchanges[4:33] == [ExchangeSpec(f"jobsys.wait.{n:02d}", "topic") for n in range(29)]
    assert exchanges[33:] == [ExchangeSpec("jobsys.cancel", "fanout")]


def test_classic_delay_levels_carry_a_ttl_and_a_dead_letter_exchange_only() -> None:
    entities = entities_of()
    levels = [q for q in entities.queues if q.role == "delay"]

    assert len(levels) == entities.delay_levels == 29
    assert levels[0] == QueueSpec(
        "jobsys.wait.00",
        True,
        {
            "x-queue-type": "classic",
            "x-message-ttl": 1000,
            "x-dead-letter-exchange": "jobsys.due",
        },
        role="delay",
    )
    assert levels[5].arguments == {
        "x-queue-type": "classic",
        "x-message-ttl": 32_000,
        "x-dead-letter-exchange": "jobsys.wait.04",
    }


def test_quorum_delay_levels_dead_letter_at_least_once_and_refuse_publishes_when_full() -> None:
    entities = entities_of(TOPOLOGY + "delays: {queue_type: quorum}\n")

    for level in (q for q in entities.queues if q.role == "delay"):
        assert level.arguments["x-queue-type"] == "quorum"
        assert level.arguments["x-dead-letter-strategy"] == "at-least-once"
        assert level.arguments["x-overflow"] == "reject-publish"


def test_each_level_binds_its_queue_for_a_one_bit_and_hops_on_for_a_zero_bit() -> None:
    entities = entities_of()
    level_3 = [b for b in entities.bindings if b.source == "jobsys.wait.03"]

    assert level_3 == [
        BindingSpec("jobsys.wait.03", "jobsys.wait.03", "queue", "*." * 25 + "1.#"),
        BindingSpec("jobsys.wait.03", "jobsys.wait.02", "exchange", "*." * 25 + "0.#"),
    ]
    level_0 = [b for b in entities.bindings if b.source == "jobsys.wait.00"]
    assert level_0[1] == BindingSpec("jobsys.wait.00", "jobsys.due", "exchange", "*." * 28 + "0.#")


def test_each_work_queue_binds_to_the_due_exchange_by_all_bits_then_its_name() -> None:
    delivery = [b for b in entities_of().bindings if b.source == "jobsys.due"]

    assert delivery == [
        BindingSpec("jobsys.due", name, "queue", "*." * 29 + name)
        for name in ("emails", "billing", "scratch")
    ]


def test_the_users_bindings_keep_their_keys_and_headers_bindings_get_x_match() -> None:
    user = [b for b in entities_of().bindings if b.source in ("jobs", "by-format")]

    assert user == [
        BindingSpec("jobs", "emails", "queue", "email.#"),
        BindingSpec("jobs", "billing", "queue", "billing.*"),
        BindingSpec(
            "by-format", "scratch", "queue", "", {"x-match": "any", "format": "pdf", "pages": 3}
        ),
    ]


def test_a_headers_binding_without_match_defaults_to_all() -> None:
    text = TOPOLOGY.replace("match: any, ", "")

    binding = next(b for b in entities_of(text).bindings if b.source == "by-format")

    assert binding.arguments["x-match"] == "all"


def test_no_two_entities_share_a_name_within_their_kind() -> None:
    entities = entities_of()

    for names in (
        [e.name for e in entities.exchanges],
        [q.name for q in entities.queues],
    ):
        assert len(names) == len(set(names))


def test_asking_for_a_queue_the_topology_lacks_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        entities_of().queue("nope")


def test_a_binding_describes_itself_in_one_readable_line() -> None:
    assert BindingSpec("jobs", "emails", "queue", "email.#").describe() == (
        "jobs -> queue emails (key 'email.#')"
    )
    assert BindingSpec("h", "q", "queue", "", {"x-match": "all", "a": 1}).describe() == (
        "h -> queue q (headers {'x-match': 'all', 'a': 1})"
    )
