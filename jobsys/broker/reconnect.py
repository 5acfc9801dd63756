"""How jobsys retries a connection to the broker, and how it lets one go.

One backoff for both kinds of retry: the first connect (``connect_retrying``, for up to
``connect_deadline_s``) and every reconnect of a robust connection after a loss
(``ReconnectingConnection``, for as long as the connection is wanted). The n-th failed attempt
is followed by a pause of ``reconnect_min_s * 2**(n-1)``, capped at ``reconnect_max_s``
(0.5 s, 1 s, 2 s, 4 s, 5 s, 5 s, ... by default), and each attempt may take at most
``connect_timeout_s``. Every failed attempt is one log line: the attempt, the reason and when
the next one starts. A failure that waiting cannot heal (a host name that does not resolve,
refused credentials or vhost, a TLS failure) is not retried.

aio-pika's robust connection runs its own reconnect loop with a fixed interval; jobsys keeps
that loop (it restores channels, QoS and consumers) and gives it the backoff instead:
``reconnect_interval`` is read before every pause, and the close and connected hooks count the
attempts. tenacity drives the first connect, where jobsys owns the loop.

``close_within`` bounds a close: the broker stops reading a connection it blocked (a memory or
disk alarm), so once the socket's buffers are full the close frame cannot even be written, and
aiormq would wait three heartbeats and then for the buffers to drain, which they never do. After
``CLOSE_TIMEOUT_S`` the socket is dropped instead (jobsys keeps the writer aiormq opens, through
its ``transport_factory``, for that).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay
from yarl import URL

from jobsys.broker import frames
from jobsys.errors import (
    AccessRefused,
    BrokerError,
    ConnectionFailed,
    HostNotFound,
    TLSHandshakeFailed,
)
from jobsys.settings import Settings, mask_url
from jobsys.wire.display import escape

log = logging.getLogger("jobsys.broker.connection")

#: How long closing a connection may take before its socket is dropped.
CLOSE_TIMEOUT_S = 2.0
#: The least time a reconnect may spend restoring channels and consumers (``restore_timeout``).
RESTORE_TIMEOUT_MIN_S = 15.0


def reconnect_delay(settings: Settings, failures: int) -> float:
    """The pause after the ``failures``-th failed attempt in a row (1 for the first)."""
    exponent = min(max(failures, 1) - 1, 32)  # 2**32 * any sane minimum is past every cap
    return float(min(settings.reconnect_max_s, settings.reconnect_min_s * 2.0**exponent))


def can_heal(exc: BaseException, nodes: int = 1) -> bool:
    """True for a connect failure that may heal by waiting (refused, reset, timed out); False
    for one that fails the same way every time (see the module docstring). With several
    ``nodes`` only refused credentials or vhost are final: a node whose name does not resolve,
    whose TLS fails or that is no RabbitMQ leaves the others to try."""
    if nodes > 1:
        return isinstance(exc, BrokerError) and not isinstance(exc, AccessRefused)
    return isinstance(exc, ConnectionFailed) and not isinstance(
        exc, TLSHandshakeFailed | HostNotFound | AccessRefused
    )


def round_of(failures: int, nodes: int) -> int:
    """Which round over the ``nodes`` the ``failures``-th failed attempt in a row ends in: the
    backoff grows per round, so a dead node is passed over for the next one at once-ish and
    a single node backs off exactly as before."""
    return -(-max(failures, 1) // max(nodes, 1))


def none_reachable(settings: Settings, reasons: dict[str, str]) -> ConnectionFailed:
    """The error when no node of a list answered before ``connect_deadline_s``."""
    tried = "; ".join(f"{node}: {reason}" for node, reason in reasons.items())
    return ConnectionFailed(
        f"cannot reach any of the {len(settings.urls)} broker nodes within "
        f"{settings.connect_deadline_s:g}s ({tried}); start a node, or point JOBSYS_URL / "
        "--url at running ones; nothing was sent"
    )


def connect_retrying(settings: Settings, nodes: list[str] | None = None) -> AsyncRetrying:
    """tenacity's loop for the first connect: retries what ``can_heal`` until
    ``connect_deadline_s``, logging each failed attempt (``before_sleep``). Attempt n goes to
    ``nodes[(n - 1) % len(nodes)]`` (the caller connects to it; default: the settings' URL)."""
    shown = [mask_url(url) for url in nodes] if nodes else [settings.masked_url]
    count = len(shown)

    def log_attempt(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.upcoming_sleep
        log.warning(
            "connect attempt %d to %s failed: %s; next try in %.1fs (giving up after %gs)",
            state.attempt_number,
            shown[(state.attempt_number - 1) % count],
            short_reason(exc),
            delay,
            settings.connect_deadline_s,
        )

    return AsyncRetrying(
        retry=retry_if_exception(lambda exc: can_heal(exc, count)),
        stop=stop_after_delay(settings.connect_deadline_s),
        # The last pause ends at the deadline, for one last attempt there.
        wait=lambda state: min(
            reconnect_delay(settings, round_of(state.attempt_number, count)),
            max(0.0, settings.connect_deadline_s - (state.seconds_since_start or 0.0)),
        ),
        before_sleep=log_attempt,
        reraise=True,
    )


def short_reason(exc: BaseException | None) -> str:
    """What went wrong, in a few words: the library's own text under a jobsys error (which
    the translation kept as the context), else the error's message."""
    if exc is None:
        return "unknown"
    inner = exc.__context__ if isinstance(exc, ConnectionFailed) else None
    if inner is not None and not isinstance(inner, ConnectionFailed):
        args = [a for a in inner.args if isinstance(a, str)]
        return args[0] if args else str(inner) or type(inner).__name__
    return str(exc) or type(exc).__name__


class _KeepWriter(TransportFactory):
    """aiormq's own transport factory, keeping the last socket it opened (to drop it); its
    streams are read by ``jobsys.broker.frames``."""

    def __init__(self, inner: TransportFactory) -> None:
        self.inner = inner
        self.writer: asyncio.StreamWriter | None = None

    async def create(self, url: Any, **kwargs: Any) -> tuple[asyncio.StreamReader, Any]:
        reader, writer = await self.inner.create(url, **kwargs)
        self.writer = writer
        return frames.mark(reader), writer


class ReconnectingConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection with jobsys's backoff and log lines (module docstring).

    ``settings`` and ``scrub`` are set by ``robust_connection_class``; ``scrub`` masks secrets
    in a library's error text."""

    settings: Settings
    scrub: Any
    #: Every node's connection URL, and the one the first connect went to: after each loss
    #: or failed attempt the next node is tried (a node that just died is not tried first).
    nodes: tuple[str, ...] = ()
    first_node: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._failures = 0
        self._live = False
        self._delay = self.settings.reconnect_min_s
        self._node = self.first_node
        super().__init__(*args, **kwargs)
        tls = self.url.scheme == "amqps"
        self._sockets = _KeepWriter(TLSTransportFactory() if tls else TCPTransportFactory())
        self.kwargs["transport_factory"] = self._sockets

    def drop_socket(self) -> None:
        """Abort the socket under the connection, without a close handshake."""
        writer = self._sockets.writer
        if writer is not None:
            writer.transport.abort()

    @property
    def reconnect_interval(self) -> float:
        """The pause before the next attempt (aio-pika reads it before every pause)."""
        return self._delay

    @reconnect_interval.setter
    def reconnect_interval(self, _value: Any) -> None:
        pass  # aio-pika's fixed interval (from the URL or its default) is replaced

    async def _restore_within(self, timeout_s: float) -> None:
        """Restore channels, QoS and consumers (aio-pika's ``_on_connected``), or give the node
        up after ``timeout_s``: a node that accepted the connection may still hang a declare or
        a consume (seen on a 3.10 cluster just after another node died, restoring a stream
        consumer), and aio-pika would wait for it forever. Closing the connection makes the
        robust loop try the next node."""
        try:
            await asyncio.wait_for(super()._on_connected(), timeout_s)
        except TimeoutError:
            node = self.node
            transport = self.transport
            if transport is not None:
                # Closing runs _on_connection_close, which moves on to the next node.
                await asyncio.gather(
                    transport.connection.close(ConnectionError("restore timed out")),
                    return_exceptions=True,
                )
            log.warning(
                "reconnected to %s but restoring channels and consumers took over %gs; "
                "giving that node up",
                node,
                timeout_s,
            )
            raise

    @property
    def node(self) -> str:
        """The node this connection is on (or trying next), as it may be shown."""
        return shown_node(str(self.url))

    def _next_node(self) -> None:
        if len(self.nodes) > 1:
            self._node = (self._node + 1) % len(self.nodes)
            self.url = URL(self.nodes[self._node])

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        exc = closing.exception() if closing.done() and not closing.cancelled() else None
        if self.connection_attempt and not (self._close_called or self.is_closed):
            reason = self.scrub(short_reason(exc)) if exc is not None else "closed"
            node = self.node
            self._next_node()
            if self._live:
                self._live = False
                log.warning(
                    "connection to %s lost (%s); reconnecting now%s",
                    node,
                    reason,
                    f" to {self.node}" if len(self.nodes) > 1 else "",
                )
            else:
                self._failures += 1
                rounds = round_of(self._failures, len(self.nodes))
                self._delay = reconnect_delay(self.settings, rounds)
                log.warning(
                    "reconnect attempt %d to %s failed: %s; next try in %.1fs%s",
                    self._failures,
                    node,
                    reason,
                    self._delay,
                    f" to {self.node}" if len(self.nodes) > 1 else "",
                )
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        reconnect = bool(self.connection_attempt)
        if reconnect:
            await self._restore_within(restore_timeout(self.settings))
        else:
            await super()._on_connected()
        if reconnect:
            log.warning(
                "reconnected to %s after %d failed attempt%s%s",
                self.node,
                self._failures,
                "" if self._failures == 1 else "s",
                described(self),
            )
        self._failures = 0
        self._delay = self.settings.reconnect_min_s
        self._live = True


def restore_timeout(settings: Settings) -> float:
    """How long a reconnect may take to restore channels, QoS and consumers before the node is
    given up for the next one."""
    return max(RESTORE_TIMEOUT_MIN_S, 3 * settings.connect_timeout_s)


def robust_connection_class(
    settings: Settings, scrub: Any, nodes: list[str] | None = None, first_node: int = 0
) -> type[ReconnectingConnection]:
    """A ``ReconnectingConnection`` class bound to ``settings`` and the connection URLs of
    ``nodes`` (aio-pika builds the object, connecting first to ``nodes[first_node]``)."""
    return type(
        "ReconnectingConnection",
        (ReconnectingConnection,),
        {
            "settings": settings,
            "scrub": staticmethod(scrub),
            "nodes": tuple(nodes or ()),
            "first_node": first_node,
        },
    )


def shown_node(url: str) -> str:
    """A node's connection URL as it may be shown: password masked, query options dropped."""
    parts = urlsplit(url)
    return mask_url(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))


def current_node(connection: Any) -> str:
    """The node ``connection`` (a robust connection) is on, as it may be shown."""
    if isinstance(connection, ReconnectingConnection):
        return connection.node
    return shown_node(str(connection.url))


def described(connection: Any) -> str:
    """`` (RabbitMQ 3.10.8, cluster rabbit@host)``: what the node says it is, or nothing."""
    details = node_details(connection)
    return f" ({details})" if details else ""


def describe_node(connection: Any) -> str:
    """The node and what it says it is: ``amqp://u:***@host:5672/ (RabbitMQ 3.10.8, cluster
    rabbit@host)``; what the node does not say is left out."""
    return f"{current_node(connection)}{described(connection)}"


def node_details(connection: Any) -> str:
    """``RabbitMQ 3.10.8, cluster rabbit@host`` from the node's server properties."""
    transport = getattr(connection, "transport", None)
    props = dict(transport.connection.server_properties) if transport is not None else {}
    said = [
        " ".join(text for key in ("product", "version") if (text := _property(props, key))),
        f"cluster {cluster}" if (cluster := _property(props, "cluster_name")) else "",
    ]
    return ", ".join(part for part in said if part)


def _property(props: dict[str, Any], key: str) -> str:
    raw = props.get(key)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
    return escape(text[:100])


async def close_within(connection: AbstractRobustConnection, timeout_s: float) -> bool:
    """Close ``connection``, waiting at most ``timeout_s`` for the broker's close-ok; then drop
    the socket. True when it closed cleanly. The broker requeues what the connection held
    either way."""
    # Not wait_for: it would wait for the cancelled close, which waits for the socket.
    closing = asyncio.ensure_future(connection.close())
    done, _ = await asyncio.wait({closing}, timeout=timeout_s)
    if done:
        if closing.exception() is not None:
            log.debug("closing the connection failed", exc_info=closing.exception())
        return closing.exception() is None
    log.warning(
        "the broker did not answer the close within %gs (blocked by a resource alarm, or "
        "unreachable); dropped the connection",
        timeout_s,
    )
    if isinstance(connection, ReconnectingConnection):
        connection.drop_socket()
    done, _ = await asyncio.wait({closing}, timeout=1.0)
    if not done:
        closing.cancel()
    return False
