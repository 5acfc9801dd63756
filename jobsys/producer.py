"""Publishing jobs: envelope -> route -> confirm -> receipt.

``Producer.publish`` returns a ``Receipt`` only after the broker confirmed the message *and*
routed it to a queue. Every message is persistent, ``mandatory`` and goes to a named exchange
on a confirm channel that raises on returns, so each way a publish can fail surfaces as one
typed error (see ``jobsys.errors``):

* the job type is unknown, the payload invalid or too large, a delay or priority out of range:
  refused before any I/O (``MessageError`` / ``ConfigError``);
* no binding matched: ``UnroutableError``;
* the broker nacked (a full queue under ``x-overflow: reject-publish``): ``QueueFullError``;
* the broker blocked the connection (memory or disk alarm) until the publish timeout:
  ``BrokerBlockedError``;
* the connection was lost, or no confirm came in time: ``PublishOutcomeUnknown`` -- the job
  may or may not be in its queue, and resubmitting it with the same job id is safe.

While a robust connection reconnects, a publish waits for the channel to come back, bounded by
``Settings.publish_timeout_s``; if it does not come back in time the job was not sent and the
error says so. A publish is never reported as a success without its confirm.

The hot path talks to the aiormq channel under aio-pika's robust channel directly, with
properties built per job type once, because aio-pika's ``Message``/``Exchange.publish`` layer
costs more per call than the broker round trip it wraps. The guarantees are the same.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from types import TracebackType
from typing import Any, cast

import aiormq
import aiormq.abc
import aiormq.exceptions
from aio_pika import RobustChannel
from pamqp import commands as spec
from pamqp import encode
from pydantic import BaseModel, ValidationError

from jobsys.connection import BrokerConnection
from jobsys.envelope import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    Envelope,
    check_user_headers,
    encode_payload,
    new_job_id,
    new_message_id,
    strip_death_headers,
)
from jobsys.errors import (
    BrokerBlockedError,
    ConfigError,
    ConnectionFailed,
    JobsysError,
    PayloadValidationError,
    PublishOutcomeUnknown,
    QueueFullError,
    UnknownJobTypeError,
    UnroutableError,
)
from jobsys.settings import Settings
from jobsys.topology import delays
from jobsys.topology.check import route_job_type
from jobsys.topology.model import Topology

__all__ = ["JobRequest", "Producer", "PublishResult", "Receipt"]

log = logging.getLogger(__name__)

PERSISTENT = 2
#: Confirms ``publish_many`` keeps in flight at once.
DEFAULT_WINDOW = 512
_UNKNOWN = "outcome unknown — resubmitting with the same job id is safe"
_CONNECTION_LOST = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPChannelError,
    ConnectionError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof that the broker confirmed a job and routed it to a queue.

    For a delayed job ``exchange`` and ``routing_key`` are those of the delay level it entered
    and ``delay_s`` the delay applied (rounded up to whole seconds); a delayed job type that
    fans out to several queues was published once per queue and all were confirmed.
    """

    job_id: str
    job_type: str
    exchange: str
    routing_key: str
    message_id: str
    delay_s: float | None = None


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One job for ``publish_many``: the arguments of ``publish``."""

    job_type: str
    payload: Any
    priority: int | None = None
    delay_s: float | None = None
    job_id: str | None = None
    headers: Mapping[str, Any] | None = None


#: What ``publish_many`` reports per job: its receipt, or the error that job met.
PublishResult = Receipt | JobsysError


class Producer:
    """Publishes jobs of the job types in ``topology`` with publisher confirms.

    Construct it without I/O, then ``await producer.open()`` (or ``async with``). Pass
    ``connection`` to share an already-open ``BrokerConnection`` (a worker reusing its own);
    the producer then never closes it. ``models`` maps job types to pydantic models that
    validate (and normalise) payloads before anything is sent.
    """

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        *,
        models: Mapping[str, type[BaseModel]] | None = None,
        connection: BrokerConnection | None = None,
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.models: dict[str, type[BaseModel]] = dict(models or {})
        self._routes: dict[str, JobRoute] = build_routes(topology)
        #: How many delay levels the topology declares (for ``delays.delay_route``).
        self.delay_levels = delays.level_count(topology.delays.max_delay)
        self._own_connection = connection is None
        self._connection = connection
        self._channel: RobustChannel | None = None
        self._live: _LiveChannel | None = None
        self._open_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> Producer:
        """Connect (unless a connection was given) and open the confirm channel."""
        async with self._open_lock:
            if self._channel is not None:
                return self
            if self._connection is None:
                self._connection = BrokerConnection(self.settings)
            await self._connection.open()
            channel = await self._connection.channel(confirms=True)
            # The concrete class gives the hot path synchronous access to the live channel.
            assert isinstance(channel, RobustChannel)
            self._channel = channel
        return self

    async def close(self) -> None:
        """Close the channel, and the connection if the producer opened it; safe to call twice."""
        channel, self._channel, self._live = self._channel, None, None
        if channel is not None and not channel.is_closed:
            await channel.close()
        if self._own_connection and self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def __aenter__(self) -> Producer:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self,
        job_type: str,
        payload: Any,
        *,
        priority: int | None = None,
        delay_s: float | None = None,
        job_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> Receipt:
        """Publish one job and return its receipt once the broker confirmed it as routed.

        Pass ``job_id`` to make a resubmission after ``PublishOutcomeUnknown`` safe: consumers
        see the same id twice at worst. Raises the errors listed in the module docstring.

        A delayed job whose type fans out to N queues is published N times, once per queue
        through the delay levels, and the receipt comes only when all N were confirmed; if
        one fails, the error is raised and the queues before it may already hold the job
        (resubmitting with the same job id is safe).
        """
        request = JobRequest(job_type, payload, priority, delay_s, job_id, headers)
        job = self.prepare(request)
        return await self._publish_prepared(job)

    async def publish_many(
        self, requests: Iterable[JobRequest], *, window: int = DEFAULT_WINDOW
    ) -> list[PublishResult]:
        """Publish many jobs with up to ``window`` confirms in flight; one result per request,
        in order: a ``Receipt``, or the error of that job (a job that fails validation does
        not stop the others). A job is a ``Receipt`` only if the broker confirmed it.

        Jobs are sent in request order as far as the window allows; jobs in flight together
        have no order among them. ``requests`` is read into a list first, so pass very large
        streams in chunks (as ``jobsys publish --file`` does).
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        pending = list(requests)
        results: list[PublishResult | None] = [None] * len(pending)
        cursor = iter(range(len(pending)))

        async def lane() -> None:
            # A fixed set of lanes pulling from one cursor keeps ``window`` confirms in flight
            # without creating a task per job.
            for index in cursor:
                try:
                    results[index] = await self._publish_prepared(self.prepare(pending[index]))
                except JobsysError as exc:
                    results[index] = exc

        await asyncio.gather(*(lane() for _ in range(min(window, len(pending)))))
        return [r for r in results if r is not None]

    async def publish_envelope(
        self,
        envelope: Envelope,
        exchange: str,
        routing_key: str,
        *,
        body: bytes | None = None,
        extra_headers: Mapping[str, Any] | None = None,
        queues: Iterable[str] = (),
        delay_s: float | None = None,
    ) -> Receipt:
        """Publish an existing job (a retry, a dead-letter record, a replay) to ``exchange``
        with ``routing_key``, with the same confirm, return and nack handling as ``publish``.

        ``body`` is sent as is when given (the original bytes); otherwise the envelope's
        payload is encoded. ``extra_headers`` (jobsys's own, e.g. dead-letter details) are
        added after the envelope's headers, and broker death headers are stripped so a
        republished job is never silently dropped as a dead-letter cycle. ``queues`` names
        the queues the message is meant for, used only in error messages.
        """
        if body is None:
            body = encode_payload(envelope.payload, self.settings.max_payload_bytes)
        headers = envelope.amqp_headers()
        if extra_headers:
            headers.update(extra_headers)
        headers = strip_death_headers(headers)
        priority = envelope.priority
        props = _properties(envelope.job_type, priority, headers)
        return await self._send(
            envelope.job_id,
            envelope.job_type,
            exchange,
            routing_key,
            body,
            props,
            tuple(queues),
            delay_s,
        )

    def prepare(self, request: JobRequest) -> PreparedJob:
        """Validate and encode ``request`` without any I/O (what ``publish`` does first)."""
        return prepare_job(
            request,
            self._routes,
            self.models,
            self.settings.max_payload_bytes,
            self.delay_levels,
        )

    async def _publish_prepared(self, job: PreparedJob) -> Receipt:
        receipt: Receipt | None = None
        # A delayed job that fans out goes once per target queue; all must be confirmed.
        for exchange, routing_key, queues in job.targets:
            props = _properties(job.job_type, job.priority, job.headers)
            sent = await self._send(
                job.job_id,
                job.job_type,
                exchange,
                routing_key,
                job.body,
                props,
                queues,
                job.delay_s,
            )
            receipt = receipt or sent
        assert receipt is not None  # prepare_job always yields a target
        return receipt

    # -- the one place a message goes out -----------------------------------------------------

    async def _send(
        self,
        job_id: str,
        job_type: str,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: spec.Basic.Properties,
        queues: tuple[str, ...],
        delay_s: float | None,
    ) -> Receipt:
        timeout_s = self.settings.publish_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        live = self._live
        if live is None or live.channel.is_closed:
            live = await self._reopened(job_id, job_type, deadline)
        if not live.unblocked.is_set():
            await self._wait_unblocked(live.unblocked, job_id, job_type, deadline)
        channel = live.channel
        try:
            await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=props,
                mandatory=True,
                timeout=max(0.001, deadline - loop.time()),
                # Waiting for the socket to drain costs a loop turn per publish and proves
                # nothing: the confirm below is what counts, and it is always awaited.
                wait=False,
            )
        except asyncio.CancelledError:
            if _cancel_requested():
                raise
            # aiormq cancels pending confirms when it declares the connection dead (e.g. a
            # heartbeat timeout) though nobody cancelled the caller.
            raise self._unknown(job_id, job_type, "the connection was lost") from None
        except TimeoutError:
            if not live.unblocked.is_set():
                raise BrokerBlockedError(
                    f"the broker blocked publishing (memory or disk alarm) and job {job_id} "
                    f"({job_type}) was not confirmed within {timeout_s:g}s; it may still be "
                    "published when the alarm clears — resubmitting with the same job id is safe",
                    job_id=job_id,
                ) from None
            raise self._unknown(job_id, job_type, f"no confirm within {timeout_s:g}s") from None
        except aiormq.exceptions.PublishError as exc:
            raise UnroutableError(
                f"job {job_id} ({job_type}) is unroutable: no binding on exchange "
                f"{exchange!r} matched routing key {routing_key!r} ({_reply(exc)}); "
                "it was not published",
                job_id=job_id,
            ) from None
        except aiormq.exceptions.DeliveryError:
            # A basic.nack: the broker refused the message, e.g. reject-publish overflow.
            shown = ", ".join(queues) if queues else f"behind exchange {exchange!r}"
            raise QueueFullError(
                f"queue {shown} is full: the broker refused job {job_id} ({job_type}); "
                "it was not published — retry later or raise the queue's max_length",
                job_id=job_id,
            ) from None
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise UnroutableError(
                f"job {job_id} ({job_type}) was not published: {_reply(exc)} — "
                "has the topology been applied (`jobsys topology apply`)?",
                job_id=job_id,
            ) from None
        except _CONNECTION_LOST as exc:
            raise self._unknown(job_id, job_type, _reply(exc)) from None
        return Receipt(job_id, job_type, exchange, routing_key, props.message_id or "", delay_s)

    async def _reopened(self, job_id: str, job_type: str, deadline: float) -> _LiveChannel:
        """The live aiormq channel under the robust one; while the connection is being
        restored, wait for it until ``deadline`` (the job is not sent if it does not come)."""
        robust = self._channel
        if robust is None:
            raise ConnectionFailed("the producer is not open: call open() or use `async with`")
        try:
            async with asyncio.timeout_at(deadline):
                # The robust connection reconnects and reopens the channel by itself.
                while robust.is_closed:
                    await robust.ready()
                    if robust.is_closed:
                        await asyncio.sleep(0.05)  # restored, then closed again: let it settle
                channel = cast(aiormq.Channel, await robust.get_underlay_channel())
        except TimeoutError:
            raise ConnectionFailed(
                f"job {job_id} ({job_type}) was not published: the connection to "
                f"{self.settings.masked_url} did not come back within "
                f"{self.settings.publish_timeout_s:g}s"
            ) from None
        self._live = _LiveChannel(channel, _unblocked_event(channel))
        return self._live

    async def _wait_unblocked(
        self, unblocked: asyncio.Event, job_id: str, job_type: str, deadline: float
    ) -> None:
        """Hold a publish back while the broker blocks the connection, so that on timeout
        the job is known not to have been sent."""
        try:
            async with asyncio.timeout_at(deadline):
                await unblocked.wait()
        except TimeoutError:
            raise BrokerBlockedError(
                f"the broker blocked publishing (memory or disk alarm) for longer than "
                f"{self.settings.publish_timeout_s:g}s; job {job_id} ({job_type}) was not "
                "published",
                job_id=job_id,
            ) from None

    def _unknown(self, job_id: str, job_type: str, why: str) -> PublishOutcomeUnknown:
        log.warning("publish outcome unknown for job %s (%s): %s", job_id, job_type, why)
        return PublishOutcomeUnknown(f"job {job_id} ({job_type}): {why}; {_UNKNOWN}", job_id=job_id)


