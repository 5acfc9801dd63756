"""The routing simulation matches the way RabbitMQ matches, checked by example and by property
against an independent regex-based reference."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobsys.topology.entities import ArgValue, BindingSpec
from jobsys.topology.routing import (
    binding_matches,
    headers_match,
    reachable_queues,
    topic_matches,
)

# -- topic matching by example -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key"),
    [
        ("a.#", "a"),  # '#' matches zero words
        ("a.#", "a.b"),
        ("a.#", "a.b.c"),
        ("#", ""),  # the empty key has zero words
        ("#", "a"),
        ("#", "a.b.c"),
        ("#.c", "c"),
        ("#.c", "a.b.c"),
        ("a.#.c", "a.c"),
        ("a.#.c", "a.b.b.c"),
        ("a.*", "a.b"),
        ("*", "a"),
        ("*.*", "a.b"),
        ("a.*.#", "a.b"),
        ("#.#", ""),
        ("", ""),
        ("a.b", "a.b"),
        ("a..b", "a..b"),  # empty words are words
        ("a.*.b", "a..b"),
    ],
)
def test_a_topic_pattern_matches_the_keys_rabbitmq_routes_to_it(pattern: str, key: str) -> None:
    assert topic_matches(pattern, key)


@pytest.mark.parametrize(
    ("pattern", "key"),
    [
        ("*", ""),  # '*' needs exactly one word, and the empty key has none
        ("a.*", "a"),
        ("a.*", "a.b.c"),
        ("*.*", "a"),
        ("a.#", "ab"),
        ("a.#", "b.a"),
        ("#.c", "c.d"),
        ("a.#.c", "a.b"),
        ("a.b", "a.b.c"),
        ("a.b", "a"),
        ("", "a"),
        ("a", ""),
        ("a*", "ab"),  # wildcards are whole words only
        ("a#", "a.b"),
    ],
)
def test_a_topic_pattern_does_not_match_keys_rabbitmq_would_not_route(
    pattern: str, key: str
) -> None:
    assert not topic_matches(pattern, key)


# -- topic matching by property ----------------------------------------------------------------


def reference_topic_matches(pattern: str, key: str) -> bool:
    """RabbitMQ's topic rules by regex. Every word of the key is written with a leading dot, so
    the empty key (zero words) is the empty string and each word is ``\\.[^.]*``."""
    words = key.split(".") if key else []
    subject = "".join("." + word for word in words)
    parts = []
    for word in pattern.split(".") if pattern else []:
        if word == "#":
            parts.append(r"(?:\.[^.]*)*")
        elif word == "*":
            parts.append(r"\.[^.]*")
        else:
            parts.append(r"\." + re.escape(word))
    return re.fullmatch("".join(parts), subject) is not None


def test_the_reference_matcher_agrees_with_the_documented_examples() -> None:
    # The reference is only a cross-check if it is right on the cases RabbitMQ documents.
    assert reference_topic_matches("a.#", "a")
    assert reference_topic_matches("#", "")
    assert not reference_topic_matches("*", "")
    assert reference_topic_matches("*.orange.*", "quick.orange.rabbit")
    assert not reference_topic_matches("*.orange.*", "quick.orange.male.rabbit")
    assert reference_topic_matches("lazy.#", "lazy.orange.male.rabbit")
    assert not reference_topic_matches("*.*.rabbit", "lazy.orange.male.rabbit")


KEY_WORDS = st.sampled_from(["a", "b", "c", "a*", ""])
PATTERN_WORDS = st.sampled_from(["a", "b", "*", "#", "a*"])


def joined(words: st.SearchStrategy[str], max_size: int) -> st.SearchStrategy[str]:
    return st.lists(words, max_size=max_size).map(".".join)


@given(pattern=joined(PATTERN_WORDS, 6), key=joined(KEY_WORDS, 6))
def test_topic_matching_agrees_with_a_regex_reference_on_any_pattern_and_key(
    pattern: str, key: str
) -> None:
    assert topic_matches(pattern, key) == reference_topic_matches(pattern, key)


@given(key=joined(KEY_WORDS, 8))
def test_a_key_always_matches_itself_and_hash(key: str) -> None:
    assert topic_matches("#", key)
    if "*" not in key and "#" not in key:
        assert topic_matches(key, key)


# -- other exchange types ----------------------------------------------------------------------


def to_queue(source: str, queue: str, key: str = "", **arguments: ArgValue) -> BindingSpec:
    return BindingSpec(source, queue, "queue", key, dict(arguments))


def test_a_direct_exchange_matches_the_whole_key_exactly_and_never_by_pattern() -> None:
    assert binding_matches("direct", to_queue("x", "q", "email.send"), "email.send")
    assert not binding_matches("direct", to_queue("x", "q", "email.#"), "email.send")
    assert not binding_matches("direct", to_queue("x", "q", "email"), "email.send")


def test_a_fanout_exchange_ignores_the_key() -> None:
    assert binding_matches("fanout", to_queue("x", "q", "whatever"), "something.else")
    assert binding_matches("fanout", to_queue("x", "q"), "")


def test_an_unknown_exchange_type_is_an_error_not_a_silent_miss() -> None:
    with pytest.raises(ValueError, match="unknown exchange type 'x-consistent-hash'"):
        binding_matches("x-consistent-hash", to_queue("x", "q"), "k")


def test_headers_all_needs_every_header_present_and_equal() -> None:
    args: dict[str, ArgValue] = {"x-match": "all", "format": "pdf", "size": 3}

    assert headers_match(args, {"format": "pdf", "size": 3, "extra": "ok"})
    assert not headers_match(args, {"format": "pdf"})
    assert not headers_match(args, {"format": "pdf", "size": 4})


def test_headers_all_is_the_default_match_mode() -> None:
    assert not headers_match({"format": "pdf", "size": 3}, {"format": "pdf"})
    assert headers_match({"format": "pdf", "size": 3}, {"format": "pdf", "size": 3})


def test_headers_any_needs_one_header_present_and_equal() -> None:
    args: dict[str, ArgValue] = {"x-match": "any", "format": "pdf", "legacy": True}

    assert headers_match(args, {"format": "pdf"})
    assert headers_match(args, {"legacy": True})
    assert not headers_match(args, {"format": "csv", "legacy": False})
    assert not headers_match(args, {})


def test_headers_binding_arguments_starting_with_x_are_not_matched_against_the_message() -> None:
    args: dict[str, ArgValue] = {"x-match": "all", "x-note": "ignored", "format": "pdf"}

    assert headers_match(args, {"format": "pdf"})


def test_message_headers_starting_with_x_do_not_satisfy_any_by_themselves() -> None:
    args: dict[str, ArgValue] = {"x-match": "any", "format": "pdf"}

    assert not headers_match(args, {"x-match": "any", "x-format": "pdf"})


def test_a_headers_binding_on_a_headers_exchange_ignores_the_routing_key() -> None:
    binding = to_queue("x", "q", "ignored", **{"x-match": "all", "format": "pdf"})

    assert binding_matches("headers", binding, "other", {"format": "pdf"})
    assert not binding_matches("headers", binding, "ignored", {})
    assert not binding_matches("headers", binding, "ignored", None)


# -- following bindings ------------------------------------------------------------------------


def test_reachable_queues_follows_exchange_to_exchange_bindings() -> None:
    types = {"front": "topic", "inner": "direct", "audit": "fanout"}
    bindings = [
        BindingSpec("front", "inner", "exchange", "email.#"),
        BindingSpec("front", "audit", "exchange", "#"),
        to_queue("inner", "emails", "email.send"),
        to_queue("inner", "other", "email.other"),
        to_queue("audit", "audit-log"),
    ]

    assert reachable_queues("front", "email.send", types, bindings) == ["emails", "audit-log"]
    assert reachable_queues("front", "billing", types, bindings) == ["audit-log"]


def test_an_exchange_cycle_is_followed_once_and_terminates() -> None:
    types = {"a": "fanout", "b": "fanout"}
    bindings = [
        BindingSpec("a", "b", "exchange", ""),
        BindingSpec("b", "a", "exchange", ""),
        to_queue("b", "q"),
    ]

    assert reachable_queues("a", "", types, bindings) == ["q"]


def test_a_queue_reached_by_two_paths_is_listed_once() -> None:
    types = {"front": "topic", "side": "fanout"}
    bindings = [
        to_queue("front", "q", "a.*"),
        to_queue("front", "q", "#"),
        BindingSpec("front", "side", "exchange", "a.b"),
        to_queue("side", "q"),
        to_queue("side", "r"),
    ]

    assert reachable_queues("front", "a.b", types, bindings) == ["q", "r"]


def test_a_message_to_an_undeclared_exchange_reaches_nothing() -> None:
    assert reachable_queues("nowhere", "k", {"x": "fanout"}, [to_queue("x", "q")]) == []


def test_a_binding_to_an_undeclared_exchange_leads_nowhere() -> None:
    types = {"front": "fanout"}
    bindings = [BindingSpec("front", "ghost", "exchange", ""), to_queue("ghost", "q")]

    assert reachable_queues("front", "", types, bindings) == []


def test_headers_are_carried_across_exchange_hops() -> None:
    types = {"front": "fanout", "by-format": "headers"}
    bindings = [
        BindingSpec("front", "by-format", "exchange", ""),
        to_queue("by-format", "pdfs", **{"x-match": "all", "format": "pdf"}),
    ]

    assert reachable_queues("front", "", types, bindings, {"format": "pdf"}) == ["pdfs"]
    assert reachable_queues("front", "", types, bindings, {"format": "csv"}) == []
