"""The one place jobsys opens connections to RabbitMQ and translates aio-pika's errors.

``BrokerConnection`` owns a robust connection (aio-pika restores channels, QoS and consumers
after a transient loss) and opens confirm channels that raise on returns. ``translate_error``
maps aiormq/aio-pika exceptions to jobsys's tree in one table, grouped by what the caller can
do: fix the settings (``AccessRefused``), wait for the broker (``ConnectionFailed``), or
resubmit (``PublishOutcomeUnknown``, mapped by ``jobsys.broker.confirm``). Code that talks to
the broker wraps the talk in ``with broker_errors(settings):`` (httpcore's ``map_exceptions``
is the model) instead of catching and translating on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Iterator
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq
import aiormq.abc
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractRobustChannel, AbstractRobustConnection

from jobsys.broker import decoding, encoding, frames
from jobsys.broker.diagnose import reason_of, scrub, tls_cause, tls_problem, unknown_host
from jobsys.broker.reconnect import (
    CLOSE_TIMEOUT_S,
    can_heal,
    close_within,
    connect_retrying,
    current_node,
    describe_node,
    none_reachable,
    robust_connection_class,
    short_reason,
)
from jobsys.errors import (
    AccessRefused,
    BrokerError,
    ConnectionFailed,
    HostNotFound,
    JobsysError,
    TLSHandshakeFailed,
)
from jobsys.settings import Settings, mask_url

log = logging.getLogger(__name__)

#: RabbitMQ's default frame_max, for a connection that did not name one.
DEFAULT_FRAME_MAX = 131_072

START_HINT = (
    "start one with `docker compose up -d rabbitmq` or `rabbitmq-server -detached`, "
    "or point JOBSYS_URL / --url at yours"
)


#: Connection closes that name a command the broker would not carry out (AMQP hard errors other
#: than connection-forced, which is a node going down).
_REFUSED_BY_BROKER = (
    aiormq.exceptions.ConnectionNotImplemented,
    aiormq.exceptions.ConnectionCommandInvalid,
    aiormq.exceptions.ConnectionSyntaxError,
    aiormq.exceptions.ConnectionFrameError,
    aiormq.exceptions.ConnectionUnexpectedFrame,
    aiormq.exceptions.ConnectionChannelError,
)


def translate_error(exc: BaseException, settings: Settings) -> JobsysError:
    """Map an exception from aio-pika/aiormq (or the socket below) to a jobsys error.

    The message names the broker by its masked URL, and any text the exception carries is
    scrubbed of the password, in case a library quoted the URL.
    """
    where = settings.masked_url
    if isinstance(exc, JobsysError):
        return exc
    tls = tls_cause(exc)
    if tls is not None:
        return TLSHandshakeFailed(
            f"TLS handshake with {where} failed: {scrub(tls_problem(tls, settings), settings)}"
        )
    reason = scrub(reason_of(exc), settings)
    if unknown_host(exc):
        host = urlsplit(settings.urls[0]).hostname
        return HostNotFound(
            f"the broker's host name {host!r} does not resolve ({reason}); check the host in "
            "JOBSYS_URL / --url"
        )
    if isinstance(
        exc, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError
    ):
        return AccessRefused(f"the broker at {where} refused the login: wrong username or password")
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
        # aiormq loses the reason text here; on connection.open the only cause is the vhost.
        return AccessRefused(
            f"the broker at {where} refused virtual host {settings.vhost!r}: it does not exist "
            "or the user has no permission on it"
        )
    if isinstance(
        exc, aiormq.exceptions.ChannelAccessRefused | aiormq.exceptions.ConnectionNotAllowed
    ):
        return AccessRefused(f"the broker at {where} refused an operation: {reason}")
    if isinstance(exc, _REFUSED_BY_BROKER):
        # The broker closed the connection because of a command it would not carry out: it
        # is reachable, and retrying the same command fails the same way.
        return BrokerError(
            f"the broker at {where} refused a command and closed the connection: {reason}"
        )
    # Before OSError: TimeoutError is one of its subclasses.
    if isinstance(exc, TimeoutError):
        return ConnectionFailed(f"timed out talking to the broker at {where}; {START_HINT}")
    if isinstance(exc, aiormq.exceptions.AMQPConnectionError | ConnectionError | OSError):
        return ConnectionFailed(f"cannot reach the broker at {where} ({reason}); {START_HINT}")
    if isinstance(exc, aiormq.exceptions.AMQPError):
        return BrokerError(f"the broker at {where} answered: {reason}")
    return BrokerError(
        f"unexpected error talking to {where}: {type(exc).__name__}: {scrub(str(exc), settings)}"
    )


@contextlib.contextmanager
def broker_errors(settings: Settings) -> Iterator[None]:
    """Translate whatever aio-pika, aiormq or the socket raise inside the block into one jobsys
    error (``translate_error``); jobsys's own errors pass unchanged, and so does a real
    cancellation of the current task. aiormq also cancels the awaits of a connection it has
    declared dead; that is no cancellation of ours and is translated like the loss it is."""
    try:
        yield
    except JobsysError:
        raise
    except (Exception, asyncio.CancelledError) as exc:
        if isinstance(exc, asyncio.CancelledError) and cancel_requested():
            raise
        raise translate_error(exc, settings) from None


def cancel_requested() -> bool:
    """True when somebody really cancelled the current task, not aiormq on its own."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def close_quietly(
    channel: AbstractChannel | aiormq.abc.AbstractChannel | None,
    timeout_s: float = CLOSE_TIMEOUT_S,
) -> None:
    """Close ``channel`` when it is open; a channel the broker or a lost connection already
    closed is fine (the broker requeues whatever it held either way). A broker that does not
    answer within ``timeout_s`` is not waited for: the connection's own close, which follows,
    drops the socket if it must."""
    if channel is None or channel.is_closed:
        return
    try:
        async with asyncio.timeout(timeout_s):
            await channel.close()
    except Exception:  # TimeoutError included
        log.debug("closing a channel failed", exc_info=True)


