"""The RabbitMQ definitions export: shape, derived entities, vhost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobsys.topology.definitions import export_definitions
from jobsys.topology.entities import desired_entities
from jobsys.topology.loader import load_topology, load_topology_text

EXAMPLE = Path(__file__).resolve().parents[2] / "topology" / "example.yaml"
TEXT = """
version: 1
exchanges:
  shop.jobs: {type: topic}
  shop.fmt: {type: headers, durable: false}
queues:
  shop.orders: {type: classic, max_priority: 5, message_ttl: 90s}
bindings:
  - {exchange: shop.jobs, queue: shop.orders, routing_key: "order.#"}
  - {exchange: shop.fmt, queue: shop.orders, match: any, headers: {format: pdf, copies: 2}}
job_types:
  place_order: {exchange: shop.jobs, routing_key: order.place}
"""


def export(vhost: str = "/") -> dict[str, Any]:
    return export_definitions(desired_entities(load_topology_text(TEXT).topology), vhost)


def test_export_has_rabbitmq_definition_sections_with_their_fields() -> None:
    definitions = export()

    assert set(definitions) == {"vhosts", "exchanges", "queues", "bindings"}
    assert definitions["vhosts"] == [{"name": "/"}]
    exchange_keys = {"name", "vhost", "type", "durable", "auto_delete", "internal", "arguments"}
    assert all(set(e) == exchange_keys for e in definitions["exchanges"])
    assert all(
        set(q) == {"name", "vhost", "durable", "auto_delete", "arguments"}
        for q in definitions["queues"]
    )
    binding_keys = {
        "source",
        "vhost",
        "destination",
        "destination_type",
        "routing_key",
        "arguments",
    }
    assert all(set(b) == binding_keys for b in definitions["bindings"])


def test_export_carries_the_files_own_entities_with_their_arguments() -> None:
    definitions = export()

    exchanges = {e["name"]: e for e in definitions["exchanges"]}
    assert exchanges["shop.jobs"]["type"] == "topic" and exchanges["shop.jobs"]["durable"] is True
    assert exchanges["shop.fmt"]["durable"] is False
    orders = next(q for q in definitions["queues"] if q["name"] == "shop.orders")
    assert orders["arguments"] == {
        "x-queue-type": "classic",
        "x-dead-letter-exchange": "jobsys.dead-letter",
        "x-dead-letter-routing-key": "shop.orders.dead",
        "x-max-priority": 5,
        "x-message-ttl": 90000,
    }
    headers = next(b for b in definitions["bindings"] if b["source"] == "shop.fmt")
    assert headers["arguments"] == {"x-match": "any", "format": "pdf", "copies": 2}
    assert headers["destination_type"] == "queue" and headers["routing_key"] == ""


def test_export_includes_dead_letter_queues_delay_levels_and_their_hops() -> None:
    definitions = export()

    queues = {q["name"] for q in definitions["queues"]}
    assert {"shop.orders.dead", "jobsys.wait.00"} <= queues
    exchange_names = {e["name"] for e in definitions["exchanges"]}
    assert {"jobsys.dead-letter", "jobsys.due", "jobsys.wait.00"} <= exchange_names
    hops = [b for b in definitions["bindings"] if b["destination_type"] == "exchange"]
    assert hops and all(b["destination"].startswith("jobsys.") for b in hops)


def test_export_puts_every_entity_in_the_requested_vhost() -> None:
    definitions = export("shop")

    assert definitions["vhosts"] == [{"name": "shop"}]
    entities = definitions["exchanges"] + definitions["queues"] + definitions["bindings"]
    assert {item["vhost"] for item in entities} == {"shop"}


def test_export_of_the_example_topology_is_json_serialisable_and_complete() -> None:
    entities = desired_entities(load_topology(EXAMPLE).topology)

    decoded = json.loads(json.dumps(export_definitions(entities)))

    assert len(decoded["exchanges"]) == len(entities.exchanges)
    assert len(decoded["queues"]) == len(entities.queues)
    assert len(decoded["bindings"]) == len(entities.bindings)
