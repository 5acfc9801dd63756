"""Publishing a job and waiting for its outcome: the caller's half of ``Producer.call``.

A ``Caller`` has a confirm channel of its own on the producer's connection and consumes
RabbitMQ's direct reply-to pseudo-queue (``amq.rabbitmq.reply-to``, no-ack, as the broker
requires) on it, before it publishes a request there: the broker then turns the request's
``reply_to`` into an address of this channel. Each call publishes its job (confirmed and routed,
as every publish) with a fresh ``correlation_id`` and waits for the one reply with that id
(``jobsys.wire.reply``): the result, or ``JobFailed`` when the job was dead-lettered or
cancelled. ``reply_to`` and ``correlation_id`` are AMQP properties, which the delay levels,
retries and dead letters keep, so the reply comes after any number of retries.

No reply by the deadline is ``CallTimeout``; the channel closing while a call waits (a lost
connection) is ``ResultUnknown`` at once, since its address died with it. Either way the job
was published and may still run. Replies are not stored anywhere: a caller that went away
misses its reply, and the broker drops it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import aiormq
from aio_pika import RobustChannel
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pydantic import TypeAdapter, ValidationError

from jobsys.app import PublishMiddleware
from jobsys.broker.confirm import ConfirmChannel, Outgoing
from jobsys.broker.connection import BrokerConnection
from jobsys.errors import CallTimeout, ConfigError, JobFailed, ResultError, ResultUnknown
from jobsys.observe import tracing
from jobsys.publish.middleware import around_publish
from jobsys.publish.prepare import JobRequest, PreparedJob
from jobsys.publish.properties import PERSISTENT
from jobsys.publish.receipt import Receipt
from jobsys.settings import Settings
from jobsys.wire.envelope import CONTENT_ENCODING, CONTENT_TYPE, new_message_id
from jobsys.wire.headers import now_ms
from jobsys.wire.reply import DIRECT_REPLY_TO, Reply, read_reply
from jobsys.wire.table import shown

__all__ = ["Caller", "PendingCall", "check_timeout"]


@dataclass(frozen=True, slots=True)
class PendingCall:
    """A call whose job was published, waiting for its reply (``Caller.start``)."""

    job: PreparedJob
    receipt: Receipt
    correlation_id: str
    deadline: float  # loop time
    timeout_s: float  # as the caller gave it, for the messages


@dataclass(slots=True)
class _Waiting:
    """One call waiting for its reply."""

    future: asyncio.Future[Reply]
    channel: aiormq.Channel  # whose reply address the request carries
    job_id: str


def check_timeout(timeout_s: object) -> float:
    """``timeout_s`` as a positive, finite number of seconds; ``ConfigError`` otherwise."""
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not math.isfinite(timeout_s)
        or timeout_s <= 0
    ):
        raise ConfigError(
            f"a call's timeout_s must be a positive number of seconds, got {shown(timeout_s, 40)}"
        )
    return float(timeout_s)


class Caller:
    """Publishes jobs and waits for their replies (see the module docstring)."""

    def __init__(
        self,
        connection: BrokerConnection,
        settings: Settings,
        refusals_dead_lettered: frozenset[str] = frozenset(),
    ) -> None:
        self._connection = connection
        self._settings = settings
        self._refusals = refusals_dead_lettered
        self._confirms: ConfirmChannel | None = None
        self._consuming_on: aiormq.Channel | None = None
        self._waiting: dict[str, _Waiting] = {}  # by correlation id
        self._lock = asyncio.Lock()

    async def call_through(
        self,
        middleware: tuple[PublishMiddleware, ...],
        request: JobRequest,
        prepare: Callable[[JobRequest], PreparedJob],
        *,
        timeout_s: float,
        returns: Any = None,
        on_published: Callable[[PreparedJob, int], None] | None = None,
    ) -> Any:
        """Publish ``request`` (prepared by ``prepare``) and return its result (validated into
        ``returns`` when given); raises ``JobFailed``, ``CallTimeout``, ``ResultUnknown`` or a
        publish error. ``on_published`` hears of the job, and when its publish began (ms),
        once the broker confirmed it.

        The app's publish ``middleware`` runs around the publish: the chain decides what is
        published (``call_next`` returns the receipt, as for ``publish``), and the call waits
        for the job it published; the chain's time counts against ``timeout_s``. A chain that
        publishes twice waits for the last job; one that returns without publishing is a
        ``ConfigError`` (nothing was sent, and there is nothing to wait for)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        started: list[PendingCall] = []

        async def send(sent: JobRequest) -> Receipt:
            pending = await self.start(
                prepare(sent), deadline=deadline, timeout_s=timeout_s, on_published=on_published
            )
            started.append(pending)
            return pending.receipt

        try:
            await around_publish(middleware, request, send)
        except BaseException:
            for pending in started:
                self.abandon(pending)
            raise
        if not started:
            raise ConfigError(
                f"the publish middleware returned without publishing the {request.job_type!r} "
                "job of a call(): nothing was published, and there is no outcome to wait for"
            )
        for pending in started[:-1]:
            self.abandon(pending)
        return await self.finish(started[-1], returns)

    async def start(
        self,
        job: PreparedJob,
        *,
        deadline: float,
        timeout_s: float,
        on_published: Callable[[PreparedJob, int], None] | None = None,
    ) -> PendingCall:
        """The first half of a call: publish ``job`` with a reply address and register the
        wait for its reply (until ``deadline``, loop time; ``timeout_s`` is the caller's, for
        the messages). End it with ``finish`` or ``abandon``."""
        try:
            async with asyncio.timeout_at(deadline):
                channel = await self._reply_channel()
        except TimeoutError:
            raise _timeout(job, timeout_s, published=False) from None
        correlation_id = uuid.uuid4().hex
        waiting = _Waiting(asyncio.get_running_loop().create_future(), channel, job.job_id)
        self._waiting[correlation_id] = waiting
        try:
            began_ms = now_ms()
            receipt = await self._publish(job, correlation_id)
        except BaseException:
            self._waiting.pop(correlation_id, None)
            raise
        if on_published is not None:
            on_published(job, began_ms)
        return PendingCall(job, receipt, correlation_id, deadline, timeout_s)

    async def finish(self, pending: PendingCall, returns: Any = None) -> Any:
        """The second half of a call: wait for the reply of ``pending`` and return its
        result, or raise as ``call_through`` does."""
        waiting = self._waiting.get(pending.correlation_id)
        try:
            if waiting is None:
                raise _timeout(pending.job, pending.timeout_s, published=True)
            try:
                async with asyncio.timeout_at(pending.deadline):
                    reply = await waiting.future
            except TimeoutError:
                raise _timeout(pending.job, pending.timeout_s, published=True) from None
        finally:
            self.abandon(pending)
        return _outcome(reply, pending.job, returns)

    def abandon(self, pending: PendingCall) -> None:
        """Stop waiting for the reply of ``pending`` (a late one is dropped)."""
        self._waiting.pop(pending.correlation_id, None)

    async def close(self) -> None:
        """Close the call channel; calls still waiting get ``ResultUnknown``."""
        confirms, self._confirms = self._confirms, None
        if confirms is not None and not confirms.robust.is_closed:
            await confirms.robust.close()

    async def _reply_channel(self) -> aiormq.Channel:
        """The live channel, consuming direct reply-to (again after a reconnect)."""
        async with self._lock:
            if self._confirms is None:
                robust = await self._connection.channel(confirms=True)
                assert isinstance(robust, RobustChannel)
                self._confirms = ConfirmChannel(robust, self._settings, self._refusals)
            underlay = cast(aiormq.Channel, await self._confirms.robust.get_underlay_channel())
            if underlay is not self._consuming_on:
                await underlay.basic_consume(DIRECT_REPLY_TO, self._on_reply, no_ack=True)
                self._consuming_on = underlay
                underlay.closing.add_done_callback(functools.partial(self._lost, underlay))
            return underlay

    async def _publish(self, job: PreparedJob, correlation_id: str) -> Receipt:
        assert self._confirms is not None
        receipt: Receipt | None = None
        # A delayed job that fans out goes once per target queue; the first reply wins.
        for exchange, routing_key, queues in job.targets:
            out = Outgoing(job.job_id, job.job_type, exchange, routing_key, job.body, queues)
            message_id = new_message_id()
            with tracing.publish_span(
                job.headers,
                job_type=job.job_type,
                job_id=job.job_id,
                exchange=exchange,
                routing_key=routing_key,
                message_id=message_id,
                attempt=1,
                delay_s=job.delay_s,
            ):
                props = spec.Basic.Properties(
                    content_type=CONTENT_TYPE,
                    content_encoding=CONTENT_ENCODING,
                    headers=job.headers,
                    delivery_mode=PERSISTENT,
                    priority=job.priority,
                    correlation_id=correlation_id,
                    reply_to=DIRECT_REPLY_TO,
                    message_id=message_id,
                    timestamp=datetime.fromtimestamp(int(time.time()), UTC),
                    message_type=job.job_type,
                )
                await self._confirms.publish(out, props)
            sent = Receipt(job.job_id, job.job_type, exchange, routing_key, message_id, job.delay_s)
            receipt = receipt or sent
        assert receipt is not None  # prepare_job always yields a target
        return receipt

    async def _on_reply(self, message: DeliveredMessage) -> None:
        props = message.header.properties
        waiting = self._waiting.get(props.correlation_id or "")
        if waiting is None or waiting.future.done():
            return  # a late reply, a second one of a fan-out, or not ours
        reply = read_reply(props.headers, message.body)
        if reply is not None:
            waiting.future.set_result(reply)

    def _lost(self, channel: aiormq.Channel, _: object) -> None:
        if self._consuming_on is channel:
            self._consuming_on = None
        for waiting in list(self._waiting.values()):
            if waiting.channel is channel and not waiting.future.done():
                waiting.future.set_exception(
                    ResultUnknown(
                        f"job {waiting.job_id}: the channel its reply was to come back on closed "
                        "(connection lost) while waiting; the job was published and may still "
                        "run, or may have run",
                        job_id=waiting.job_id,
                    )
                )


