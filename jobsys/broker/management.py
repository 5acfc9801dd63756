"""A small client for RabbitMQ's management HTTP API: read one vhost's topology, load
definitions.

Standard library only (``urllib`` in a worker thread), so the management plugin stays
optional: ``declare`` uses it when it answers and falls back to probing over AMQP when not.
The password never appears in a message; URLs are shown masked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from jobsys.settings import Settings, mask_url
from jobsys.topology.entities import ArgValue, BindingSpec

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
    AMQP host on port 15672 (15671 for amqps) with the AMQP credentials."""
    amqp = urlsplit(settings.url)
    username = unquote(amqp.username) if amqp.username is not None else "guest"
    password = unquote(amqp.password) if amqp.password is not None else "guest"
    if settings.management_url:
        parts = urlsplit(settings.management_url)
        if parts.username is not None:
            username = unquote(parts.username)
            password = unquote(parts.password or "")
        host = parts.hostname or "127.0.0.1"
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        base = urlunsplit((parts.scheme or "http", netloc, parts.path.rstrip("/"), "", ""))
    else:
        tls = amqp.scheme == "amqps"
        host = amqp.hostname or "127.0.0.1"
        netloc = f"[{host}]" if ":" in host else host
        port = MANAGEMENT_TLS_PORT if tls else MANAGEMENT_PORT
        base = f"{'https' if tls else 'http'}://{netloc}:{port}"
    return ManagementEndpoint(base_url=base, username=username, password=password)


@dataclass(frozen=True)
class VhostSnapshot:
    """One vhost's exchanges, queues and bindings as the management API lists them."""

    exchanges: list[dict[str, Any]]
    queues: list[dict[str, Any]]
    bindings: list[dict[str, Any]]

    def exchange_properties(self, name: str) -> dict[str, ArgValue] | None:
        """Type, durable, auto_delete, internal and ``x-`` arguments of exchange ``name``
        (None when there is none), keyed like ``declare.properties``."""
        raw = _find(self.exchanges, name)
        if raw is None:
            return None
        props: dict[str, ArgValue] = {
            "type": str(raw.get("type")),
            "durable": bool(raw.get("durable")),
            "auto_delete": bool(raw.get("auto_delete")),
            "internal": bool(raw.get("internal")),
        }
        props.update(_arguments(raw))
        return props

    def queue_properties(self, name: str) -> dict[str, ArgValue] | None:
        """Durable, auto_delete and ``x-`` arguments of queue ``name`` (None when there is
        none); ``x-queue-type`` comes from the queue's type when it was declared without."""
        raw = _find(self.queues, name)
        if raw is None:
            return None
        props: dict[str, ArgValue] = {
            "durable": bool(raw.get("durable")),
            "auto_delete": bool(raw.get("auto_delete")),
        }
        props.update(_arguments(raw))
        if "x-queue-type" not in props and raw.get("type"):
            props["x-queue-type"] = str(raw["type"])
        return props

    def binding_specs(self) -> list[BindingSpec]:
        """Every binding but the default exchange's implicit one per queue."""
        return [_binding_of(raw) for raw in self.bindings if raw.get("source")]

    def extra_exchanges(self, wanted: set[str]) -> list[str]:
        """Exchanges not in ``wanted``, leaving out the default exchange and ``amq.*``."""
        names = (str(raw.get("name", "")) for raw in self.exchanges)
        return [n for n in names if n and not n.startswith("amq.") and n not in wanted]

    def extra_queues(self, wanted: set[str]) -> list[str]:
        """Queues not in ``wanted``. Exclusive and server-named (``amq.*``) queues belong to
        running clients, not to a topology, and are left out."""
        return [
            str(raw.get("name"))
            for raw in self.queues
            if not raw.get("exclusive")
            and not str(raw.get("name", "")).startswith("amq.")
            and raw.get("name") not in wanted
        ]


def _find(items: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((item for item in items if item.get("name") == name), None)


def _arguments(raw: dict[str, Any]) -> dict[str, ArgValue]:
    arguments = raw.get("arguments") or {}
    return {str(k): v for k, v in arguments.items() if isinstance(v, str | int | bool)}


def _binding_of(raw: dict[str, Any]) -> BindingSpec:
    return BindingSpec(
        str(raw.get("source", "")),
        str(raw.get("destination", "")),
        "exchange" if raw.get("destination_type") == "exchange" else "queue",
        str(raw.get("routing_key", "")),
        _arguments(raw),
    )


class ManagementClient:
    """Reads and writes one broker's topology over the management API."""

    def __init__(self, endpoint: ManagementEndpoint) -> None:
        self.endpoint = endpoint

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

    async def load_definitions(self, vhost: str, definitions: dict[str, Any]) -> None:
        """Load RabbitMQ definitions into ``vhost`` (``POST /api/definitions/{vhost}``)."""
        await asyncio.to_thread(self._request, "POST", f"/api/definitions/{_q(vhost)}", definitions)

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


def _q(vhost: str) -> str:
    return quote(vhost, safe="")