# -- preparation: everything checked before any I/O -----------------------------------------


@dataclass(frozen=True, slots=True)
class JobRoute:
    """Where a job type goes, worked out once per producer from the topology."""

    exchange: str
    routing_key: str
    priority: int | None
    static_headers: Mapping[str, Any]  # a headers exchange's match headers
    queues: tuple[str, ...]  # the work queues it reaches, as the broker would route it


@dataclass(frozen=True, slots=True)
class PreparedJob:
    """A job ready to send: validated, encoded, with its targets."""

    job_id: str
    job_type: str
    body: bytes
    priority: int | None
    headers: dict[str, Any]
    #: (exchange, routing key, queues) per message; several only for a delayed fan-out.
    targets: tuple[tuple[str, str, tuple[str, ...]], ...]
    delay_s: float | None


def build_routes(topology: Topology) -> dict[str, JobRoute]:
    """Each job type's route, from the topology (pure)."""
    return {
        name: JobRoute(
            exchange=spec_.exchange,
            routing_key=spec_.routing_key,
            priority=spec_.priority,
            static_headers=dict(spec_.headers or {}),
            queues=tuple(route_job_type(topology, spec_)),
        )
        for name, spec_ in topology.job_types.items()
    }


def prepare_job(
    request: JobRequest,
    routes: Mapping[str, JobRoute],
    models: Mapping[str, type[BaseModel]],
    max_bytes: int,
    delay_levels: int,
) -> PreparedJob:
    """Validate and encode ``request`` (pure); raises ``UnknownJobTypeError``,
    ``PayloadValidationError``, ``PayloadTooLargeError`` or ``ConfigError``."""
    route = routes.get(request.job_type)
    if route is None:
        known = ", ".join(sorted(routes)) or "none"
        raise UnknownJobTypeError(
            f"unknown job type {request.job_type!r}; the topology knows: {known}"
        )
    payload = request.payload
    model = models.get(request.job_type)
    if model is not None:
        payload = _validated(model, request.job_type, payload)
    body = encode_payload(payload, max_bytes)
    priority = route.priority if request.priority is None else request.priority
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255
    ):
        raise ConfigError(f"priority must be an integer from 0 to 255, got {priority!r}")
    job_id = request.job_id or new_job_id()
    headers = check_user_headers(request.headers)
    if route.static_headers:
        # A headers exchange routes on these, so they win over the caller's.
        headers.update(route.static_headers)
    envelope = Envelope(job_id, request.job_type, None, headers=headers)
    targets, delay_s = _targets(route, request.delay_s, delay_levels)
    return PreparedJob(
        job_id=job_id,
        job_type=request.job_type,
        body=body,
        priority=priority,
        headers=envelope.amqp_headers(),
        targets=targets,
        delay_s=delay_s,
    )