def _timeout(job: PreparedJob, timeout_s: float, *, published: bool) -> CallTimeout:
    if not published:
        return CallTimeout(
            f"job {job.job_id} ({job.job_type}) was not published: the connection was not ready "
            f"within the call's timeout of {timeout_s:g}s",
            job_id=job.job_id,
        )
    return CallTimeout(
        f"no outcome for job {job.job_id} ({job.job_type}) within {timeout_s:g}s; it was "
        "published and may still run (waiting, retrying or running): its outcome will not "
        "reach this caller",
        job_id=job.job_id,
    )


def _outcome(reply: Reply, job: PreparedJob, returns: Any) -> Any:
    if reply.outcome != "ok":
        raise JobFailed(
            job_id=reply.job_id or job.job_id,
            job_type=job.job_type,
            error_type=reply.error_type or "unknown",
            error_message=reply.error_message or "",
            attempts=reply.attempts or 0,
            reason=reply.reason,
            safe_to_resubmit=reply.safe_to_resubmit,
            cancelled=reply.outcome == "cancelled",
        )
    try:
        result = json.loads(reply.body)
    except ValueError:
        raise ResultError(
            f"the result of job {job.job_id} ({job.job_type}) is not JSON; the job succeeded"
        ) from None
    if returns is None:
        return result
    try:
        return _adapter(returns).validate_python(result)
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'result'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)[:5]
        )
        raise ResultError(
            f"the result of job {job.job_id} ({job.job_type}) does not match "
            f"returns={getattr(returns, '__name__', returns)!s}: {fields}; the job succeeded"
        ) from None


@functools.lru_cache(maxsize=256)
def _adapter(returns: Any) -> TypeAdapter[Any]:
    return TypeAdapter(returns)
