"""Who is connected to a vhost and what they consume: the connections, each with its consumer
pools, read from the management API (AMQP cannot list other clients' connections).

Two API calls per read (``/api/vhosts/{vhost}/connections`` and ``/api/consumers/{vhost}``).
Every text here came from a client (its connection name, its product) or the broker: whoever
shows it escapes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobsys.broker.management import ManagementClient


@dataclass(frozen=True)
class Pool:
    """The consumers one channel of a connection holds on one queue (a jobsys consumer pool
    is one channel with one consumer)."""

    queue: str
    channel: str
    consumers: int
    prefetch: int | None
    manual_ack: bool


@dataclass(frozen=True)
class ConnectionInfo:
    """One client connection to the vhost and its pools."""

    name: str
    connection_name: str | None
    user: str | None
    peer: str | None
    product: str | None
    version: str | None
    state: str | None
    channels: int | None
    connected_at_ms: int | None
    pools: list[Pool] = field(default_factory=list)

    @property
    def consumes(self) -> bool:
        """True when the connection holds at least one consumer (a worker, not a producer)."""
        return bool(self.pools)


async def read_connections(client: ManagementClient, vhost: str) -> list[ConnectionInfo]:
    """Every connection to ``vhost`` with its pools; workers (connections that consume) first,
    then by connection name."""
    return connections_of(await client.connections(vhost), await client.consumers(vhost))


def connections_of(
    connection_rows: Iterable[Mapping[str, Any]], consumer_rows: Iterable[Mapping[str, Any]]
) -> list[ConnectionInfo]:
    """Join the API's connection and consumer rows (pure; rows of odd shape are skipped)."""
    pools: dict[str, dict[tuple[str, str], list[Mapping[str, Any]]]] = {}
    for row in consumer_rows:
        channel = _mapping(row.get("channel_details"))
        queue = _mapping(row.get("queue"))
        connection = _str(channel.get("connection_name"))
        queue_name = _str(queue.get("name"))
        if connection is None or queue_name is None:
            continue
        key = (_str(channel.get("name")) or "?", queue_name)
        pools.setdefault(connection, {}).setdefault(key, []).append(row)
    found = []
    for row in connection_rows:
        name = _str(row.get("name"))
        if name is None:
            continue
        properties = _mapping(row.get("client_properties"))
        host, port = _str(row.get("peer_host")), _int(row.get("peer_port"))
        found.append(
            ConnectionInfo(
                name=name,
                connection_name=_str(properties.get("connection_name")),
                user=_str(row.get("user")),
                peer=f"{host}:{port}" if host is not None and port is not None else host,
                product=_str(properties.get("product")),
                version=_str(properties.get("version")),
                state=_str(row.get("state")),
                channels=_int(row.get("channels")),
                connected_at_ms=_int(row.get("connected_at")),
                pools=[
                    _pool(queue, channel, rows)
                    for (channel, queue), rows in sorted(pools.get(name, {}).items())
                ],
            )
        )
    return sorted(found, key=lambda c: (not c.consumes, c.connection_name or "", c.name))


def _pool(queue: str, channel: str, rows: list[Mapping[str, Any]]) -> Pool:
    prefetches = {_int(row.get("prefetch_count")) for row in rows}
    return Pool(
        queue=queue,
        channel=channel,
        consumers=len(rows),
        prefetch=prefetches.pop() if len(prefetches) == 1 else None,
        manual_ack=all(row.get("ack_required") is True for row in rows),
    )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