def _validated(model: type[BaseModel], job_type: str, payload: Any) -> Any:
    try:
        instance = payload if isinstance(payload, model) else model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(step) for step in error['loc']) or '(payload)'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise PayloadValidationError(
            f"payload for job type {job_type!r} is invalid: {problems}"
        ) from None
    return instance.model_dump(mode="json")


def _targets(
    route: JobRoute, delay_s: float | None, levels: int
) -> tuple[tuple[tuple[str, str, tuple[str, ...]], ...], float | None]:
    if delay_s is None:
        return ((route.exchange, route.routing_key, route.queues),), None
    if isinstance(delay_s, bool) or not isinstance(delay_s, int | float):
        raise ConfigError(f"a delay must be a number of seconds, got {delay_s!r}")
    if delay_s == 0:
        return ((route.exchange, route.routing_key, route.queues),), None
    # Through the delay levels a job reaches its queues by name, so one message per queue.
    plans = [(queue, delays.delay_route(queue, delay_s, levels)) for queue in route.queues]
    if not plans:
        raise ConfigError("this job type reaches no queue, so it cannot be delayed")
    targets = tuple((plan.exchange, plan.routing_key, (queue,)) for queue, plan in plans)
    return targets, plans[0][1].delay_s


def _properties(
    job_type: str, priority: int | None, headers: dict[str, Any]
) -> spec.Basic.Properties:
    """The properties of one publish attempt (a fresh ``message_id``), pre-encoded."""
    message_id = new_message_id()
    now = time.time()
    props = _PreEncodedProperties(
        content_type=CONTENT_TYPE,
        content_encoding=CONTENT_ENCODING,
        headers=headers,
        delivery_mode=PERSISTENT,
        priority=priority,
        message_id=message_id,
        timestamp=datetime.fromtimestamp(int(now), UTC),
        message_type=job_type,
    )
    head, middle, tail = _template(job_type, priority)
    props.encoded = b"".join(
        (head, _table(headers), middle, _short(message_id), _U64(int(now)), tail)
    )
    return props


