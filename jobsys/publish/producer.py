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
  may or may not be in its queue: publish it again with the same job id (a second copy may
  then be queued; handlers that deduplicate by ``ctx.job_id`` run it once).

While a robust connection reconnects, a publish waits for the channel to come back, bounded by
``Settings.publish_timeout_s``; if it does not come back in time the job was not sent and the
error says so. A publish is never reported as a success without its confirm. How a message is
sent beneath aio-pika, and how each failure maps to an error, is ``jobsys.broker.confirm``.

Retries, dead letters and replays go out through ``republish``, with headers built by
``jobsys.wire`` and the same confirm, return and nack handling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, cast

from aio_pika import RobustChannel
from pydantic import BaseModel

from jobsys.broker.confirm import ConfirmChannel, Outgoing, Publishes
from jobsys.broker.connection import BrokerConnection
from jobsys.broker.publish_errors import unknown
from jobsys.errors import ConfigError, ConnectionFailed, JobsysError
from jobsys.observe import tracing
from jobsys.publish.call import Caller, check_timeout
from jobsys.publish.cancel import CANCEL_TYPE, SYNC_TYPE, CancelsJobs
from jobsys.publish.history import ProducerHistory
from jobsys.publish.middleware import around_publish, from_app
from jobsys.publish.prepare import JobRequest, JobRoute, PreparedJob, build_routes, prepare_job
from jobsys.publish.properties import message_properties
from jobsys.publish.receipt import PublishResult, Receipt
from jobsys.publish.republish import RepublishesJobs
from jobsys.publish.window import in_window
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.topology.model import Topology
from jobsys.wire.envelope import new_message_id
from jobsys.wire.headers import now_ms
from jobsys.wire.table import shown

if TYPE_CHECKING:
    from jobsys.app import App, PublishMiddleware

__all__ = [
    "CANCEL_TYPE",
    "SYNC_TYPE",
    "JobRequest",
    "PreparedJob",
    "Producer",
    "PublishEdge",
    "PublishResult",
    "Receipt",
]

log = logging.getLogger(__name__)

#: Confirms ``publish_many`` keeps in flight at once.
DEFAULT_WINDOW = 512


class PublishEdge(Publishes, Protocol):
    """Where a producer's messages go instead of a broker: the in-memory edge of
    ``jobsys.testing`` (everything above it, validation and headers, is the same code)."""

    #: The largest frame the edge takes, as the broker's negotiated ``frame_max``.
    frame_max: int

    async def call_through(
        self,
        middleware: tuple[PublishMiddleware, ...],
        request: JobRequest,
        prepare: Callable[[JobRequest], PreparedJob],
        *,
        timeout_s: float,
        returns: Any,
        on_published: Callable[[PreparedJob, int], None],
    ) -> Any:
        """``Producer.call`` on this edge, as ``Caller.call_through`` does it on a broker."""


