"""A small client for RabbitMQ's management HTTP API: read one vhost's topology and queue
counts, load definitions.

Standard library only (``urllib`` in a worker thread), so the management plugin stays
optional: ``declare`` uses it when it answers and falls back to probing over AMQP when not.
The password never appears in a message; URLs are shown masked.

The API is used only once it is shown to answer for the broker the AMQP connection reached
(``confirm_same_broker``): by default it is looked for on port 15672 of the AMQP host, which for
a node on another AMQP port (or behind a proxy) can be another broker altogether, whose state
would then be read as this one's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlunsplit

from jobsys.settings import Settings, mask_url, parse_url
from jobsys.topology.plan import VhostSnapshot

#: Port of the management plugin's HTTP listener (15671 with TLS).
MANAGEMENT_PORT = 15672
MANAGEMENT_TLS_PORT = 15671
_TIMEOUT_S = 10.0


class ManagementUnavailable(Exception):
    """Raised when the management API cannot answer (not enabled, unreachable, refused)."""


@dataclass(frozen=True)
class ManagementEndpoint:
    """Where the management API listens and how to log in; ``repr`` hides the password."""

    base_url: str
    username: str
    password: str

    def __repr__(self) -> str:
        return f"ManagementEndpoint(base_url={self.base_url!r}, username={self.username!r})"

    @property
    def masked(self) -> str:
        """The base URL as it may be shown (no password)."""
        return mask_url(self.base_url)


def management_endpoint(settings: Settings) -> ManagementEndpoint:
    """The management API for ``settings``: ``settings.management_url`` when set, else the
    AMQP host on port 15672 (15671 for amqps) with the AMQP credentials.

    Both URLs are read with ``parse_url``, which refuses (``ConfigError``, the URL masked) user
    info that a parser would misread; a percent-encoded user name or password is decoded here.
    """
    # With several broker URLs, the first node's API: any node's API answers for the whole
    # cluster (set JOBSYS_MANAGEMENT_URL to a load balancer to survive that node's loss).
    amqp = parse_url(settings.urls[0], "broker URL", ("amqp", "amqps"))
    username = unquote(amqp.username) if amqp.username is not None else "guest"
    password = unquote(amqp.password) if amqp.password is not None else "guest"
    if settings.management_url:
        parts = parse_url(settings.management_url, "management URL", ("http", "https"))
        if parts.username is not None:
            username = unquote(parts.username)
            password = unquote(parts.password or "")
        netloc = _host(parts.hostname)
        if parts.port is not None:
            netloc += f":{parts.port}"
        base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    else:
        tls = amqp.scheme == "amqps"
        port = MANAGEMENT_TLS_PORT if tls else MANAGEMENT_PORT
        base = f"{'https' if tls else 'http'}://{_host(amqp.hostname)}:{port}"
    return ManagementEndpoint(base_url=base, username=username, password=password)


def _host(hostname: str | None) -> str:
    host = hostname or "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class ManagementClient:
    """Reads and writes one broker's topology over the management API."""

    def __init__(self, endpoint: ManagementEndpoint) -> None:
        self.endpoint = endpoint

    async def overview(self) -> dict[str, Any]:
        """``GET /api/overview``: among others the ``cluster_name`` and the answering ``node``."""
        data = await asyncio.to_thread(self._request, "GET", "/api/overview", None)
        if not isinstance(data, dict):
            raise ManagementUnavailable(
                f"unexpected answer from the management API at {self.endpoint.masked}"
            )
        return data

    async def confirm_same_broker(self, server_properties: Mapping[str, Any]) -> None:
        """Raise ``ManagementUnavailable`` unless this API answers for the cluster whose
        ``server_properties`` an AMQP connection received (both name their cluster)."""
        problem = other_broker(server_properties, await self.overview(), self.endpoint.masked)
        if problem is not None:
            raise ManagementUnavailable(problem)

    async def running_nodes(self) -> int:
        """``GET /api/nodes``: how many cluster members run now."""
        rows = await self._get_list("/api/nodes")
        return sum(1 for row in rows if row.get("running") is True)

    async def snapshot(self, vhost: str) -> VhostSnapshot:
        """Exchanges, queues and bindings of ``vhost`` (``ManagementUnavailable`` if the API
        cannot answer)."""
        return VhostSnapshot(
            exchanges=await self.exchanges(vhost),
            queues=await self.queues(vhost),
            bindings=await self.bindings(vhost),
        )

    async def queues(self, vhost: str) -> list[dict[str, Any]]:
        """The queues of ``vhost`` (name, durable, auto_delete, exclusive, arguments, type)."""
        columns = "name,durable,auto_delete,exclusive,arguments,type"
        return await self._get_list(f"/api/queues/{_q(vhost)}?columns={columns}")

    async def exchanges(self, vhost: str) -> list[dict[str, Any]]:
        """The exchanges of ``vhost`` (name, type, durable, auto_delete, internal, arguments)."""
        columns = "name,type,durable,auto_delete,internal,arguments"
        return await self._get_list(f"/api/exchanges/{_q(vhost)}?columns={columns}")

    async def bindings(self, vhost: str) -> list[dict[str, Any]]:
        """The bindings of ``vhost``, including the default exchange's implicit ones."""
        return await self._get_list(f"/api/bindings/{_q(vhost)}")

    async def queue_counts(self, vhost: str) -> list[dict[str, Any]]:
        """Every queue of ``vhost`` with its depth, consumers and message rates, as the API
        gives them (raw rows; ``jobsys.ops.status`` reads them)."""
        columns = (
            "name,messages,messages_ready,messages_unacknowledged,consumers,message_stats,"
            "head_message_timestamp,state"
        )
        return await self._get_list(f"/api/queues/{_q(vhost)}?columns={columns}")

    async def connections(self, vhost: str) -> list[dict[str, Any]]:
        """The client connections to ``vhost`` (name, user, peer, client properties, state,
        channels, when connected), as the API gives them."""
        columns = "name,user,peer_host,peer_port,client_properties,connected_at,state,channels"
        return await self._get_list(f"/api/vhosts/{_q(vhost)}/connections?columns={columns}")

    async def consumers(self, vhost: str) -> list[dict[str, Any]]:
        """The consumers on ``vhost``'s queues, each with its queue, channel, connection and
        prefetch, as the API gives them."""
        return await self._get_list(f"/api/consumers/{_q(vhost)}")

    async def load_definitions(self, vhost: str, definitions: dict[str, Any]) -> None:
        """Load RabbitMQ definitions into ``vhost`` (``POST /api/definitions/{vhost}``)."""
        await asyncio.to_thread(self._request, "POST", f"/api/definitions/{_q(vhost)}", definitions)

    async def create_vhost(self, vhost: str, user: str) -> None:
        """Create ``vhost`` and give ``user`` every permission on it (a test's private vhost)."""
        await asyncio.to_thread(self._request, "PUT", f"/api/vhosts/{_q(vhost)}", None)
        permissions = {"configure": ".*", "write": ".*", "read": ".*"}
        path = f"/api/permissions/{_q(vhost)}/{quote(user, safe='')}"
        await asyncio.to_thread(self._request, "PUT", path, permissions)

    async def delete_vhost(self, vhost: str) -> None:
        """Delete ``vhost`` and everything in it."""
        await asyncio.to_thread(self._request, "DELETE", f"/api/vhosts/{_q(vhost)}", None)

    async def _get_list(self, path: str) -> list[dict[str, Any]]:
        data = await asyncio.to_thread(self._request, "GET", path, None)
        if not isinstance(data, list):
            raise ManagementUnavailable(
                f"unexpected answer from the management API at {self.endpoint.masked}{path}"
            )
        return [item for item in data if isinstance(item, dict)]

    def _request(self, method: str, path: str, body: object | None) -> Any:
        token = base64.b64encode(
            f"{self.endpoint.username}:{self.endpoint.password}".encode()
        ).decode()
        request = urllib.request.Request(
            self.endpoint.base_url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"authorization": f"Basic {token}", "content-type": "application/json"},
        )
        where = self.endpoint.masked
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            reason = "refused the login" if exc.code in (401, 403) else f"answered {exc.code}"
            raise ManagementUnavailable(f"the management API at {where} {reason}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            cause = getattr(exc, "reason", exc)
            raise ManagementUnavailable(
                f"the management API at {where} is unreachable ({cause})"
            ) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ManagementUnavailable(
                f"the management API at {where} did not answer JSON"
            ) from None


def other_broker(
    server_properties: Mapping[str, Any], overview: Mapping[str, Any], where: str
) -> str | None:
    """Why the management API at ``where`` (its ``/api/overview``) cannot be taken for the broker
    that sent ``server_properties`` over AMQP; None when both name the same cluster."""
    amqp = _text(server_properties.get("cluster_name"))
    api = _text(overview.get("cluster_name"))
    if not amqp:
        return (
            f"the broker did not name its cluster over AMQP, so the management API at {where} "
            "cannot be shown to be the same broker"
        )
    if not api:
        return f"the management API at {where} did not name its cluster"
    if api != amqp:
        node = _text(overview.get("node")) or "?"
        return (
            f"the management API at {where} answers for cluster {api!r} (node {node!r}), but "
            f"the AMQP connection reached cluster {amqp!r}: another broker"
        )
    return None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _q(vhost: str) -> str:
    return quote(vhost, safe="")