class _PreEncodedProperties(spec.Basic.Properties):
    """``Basic.Properties`` whose wire form jobsys built itself.

    pamqp encodes every property of every message from scratch; the parts that never change
    for a job type and priority are encoded once instead (``_template``). The bytes are the
    ones pamqp would produce (a unit test holds that).
    """

    __slots__ = ("encoded",)
    encoded: bytes

    def marshal(self) -> bytes:
        return self.encoded


_FLAGS = spec.Basic.Properties.flags
_U64 = struct.Struct(">Q").pack
_U32 = struct.Struct(">I").pack


def _table(headers: Mapping[str, Any]) -> bytes:
    """``headers`` as an AMQP field table, byte for byte as pamqp encodes it, with a short
    path for the strings and integers jobsys's own headers are made of."""
    parts = []
    for key, value in sorted(headers.items()):
        name = key.encode("utf-8")
        if len(name) > 128:
            return encode.field_table(dict(headers))  # pamqp truncates, and warns
        parts.append(bytes((len(name),)) + name)
        if type(value) is str:
            data = value.encode("utf-8")
            parts.append(b"S" + _U32(len(data)) + data)
        elif type(value) is int:
            parts.append(encode.table_integer(value))
        else:
            parts.append(encode.encode_table_value(value))
    body = b"".join(parts)
    return _U32(len(body)) + body