class Producer(CancelsJobs, RepublishesJobs):
    """Publishes jobs of the job types in ``topology`` (a ``Topology``, or the
    ``LoadedTopology`` that ``load_topology`` returns) with publisher confirms.

    Construct it without I/O, then ``await producer.open()`` (or ``async with``). Pass
    ``connection`` to share an already-open ``BrokerConnection`` (a worker reusing its own);
    the producer then never closes it. ``edge`` sends through something other than a broker
    (the in-memory test kit, ``jobsys.testing``); ``open`` then connects nothing. ``models``
    maps job types to pydantic models that validate (and normalise) payloads before anything
    is sent. ``app`` (the ``App`` of the
    handlers) brings the payload models of its handlers and its publish middleware
    (``jobsys.publish.middleware``), which runs around ``publish`` and each job of
    ``publish_many``.
    """

    def __init__(
        self,
        settings: Settings,
        topology: Topology | LoadedTopology,
        *,
        models: Mapping[str, type[BaseModel]] | None = None,
        connection: BrokerConnection | None = None,
        app: App | None = None,
        edge: PublishEdge | None = None,
    ) -> None:
        if isinstance(topology, LoadedTopology):
            topology = topology.topology
        self.settings = settings
        self.topology = topology
        self.models, self._middleware = from_app(app, models)
        self._routes: dict[str, JobRoute] = build_routes(topology)
        #: Queues that dead-letter the publishes they refuse when full (reject-publish-dlx).
        self._refusals_dead_lettered = frozenset(
            name
            for name, queue in topology.queues.items()
            if queue.overflow == "reject-publish-dlx"
        )
        #: The delay levels and due exchange of the topology's namespace.
        self.delay_layout = topology.delay_layout
        self._own_connection = connection is None
        self._connection = connection
        self._confirms: ConfirmChannel | None = None
        self._edge = edge
        self._open_lock = asyncio.Lock()
        self._caller: Caller | None = None  # opened by the first call()
        #: ``published`` and ``replayed`` events, with ``history:`` in the topology.
        self._history: ProducerHistory | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> Producer:
        """Connect (unless a connection was given) and open the confirm channel."""
        async with self._open_lock:
            if self._confirms is not None or self._edge is not None:
                return self
            if self._connection is None:
                self._connection = BrokerConnection(self.settings)
            await self._connection.open()
            channel = await self._connection.channel(confirms=True)
            # The concrete class gives the hot path synchronous access to the live channel.
            assert isinstance(channel, RobustChannel)
            self._confirms = ConfirmChannel(channel, self.settings, self._refusals_dead_lettered)
            if self.topology.history is not None:
                self._history = ProducerHistory(self._connection, self.topology)
        return self

    async def close(self) -> None:
        """Close the channel, and the connection if the producer opened it; safe to call twice."""
        caller, self._caller = self._caller, None
        if caller is not None:
            await caller.close()
        history, self._history = self._history, None
        if history is not None:
            await history.close()
        confirms, self._confirms = self._confirms, None
        if confirms is not None and not confirms.robust.is_closed:
            await confirms.robust.close()
        if self._own_connection and self._connection is not None:
            await self._connection.close()
            self._connection = None

    @property
    def connection(self) -> BrokerConnection:
        """The connection the producer publishes on (``ConnectionFailed`` before ``open()``)."""
        if self._connection is None:
            raise ConnectionFailed("the producer is not open: call open() or use `async with`")
        return self._connection

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
        run_at: datetime | None = None,
        then: str | None = None,
    ) -> Receipt:
        """Publish one job and return its receipt once the broker confirmed it as routed.

        ``then`` names a job type that receives this job's handler's return value as its
        payload once the job succeeded (docs/handlers.md, chains).

        ``delay_s`` delays the job by so many seconds; ``run_at`` (a timezone-aware datetime,
        instead) makes it due at that moment: it goes through the same delay levels, a moment
        already past runs at once, and no worker starts it before the moment. A naive
        datetime, both at once, or a moment beyond ``delays.max_delay`` is a ``ConfigError``.

        Pass ``job_id`` so that a resubmission after ``PublishOutcomeUnknown`` carries the same
        id: a second copy may be queued, and handlers that deduplicate by ``ctx.job_id`` run
        it once. Raises the errors listed in the module docstring.

        A delayed job whose type fans out to N queues is published N times, once per queue
        through the delay levels, and the receipt comes only when all N were confirmed; if
        one fails, the error is raised and the queues before it may already hold the job
        (publish it again with the same job id; handlers deduplicate by it).
        """
        request = JobRequest(job_type, payload, priority, delay_s, job_id, headers, run_at, then)
        return await self.publish_request(request)

    async def publish_request(self, request: JobRequest) -> Receipt:
        """``publish`` for a ``JobRequest`` (through the app's publish middleware, if any)."""
        if self._middleware:
            return cast(Receipt, await around_publish(self._middleware, request, self._publish))
        return await self._publish(request)

    async def _publish(self, request: JobRequest) -> Receipt:
        return await self._publish_prepared(self.prepare(request))

    async def call(
        self,
        job_type: str,
        payload: Any,
        *,
        timeout_s: float,
        returns: Any = None,
        priority: int | None = None,
        delay_s: float | None = None,
        job_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        run_at: datetime | None = None,
    ) -> Any:
        """Publish one job (as ``publish``) and wait up to ``timeout_s`` for its outcome
        through RabbitMQ direct reply-to; returns the handler's result as decoded JSON, or
        validated into ``returns`` (a type pydantic can validate) when given.

        The app's publish middleware, if any, runs around its publish as around ``publish``.
        Raises ``JobFailed`` when the job was dead-lettered (after its retries) or cancelled,
        ``CallTimeout`` when no outcome came in time and ``ResultUnknown`` when the connection
        was lost while waiting -- in both the job was published and may still run -- and the
        errors of ``publish``. See ``jobsys.publish.call`` and docs/results.md.
        """
        timeout_s = check_timeout(timeout_s)
        request = JobRequest(job_type, payload, priority, delay_s, job_id, headers, run_at)
        caller: PublishEdge | Caller | None = self._edge or self._caller
        if caller is None:
            caller = self._caller = Caller(
                self.connection, self.settings, self._refusals_dead_lettered
            )
        return await caller.call_through(
            self._middleware,
            request,
            self._prepare_to_send,
            timeout_s=timeout_s,
            returns=returns,
            on_published=self._published,
        )

    def _prepare_to_send(self, request: JobRequest) -> PreparedJob:
        job = self.prepare(request)
        self._channel()  # ConnectionFailed when not open, as publish
        return job

    async def publish_many(
        self,
        requests: Iterable[JobRequest],
        *,
        window: int = DEFAULT_WINDOW,
        on_result: Callable[[int, PublishResult], object] | None = None,
    ) -> list[PublishResult]:
        """Publish many jobs with up to ``window`` confirms in flight; one result per request,
        in order: a ``Receipt``, or the error of that job (a job that fails validation does
        not stop the others). A job is a ``Receipt`` only if the broker confirmed it. Nothing
        one job carries makes this raise: every job's fate is in its result. ``on_result``
        hears each job's index and result as soon as it is known (to stream them).

        Jobs are sent in request order as far as the window allows; jobs in flight together
        have no order among them. ``requests`` is read into a list first, so pass very large
        streams in chunks (as ``jobsys publish --file`` does).
        """
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"window must be an integer of at least 1, got {shown(window, 40)}")
        return await in_window(list(requests), self._result_of, window, on_result)

    async def _result_of(self, request: JobRequest) -> PublishResult:
        """The receipt of one job of ``publish_many``, or the error it met."""
        if self._middleware:
            # The middleware's own exceptions propagate, as they do from ``publish``.
            try:
                return cast(Receipt, await around_publish(self._middleware, request, self._raised))
            except JobsysError as exc:
                return exc
        return await self._result_of_one(request)

    async def _raised(self, request: JobRequest) -> Receipt:
        # Inside middleware a failed publish raises, in publish_many as in publish.
        result = await self._result_of_one(request)
        if isinstance(result, JobsysError):
            raise result
        return result

    async def _result_of_one(self, request: JobRequest) -> PublishResult:
        try:
            job = self.prepare(request)
        except JobsysError as exc:
            return exc
        try:
            return await self._publish_prepared(job)
        except JobsysError as exc:
            return exc
        except Exception as exc:
            # Every known failure is mapped to a jobsys error; anything else is a bug, and
            # raising it would lose the receipts of the other jobs. It came after the job was
            # handed to the channel, so it may be queued.
            log.exception("unexpected error publishing job %s (%s)", job.job_id, job.job_type)
            return unknown(job.job_id, job.job_type, f"unexpected {type(exc).__name__}: {exc}")

    def prepare(self, request: JobRequest) -> PreparedJob:
        """Validate and encode ``request`` without any I/O (what ``publish`` does first)."""
        return prepare_job(
            request,
            self._routes,
            self.models,
            self.settings.max_payload_bytes,
            self.delay_layout,
            max_header_bytes=self.settings.max_header_bytes,
        )

    async def _publish_prepared(self, job: PreparedJob) -> Receipt:
        began_ms = now_ms()
        receipt: Receipt | None = None
        # A delayed job that fans out goes once per target queue; all must be confirmed.
        for exchange, routing_key, queues in job.targets:
            outgoing = Outgoing(job.job_id, job.job_type, exchange, routing_key, job.body, queues)
            sent = await self._send(outgoing, job.priority, job.headers, job.delay_s)
            receipt = receipt or sent
        assert receipt is not None  # prepare_job always yields a target
        self._published(job, began_ms)
        return receipt

    def _published(self, job: PreparedJob, began_ms: int) -> None:
        if self._history is not None:
            queues = [q for *_, targets in job.targets for q in targets]
            self._history.record(
                "published", job.job_id, job.job_type, queues, job.delay_s, at_ms=began_ms
            )

    async def _send(
        self, out: Outgoing, priority: int | None, headers: dict[str, Any], delay_s: float | None
    ) -> Receipt:
        message_id = new_message_id()
        # The span writes traceparent into the headers, so it opens before they are encoded.
        with tracing.publish_span(
            headers,
            job_type=out.job_type,
            job_id=out.job_id,
            exchange=out.exchange,
            routing_key=out.routing_key,
            message_id=message_id,
            attempt=1,
            delay_s=delay_s,
        ):
            props = message_properties(out.job_type, priority, headers, message_id)
            await self._channel().publish(out, props)
        return Receipt(out.job_id, out.job_type, out.exchange, out.routing_key, message_id, delay_s)

    def _frame_max(self) -> int:
        return self._edge.frame_max if self._edge is not None else self.connection.frame_max

    def _channel(self) -> Publishes:
        if self._edge is not None:
            return self._edge
        if self._confirms is None:
            raise ConnectionFailed("the producer is not open: call open() or use `async with`")
        return self._confirms
