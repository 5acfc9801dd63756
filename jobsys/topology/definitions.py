"""A topology as RabbitMQ definitions JSON, for operators who load definitions at boot
(``load_definitions`` in rabbitmq.conf, or ``POST /api/definitions``). Pure, no I/O.

The definitions hold exactly what ``apply`` declares: the file's entities plus the derived
dead-letter queues, delay levels and their bindings.
"""

from __future__ import annotations

from typing import Any

from jobsys.topology.entities import Entities


def export_definitions(entities: Entities, vhost: str = "/") -> dict[str, Any]:
    """RabbitMQ definitions for ``entities`` in virtual host ``vhost``."""
    return {
        "vhosts": [{"name": vhost}],
        "exchanges": [
            {
                "name": exchange.name,
                "vhost": vhost,
                "type": exchange.type,
                "durable": exchange.durable,
                "auto_delete": False,
                "internal": False,
                "arguments": dict(exchange.arguments),
            }
            for exchange in entities.exchanges
        ],
        "queues": [
            {
                "name": queue.name,
                "vhost": vhost,
                "durable": queue.durable,
                "auto_delete": False,
                "arguments": dict(queue.arguments),
            }
            for queue in entities.queues
        ],
        "bindings": [
            {
                "source": binding.source,
                "vhost": vhost,
                "destination": binding.destination,
                "destination_type": binding.destination_type,
                "routing_key": binding.routing_key,
                "arguments": dict(binding.arguments),
            }
            for binding in entities.bindings
        ],
    }