def _short(text: str) -> bytes:
    data = text.encode("utf-8")
    return bytes((len(data),)) + data


@lru_cache(maxsize=1024)
def _template(job_type: str, priority: int | None) -> tuple[bytes, bytes, bytes]:
    """Encoded properties around the per-message parts: flags, content type and encoding
    (before the headers); delivery mode and priority (before message id and timestamp);
    the job type (last)."""
    flags = 0
    for name in (
        "content_type",
        "content_encoding",
        "headers",
        "delivery_mode",
        "message_id",
        "timestamp",
        "message_type",
    ):
        flags |= _FLAGS[name]
    middle = bytes((PERSISTENT,))
    if priority is not None:
        flags |= _FLAGS["priority"]
        middle += bytes((priority,))
    head = struct.pack(">H", flags) + _short(CONTENT_TYPE) + _short(CONTENT_ENCODING)
    return head, middle, _short(job_type)


# -- talking to aiormq -------------------------------------------------------------------------


def _cancel_requested() -> bool:
    """True when somebody really cancelled the current task (not aiormq's own cancel)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _unblocked_event(channel: aiormq.abc.AbstractChannel) -> asyncio.Event:
    # aiormq tracks connection.blocked/unblocked in a private event and exposes no accessor;
    # read it defensively: a future aiormq without it only loses the blocked diagnosis.
    connection = getattr(channel, "connection", None)
    event = getattr(connection, "_Connection__connection_unblocked", None)
    if isinstance(event, asyncio.Event):
        return event
    always = asyncio.Event()
    always.set()
    return always


@dataclass(frozen=True, slots=True)
class _LiveChannel:
    """The aiormq channel a robust channel currently runs on, and its connection's
    "not blocked" event; replaced when the robust connection reopens the channel."""

    channel: aiormq.Channel
    unblocked: asyncio.Event


def _reply(exc: BaseException) -> str:
    text = " ".join(str(arg) for arg in exc.args if isinstance(arg, str | int))
    return text or type(exc).__name__
