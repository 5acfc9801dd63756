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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import aiormq
import aiormq.abc
import aiormq.exceptions
from aio_pika import RobustChannel
from opentelemetry.context import Context
from pamqp import commands as spec
from pydantic import BaseModel

from jobsys.broker.connection import BrokerConnection
from jobsys.broker.publish_errors import CONNECTION_LOST, publish_error, unknown
from jobsys.errors import (
    BrokerBlockedError,
    ConnectionFailed,
    JobsysError,
)
from jobsys.observe import tracing
from jobsys.publish.prepare import JobRequest, JobRoute, PreparedJob, build_routes, prepare_job
from jobsys.publish.properties import message_properties
from jobsys.settings import Settings
from jobsys.topology import delays
from jobsys.topology.model import Topology
from jobsys.wire.envelope import Envelope, encode_payload, new_message_id, strip_death_headers

__all__ = ["JobRequest", "PreparedJob", "Producer", "PublishResult", "Receipt"]

log = logging.getLogger(__name__)

#: Confirms ``publish_many`` keeps in flight at once.
DEFAULT_WINDOW = 512


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
        #: Queues that dead-letter the publishes they refuse when full (reject-publish-dlx).
        self._refusals_dead_lettered = frozenset(
            name
            for name, queue in topology.queues.items()
            if queue.overflow == "reject-publish-dlx"
        )
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
        trace_kind: tracing.PublishKind = "publish",
        trace_parent: Context | None = None,
    ) -> Receipt:
        """Publish an existing job (a retry, a dead-letter record, a replay) to ``exchange``
        with ``routing_key``, with the same confirm, return and nack handling as ``publish``.

        ``body`` is sent as is when given (the original bytes); otherwise the envelope's
        payload is encoded. ``extra_headers`` (jobsys's own, e.g. dead-letter details) are
        added after the envelope's headers, and broker death headers are stripped so a
        republished job is never silently dropped as a dead-letter cycle. ``queues`` names
        the queues the message is meant for, used only in error messages.

        The publish gets a PRODUCER span of ``trace_kind`` (``retry``, ``dead_letter``...),
        child of ``trace_parent`` (default: the current context, e.g. the running attempt).
        """
        if body is None:
            body = encode_payload(envelope.payload, self.settings.max_payload_bytes)
        headers = envelope.amqp_headers()
        if extra_headers:
            headers.update(extra_headers)
        outgoing = _Outgoing(
            envelope.job_id,
            envelope.job_type,
            exchange,
            routing_key,
            body,
            envelope.priority,
            strip_death_headers(headers),
            tuple(queues),
            delay_s,
            envelope.attempt,
            trace_kind,
            trace_parent,
        )
        return await self._send(outgoing)

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
            outgoing = _Outgoing(
                job.job_id,
                job.job_type,
                exchange,
                routing_key,
                job.body,
                job.priority,
                job.headers,
                queues,
                job.delay_s,
            )
            sent = await self._send(outgoing)
            receipt = receipt or sent
        assert receipt is not None  # prepare_job always yields a target
        return receipt

    # -- the one place a message goes out -----------------------------------------------------

    async def _send(self, out: _Outgoing) -> Receipt:
        message_id = new_message_id()
        # The span writes traceparent into the headers, so it opens before they are encoded.
        with tracing.publish_span(
            out.headers,
            job_type=out.job_type,
            job_id=out.job_id,
            exchange=out.exchange,
            routing_key=out.routing_key,
            message_id=message_id,
            attempt=out.attempt,
            delay_s=out.delay_s,
            kind=out.kind,
            parent=out.parent,
        ):
            props = message_properties(out.job_type, out.priority, out.headers, message_id)
            await self._publish(out, props)
        return Receipt(
            out.job_id, out.job_type, out.exchange, out.routing_key, message_id, out.delay_s
        )

    async def _publish(self, out: _Outgoing, props: spec.Basic.Properties) -> None:
        """Publish and await the confirm; every failure becomes one typed error."""
        timeout_s = self.settings.publish_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        live = self._live
        if live is None or live.channel.is_closed:
            live = await self._reopened(out.job_id, out.job_type, deadline)
        if not live.unblocked.is_set():
            await self._wait_unblocked(live.unblocked, out.job_id, out.job_type, deadline)
        try:
            await live.channel.basic_publish(
                out.body,
                exchange=out.exchange,
                routing_key=out.routing_key,
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
            raise unknown(out.job_id, out.job_type, "the connection was lost") from None
        except (TimeoutError, aiormq.exceptions.AMQPError, *CONNECTION_LOST) as exc:
            raise publish_error(
                exc,
                job_id=out.job_id,
                job_type=out.job_type,
                exchange=out.exchange,
                routing_key=out.routing_key,
                queues=out.queues,
                refusals_dead_lettered=self._refusals_dead_lettered,
                blocked=not live.unblocked.is_set(),
                timeout_s=timeout_s,
            ) from None

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
class _Outgoing:
    """One message to send: a job, to one exchange with one routing key."""

    job_id: str
    job_type: str
    exchange: str
    routing_key: str
    body: bytes
    priority: int | None
    headers: dict[str, Any]
    queues: tuple[str, ...]  # the queues it is meant for, named in error messages
    delay_s: float | None
    attempt: int = 1
    kind: tracing.PublishKind = "publish"
    parent: Context | None = None  # of the PRODUCER span; None: the current context


@dataclass(frozen=True, slots=True)
class _LiveChannel:
    """The aiormq channel a robust channel currently runs on, and its connection's
    "not blocked" event; replaced when the robust connection reopens the channel."""

    channel: aiormq.Channel
    unblocked: asyncio.Event
