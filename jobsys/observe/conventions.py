"""Span attributes that are the same for every job of a type on one route, and span names:
built once, as RabbitMQ's messaging semantic conventions name them, and copied per span.

A worker sees a handful of keys; the bound only guards against a producer inventing job types
without end.
"""

from __future__ import annotations

from typing import Any

_BASE_LIMIT = 1024
_publish_bases: dict[tuple[str, str, str, str], dict[str, Any]] = {}
_process_bases: dict[tuple[str, str, str, str], dict[str, Any]] = {}
_span_names: dict[tuple[str, str], str] = {}


def _remember(store: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(store) >= _BASE_LIMIT:
        store.clear()
    store[key] = value
    return value


def publish_base(job_type: str, exchange: str, routing_key: str, kind: str) -> dict[str, Any]:
    key = (job_type, exchange, routing_key, kind)
    base = _publish_bases.get(key)
    if base is None:
        base = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": exchange,
            "jobsys.job.type": job_type,
            "jobsys.publish.kind": kind,
        }
        if routing_key:
            base["messaging.rabbitmq.destination.routing_key"] = routing_key
        _remember(_publish_bases, key, base)
    return base


def process_base(job_type: str, queue: str, exchange: str, routing_key: str) -> dict[str, Any]:
    key = (job_type, queue, exchange, routing_key)
    base = _process_bases.get(key)
    if base is None:
        base = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": exchange,
            "messaging.destination.subscription.name": queue,
            "jobsys.job.type": job_type,
        }
        if routing_key:
            base["messaging.rabbitmq.destination.routing_key"] = routing_key
        _remember(_process_bases, key, base)
    return base


def span_name(operation: str, destination: str) -> str:
    key = (operation, destination)
    name = _span_names.get(key)
    if name is None:
        name = _remember(_span_names, key, f"{operation} {destination}")
    return name
