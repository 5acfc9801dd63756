"""Which queues a message reaches, matched the way RabbitMQ matches it (pure, no I/O).

``route_job_type`` applies them to a topology: the queues a job type reaches.

Topic rules as the broker applies them: words are separated by ``.``; ``*`` matches exactly
one word; ``#`` matches zero or more words, so ``a.#`` matches ``a`` and ``#`` matches the
empty key. Headers exchanges: ``x-match: all`` (default) needs every non-``x-`` header to be
present and equal; ``any`` needs one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from jobsys.topology.entities import ArgValue, BindingSpec, user_bindings
from jobsys.topology.model import JobType, Topology


def topic_matches(pattern: str, routing_key: str) -> bool:
    """True when topic binding ``pattern`` matches ``routing_key``."""
    return _match_words(_words(pattern), _words(routing_key))


def _words(key: str) -> tuple[str, ...]:
    # The broker splits an empty key into zero words: '#' matches it, '*' does not.
    return tuple(key.split(".")) if key else ()


def _match_words(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    # Glob matching with '#' as "any run of words" and '*' as "one word", in one pass with
    # backtracking to the last '#': linear in practice, no recursion, nothing to cache.
    p = w = 0
    last_hash, resume_at = -1, 0
    while w < len(words):
        if p < len(pattern) and pattern[p] == "#":
            last_hash, resume_at = p, w
            p += 1
        elif p < len(pattern) and pattern[p] in ("*", words[w]):
            p += 1
            w += 1
        elif last_hash >= 0:
            # let the last '#' swallow one more word and try again from there
            resume_at += 1
            p, w = last_hash + 1, resume_at
        else:
            return False
    while p < len(pattern) and pattern[p] == "#":
        p += 1
    return p == len(pattern)


def headers_match(binding_args: Mapping[str, ArgValue], headers: Mapping[str, object]) -> bool:
    """True when a headers-exchange binding with ``binding_args`` matches ``headers``."""
    mode = binding_args.get("x-match", "all")
    wanted = {k: v for k, v in binding_args.items() if not k.startswith("x-")}
    if not wanted:
        return mode in ("all", "all-with-x")
    hits = [k in headers and headers[k] == v for k, v in wanted.items()]
    return all(hits) if mode in ("all", "all-with-x") else any(hits)


def binding_matches(
    exchange_type: str,
    binding: BindingSpec,
    routing_key: str,
    headers: Mapping[str, object] | None = None,
) -> bool:
    """True when ``binding`` on an exchange of ``exchange_type`` takes the message."""
    if exchange_type == "fanout":
        return True
    if exchange_type == "direct":
        return binding.routing_key == routing_key
    if exchange_type == "topic":
        return topic_matches(binding.routing_key, routing_key)
    if exchange_type == "headers":
        return headers_match(binding.arguments, headers or {})
    raise ValueError(f"unknown exchange type {exchange_type!r}")


def reachable_queues(
    exchange: str,
    routing_key: str,
    exchange_types: Mapping[str, str],
    bindings: Iterable[BindingSpec],
    headers: Mapping[str, object] | None = None,
) -> list[str]:
    """The queues a message published to ``exchange`` with ``routing_key`` ends up in,
    following exchange-to-exchange bindings; each queue once, in binding order."""
    by_source: dict[str, list[BindingSpec]] = {}
    for binding in bindings:
        by_source.setdefault(binding.source, []).append(binding)
    queues: list[str] = []
    seen_exchanges: set[str] = set()
    pending = [exchange]
    while pending:
        current = pending.pop(0)
        if current in seen_exchanges or current not in exchange_types:
            continue
        seen_exchanges.add(current)
        for binding in by_source.get(current, []):
            if not binding_matches(exchange_types[current], binding, routing_key, headers):
                continue
            if binding.destination_type == "exchange":
                pending.append(binding.destination)
            elif binding.destination not in queues:
                queues.append(binding.destination)
    return queues


def route_job_type(topology: Topology, job_type: JobType) -> list[str]:
    """The work queues a job of ``job_type`` reaches, as RabbitMQ would route it."""
    types = {name: ex.type for name, ex in topology.exchanges.items()}
    return reachable_queues(
        job_type.exchange,
        job_type.routing_key,
        types,
        user_bindings(topology),
        job_type.headers or {},
    )