def _connection_url(settings: Settings, url: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("heartbeat", str(settings.heartbeat_s))
    query.setdefault("name", settings.client_name)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    # Every URL of a list has the same scheme (Settings.validate).
    if not settings.urls[0].startswith("amqps://"):
        return None
    context = ssl.create_default_context(cafile=settings.ca_file)
    if settings.insecure_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class BrokerConnection:
    """One robust connection to RabbitMQ, opened explicitly and closed explicitly."""

    def __init__(self, settings: Settings) -> None:
        # Before any frame arrives: a message whose short strings are not UTF-8 must not be
        # able to drop the connection (jobsys.broker.decoding); and before any is sent, float
        # headers go as doubles (jobsys.broker.encoding); frames are read by
        # jobsys.broker.frames.
        decoding.install()
        encoding.install()
        frames.install()
        self.settings = settings
        self._connection: AbstractRobustConnection | None = None

    async def open(self) -> BrokerConnection:
        """Connect, retrying a broker that is not up yet until ``connect_deadline_s`` with the
        backoff of ``jobsys.broker.reconnect`` (each failed attempt is logged).

        Raises ``AccessRefused``, ``HostNotFound`` and ``TLSHandshakeFailed`` at once (waiting
        cannot help) and ``ConnectionFailed`` when the deadline passes.
        """
        if self._connection is not None:
            return self
        # Shuffled, so that the clients of a cluster spread over its nodes.
        nodes = list(self.settings.urls)
        random.shuffle(nodes)
        reasons: dict[str, str] = {}
        try:
            async for attempt in connect_retrying(self.settings, nodes):
                with attempt:
                    index = (attempt.retry_state.attempt_number - 1) % len(nodes)
                    try:
                        self._connection = await self._connect_once(nodes, index)
                    except JobsysError as exc:
                        reasons[mask_url(nodes[index])] = short_reason(exc)
                        raise
        except ConnectionFailed as exc:
            if len(nodes) == 1 or not can_heal(exc, len(nodes)):
                raise
            raise none_reachable(self.settings, reasons) from None
        return self

    async def _connect_once(self, nodes: list[str], index: int) -> AbstractRobustConnection:
        node = self.settings.for_node(nodes[index])
        with broker_errors(node):
            connection = await asyncio.wait_for(
                aio_pika.connect_robust(
                    _connection_url(self.settings, nodes[index]),
                    ssl_context=_ssl_context(self.settings),
                    timeout=self.settings.connect_timeout_s,
                    client_properties={"connection_name": self.settings.client_name},
                    connection_class=robust_connection_class(
                        self.settings,
                        lambda text: scrub(text, self.settings),
                        [_connection_url(self.settings, url) for url in nodes],
                        index,
                    ),
                ),
                timeout=self.settings.connect_timeout_s + 1,
            )
        log.info("connected to %s", describe_node(connection))
        return connection

    @property
    def node(self) -> str:
        """The node this connection is on now, as it may be shown: its URL with the password
        masked (``ConnectionFailed`` before ``open()``)."""
        return current_node(self.connection)

    @property
    def connection(self) -> AbstractRobustConnection:
        """The open robust connection (``ConnectionFailed`` if ``open()`` was not called)."""
        if self._connection is None:
            raise ConnectionFailed("not connected: call open() first")
        return self._connection

    @property
    def connected(self) -> bool:
        """True while the connection is up: False before ``open()``, while it reconnects and
        after ``close()``."""
        return self._connection is not None and self._connection.connected.is_set()

    @property
    def server_version(self) -> tuple[int, ...]:
        """The broker's version, e.g. ``(3, 10, 8)``."""
        props: dict[str, Any] = dict(self.amqp.server_properties)
        raw = props.get("version", "0")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        numbers = []
        for part in text.split("."):
            digits = "".join(ch for ch in part if ch.isdigit())
            numbers.append(int(digits) if digits else 0)
        return tuple(numbers)

    async def channel(
        self, *, confirms: bool = True, prefetch: int | None = None
    ) -> AbstractRobustChannel:
        """A new channel. With ``confirms`` the broker confirms every publish, and a
        mandatory publish that routes nowhere raises instead of returning quietly."""
        with broker_errors(self.settings):
            channel = await self.connection.channel(
                publisher_confirms=confirms, on_return_raises=confirms
            )
            if prefetch is not None:
                await channel.set_qos(prefetch_count=prefetch)
        return channel

    @property
    def amqp(self) -> aiormq.abc.AbstractConnection:
        """The aiormq connection the robust one runs on now (``ConnectionFailed`` between
        reconnects)."""
        transport = self.connection.transport
        if transport is None:  # the robust connection is between reconnects
            raise ConnectionFailed(f"lost the connection to {self.settings.masked_url}")
        return transport.connection

    @property
    def frame_max(self) -> int:
        """The largest frame the connection may send, as negotiated with the broker (the
        AMQP content header -- all of a message's properties and headers -- must fit one)."""
        tune = getattr(self.amqp, "connection_tune", None)
        frame_max = int(getattr(tune, "frame_max", 0) or 0)
        # 0 means "no limit" in AMQP; RabbitMQ always names one (131072 by default).
        return frame_max or DEFAULT_FRAME_MAX

    async def plain_channel(self, *, confirms: bool = True) -> aiormq.abc.AbstractChannel:
        """A plain aiormq channel, not a robust one: for probes and passive declares that the
        broker may refuse (a robust channel the broker closed would restore itself by
        repeating the refused operation, forever), and for what must end with its
        connection (a transaction, the scheduler's leadership). ``confirms=False`` for a
        channel that will select transaction mode."""
        with broker_errors(self.settings):
            return await self.amqp.channel(publisher_confirms=confirms)

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Close the connection; safe to call twice. A broker that does not answer the close
        within ``timeout_s`` (a connection blocked by a resource alarm) has its socket dropped."""
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            await close_within(connection, timeout_s)

    async def __aenter__(self) -> BrokerConnection:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
