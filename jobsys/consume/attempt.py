"""One attempt at one delivery: decode and validate it, run the handler under its deadline, and
say how the delivery is to be settled (an ``Outcome``).

Nothing here acks, publishes or requeues: ``settle.Settler`` does that with the ``Outcome``
this module returns. A delivery's identity is read once, by ``Delivery.identify``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from aiormq import spec
from aiormq.abc import DeliveredMessage

from jobsys.app import App, HandlerSpec, JobContext
from jobsys.broker.connection import cancel_requested
from jobsys.broker.deadlines import Deadlines
from jobsys.consume.acks import Acks
from jobsys.consume.breakers import Breakers
from jobsys.consume.followups import Outbox, read_then, send_then
from jobsys.consume.middleware import MIDDLEWARE_SLACK_S, around
from jobsys.consume.outcome import ACK, CANCEL, Outcome
from jobsys.consume.permits import PERMIT_WAIT_S, Permits
from jobsys.consume.rates import TOKEN_WAIT_S, Tokens
from jobsys.consume.result import ResultCodec
from jobsys.consume.retry import decide
from jobsys.consume.threads import DeadlinePassed, HandlerThreads
from jobsys.consume.watchdog import LoopWatchdog
from jobsys.duration import format_duration
from jobsys.errors import DecodeError, LoopBlocked, MessageError
from jobsys.observe import metrics
from jobsys.observe.propagation import current_trace_id
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.model import Topology
from jobsys.wire.envelope import (
    Identity,
    JobProperties,
    decode_envelope,
    not_utf8,
    read_identity,
)
from jobsys.wire.headers import now_ms

log = logging.getLogger(__name__)

_DEFAULT_TIMEOUT_S = 300.0
#: An early job waits in its runner up to this long; beyond it goes back to the delay levels.
_WAIT_HERE_MS = 1000
_UNKNOWN = Identity(job_id=None, job_type=None)


@dataclass(eq=False)
class Delivery:
    """One message delivered to a pool, and what is known about it so far."""

    message: DeliveredMessage
    acks: Acks[Delivery]
    tag: int = 0
    redelivered: bool = False
    identity: Identity = _UNKNOWN
    #: Already counted in the stats (dead-lettered or retried): its ack is not a "done".
    counted: bool = False

    def identify(self) -> Identity:
        """Read the job id, type and attempt from the properties and headers: the one place a
        delivery's identity is read."""
        props = self.message.header.properties
        self.identity = read_identity(props.message_type, props.headers)
        return self.identity

    @property
    def job_id(self) -> str | None:
        """The job id, None when the delivery carries none."""
        return self.identity.job_id

    @property
    def job_type(self) -> str | None:
        """The job type, None when the delivery carries none."""
        return self.identity.job_type

    @property
    def attempt(self) -> int:
        """Which run of the job this is, counted from 1."""
        return self.identity.attempt

    @property
    def deliver(self) -> spec.Basic.Deliver:
        """The ``basic.deliver`` frame (a consumer never receives get-ok or return)."""
        return cast(spec.Basic.Deliver, self.message.delivery)

    def kept_properties(self) -> JobProperties:
        """The properties a retry or dead letter of this delivery keeps."""
        props = self.message.header.properties
        return JobProperties(
            job_type=props.message_type,
            priority=props.priority,
            content_type=props.content_type,
            content_encoding=props.content_encoding,
            correlation_id=props.correlation_id,
            reply_to=props.reply_to,
            app_id=props.app_id,
            # A timestamp past the year 9999 arrives as an integer (jobsys.broker.decoding),
            # which no copy can carry in this property: the copy gets the time of its publish.
            timestamp=props.timestamp if isinstance(props.timestamp, datetime) else None,
        )


def _check_utf8(props: spec.Basic.Properties) -> None:
    """Refuse a delivery whose short strings carry bytes that were not UTF-8 (decoded
    leniently by ``jobsys.broker.decoding``, so the connection survived them)."""
    problem = not_utf8(
        {
            "type": props.message_type,
            "message_id": props.message_id,
            "content_type": props.content_type,
            "content_encoding": props.content_encoding,
            "correlation_id": props.correlation_id,
            "reply_to": props.reply_to,
            "app_id": props.app_id,
            "user_id": props.user_id,
        },
        props.headers or (),
    )
    if problem is not None:
        raise DecodeError(problem)


class AttemptRunner:
    """Runs attempts of the jobs of ``topology`` with ``app``'s handlers."""

    def __init__(self, app: App, topology: Topology, settings: Settings) -> None:
        self.app = app
        self.topology = topology
        self.settings = settings
        #: Set by the worker: the threads of its sync handlers, and its event-loop watchdog.
        self.threads: HandlerThreads | None = None
        self.watchdog: LoopWatchdog | None = None
        #: Set by the worker: the job ids cancelled before they ran.
        self.cancellations: Container[str] = ()
        self._timeouts = {name: jt.timeout for name, jt in topology.job_types.items()}
        self._deadlines = Deadlines()
        #: The app's attempt middleware, outermost first (``jobsys.consume.middleware``).
        self.middleware = app.middlewares
        #: Set by the worker: the permits of job types with ``max_running``.
        self.permits: Permits | None = None
        #: Set by the worker: the circuit breakers of job types with ``breaker``.
        self.breakers: Breakers | None = None
        #: Set by the worker: the token buckets of job types with ``rate_limit``.
        self.tokens: Tokens | None = None
        #: Set by the worker: the producer follow-up jobs go out on.
        self.producer: Producer | None = None
        self.results = ResultCodec(settings.max_payload_bytes)

    async def run(self, delivery: Delivery, queue: str) -> Outcome:
        """Run one attempt of ``delivery`` (consumed from ``queue``, already identified) and
        return its outcome."""
        if delivery.job_id is not None and delivery.job_id in self.cancellations:
            return CANCEL  # before anything else: not run, not held, not sent back to wait
        blocked = self._blocked_before(delivery)
        if blocked is not None:
            return blocked
        early = await self._until_due(delivery)
        if early is not None:
            return early
        if self.breakers is None:
            return await self._permitted(delivery, queue)
        held = self.breakers.hold_back(delivery.job_type)
        if held is not None:
            return held
        outcome = await self._permitted(delivery, queue)
        self.breakers.record(delivery.job_type, outcome)
        return outcome

    async def _permitted(self, delivery: Delivery, queue: str) -> Outcome:
        """Run the attempt once the job type's ``rate_limit`` and ``max_running`` leave room."""
        if self.tokens is not None and self.tokens.limits(delivery.job_type):
            assert delivery.job_type is not None
            if not await self.tokens.take(delivery.job_type):
                metrics.record_held_back(delivery.job_type, "rate_limit")
                return Outcome.hold_back(TOKEN_WAIT_S, "held back: over its rate limit")
        if self.permits is None or not self.permits.limits(delivery.job_type):
            return await self._decoded_and_run(delivery, queue)
        assert delivery.job_type is not None
        permit = await self.permits.take(delivery.job_type)
        if permit is None:
            metrics.record_held_back(delivery.job_type, "max_running")
            log.info(
                "job %s (%s): max_running jobs of its type run already; it waits %ss",
                delivery.job_id,
                delivery.job_type,
                PERMIT_WAIT_S,
            )
            return Outcome.hold_back(PERMIT_WAIT_S, "held back: no permit free (max_running)")
        try:
            return await self._decoded_and_run(delivery, queue)
        finally:
            # However the attempt ended: a success, a raise, a deadline, a cancel.
            await self.permits.release(permit)

    async def _decoded_and_run(self, delivery: Delivery, queue: str) -> Outcome:
        props = delivery.message.header.properties
        try:
            _check_utf8(props)
            envelope = decode_envelope(
                delivery.message.body,
                delivery.identity,
                content_type=props.content_type,
                content_encoding=props.content_encoding,
                headers=props.headers,
                max_bytes=self.settings.max_payload_bytes,
            )
            handler = self.app.get(envelope.job_type)
            payload = handler.parse_payload(envelope.payload)
            then = read_then(props.headers, self.topology.job_types)
        except MessageError as exc:
            return self.failed(delivery, exc)
        ctx: JobContext | None = None
        outbox: Outbox | None = None
        if handler.wants_context or self.middleware:
            if self.producer is not None:
                outbox = Outbox(self.producer, envelope.job_id)
            ctx = JobContext(
                envelope.job_id,
                envelope.job_type,
                envelope.attempt,
                envelope.headers,
                queue,
                delivery.redelivered,
                _as_datetime(delivery.identity.due_at_ms),
                props.priority,
                current_trace_id(props.headers),
                state=self.app.state,
                outbox=outbox,
            )
        args: tuple[Any, ...] = (payload, ctx) if handler.wants_context else (payload,)
        try:
            if self.middleware:  # none: no extra call or await on the hot path
                assert ctx is not None
                timeout_s = self._timeouts.get(handler.job_type, _DEFAULT_TIMEOUT_S)
                # An async handler runs under the chain's deadline alone (one timer per job);
                # a sync one keeps its own, which its thread accounting needs, inside a looser.
                slack = 0.0 if handler.is_async else MIDDLEWARE_SLACK_S
                call = functools.partial(self._call, handler, args, delivery, timed=False)
                result = await around(self.middleware, ctx, call, timeout_s, slack)
            else:
                result = await self._call(handler, args, delivery)
            # The result is checked and encoded before any follow-up goes out: a result that
            # cannot be one fails the attempt, and a failed attempt publishes no follow-up.
            encoded = None if result is None else self.results.encode(handler, result)
            if then is not None or (outbox is not None and outbox.held):
                await self._follow_up(envelope.job_id, outbox, then, result)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and cancel_requested():
                raise  # a hard stop: leave the job unsettled, the broker redelivers it
            # Anything else a handler raises is its failure, whatever its class: its own
            # CancelledError, ``sys.exit()``, KeyboardInterrupt, a BaseException subclass of a
            # careless library. Let through, it would end the worker (exit code 3 reads as
            # "topology differs") or leave the job unacked forever, and the job would come
            # back to do it again on the next worker.
            return self.failed(delivery, exc)
        if encoded is None:
            return ACK  # the cheap path: nothing to encode, nothing to send
        return Outcome.done(encoded)

    async def _follow_up(
        self, job_id: str, outbox: Outbox | None, then: str | None, result: Any
    ) -> None:
        """Publish what the successful attempt held, then its chained job (``followups``)."""
        if outbox is not None:
            await outbox.send()
        if then is not None:
            assert self.producer is not None, "a worker's runner has its producer"
            await send_then(self.producer, job_id, then, result)

    async def _until_due(self, delivery: Delivery) -> Outcome | None:
        """Hold a job that arrived before its due time until it is due: a short wait here, a
        longer one back in the delay levels (``wait``). The levels are timed by the broker's
        clock, which may run a little fast (RabbitMQ's Erlang VM corrects its time by speeding
        its clock up by as much as 1 %), and no job may start before it is due."""
        due = delivery.identity.due_at_ms
        if due is None:
            return None
        early_ms = due - now_ms()
        if early_ms <= 0:
            return None
        if early_ms <= _WAIT_HERE_MS:
            await asyncio.sleep(early_ms / 1000)
            return None
        log.info(
            "job %s arrived %dms before its due time; it waits again", delivery.job_id, early_ms
        )
        return Outcome.wait(math.ceil(early_ms / 1000), f"arrived {early_ms}ms before its due time")

    def _blocked_before(self, delivery: Delivery) -> Outcome | None:
        """A dead letter for a redelivered job that, on its earlier run here, blocked the event
        loop so long that the broker dropped the connection: run again, it would do the same,
        and the job would come back every heartbeat."""
        if not delivery.redelivered or self.watchdog is None:
            return None
        blocked_s = self.watchdog.cost_the_connection(delivery.job_id)
        if blocked_s is None:
            return None
        error = LoopBlocked(
            f"on its previous run the handler blocked the event loop for {blocked_s:.0f}s, past "
            "the connection's heartbeat: the broker dropped the connection and redelivered the "
            "job; it is dead-lettered rather than run again"
        )
        return Outcome.dead_letter(error, reason=str(error), with_traceback=False)

    def failed(self, delivery: Delivery, error: BaseException) -> Outcome:
        """The outcome of an attempt that failed with ``error``, as the job type's retry
        policy decides (bad input and ``Reject`` dead-letter at once)."""
        job_type = self.topology.job_types.get(delivery.job_type or "")
        return decide(
            job_type.retry if job_type is not None else None,
            delivery.attempt,
            error,
            max_delay_s=self.topology.delays.max_delay,
        )

    async def _call(
        self, handler: HandlerSpec, args: tuple[Any, ...], delivery: Delivery, timed: bool = True
    ) -> Any:
        """Run the handler under its deadline; returns what it returned. ``timed=False``: an
        async handler is left to the deadline of the middleware chain around it."""
        timeout_s = self._timeouts.get(handler.job_type, _DEFAULT_TIMEOUT_S)
        if not handler.is_async:
            assert self.threads is not None, "a worker with sync handlers has handler threads"
            try:
                return await self.threads.run(handler.func, args, timeout_s)
            except DeadlinePassed:
                log.warning(
                    "job %s (%s): sync handler overran its deadline; its thread runs on in the "
                    "background and its result is ignored",
                    delivery.job_id,
                    delivery.job_type,
                )
                raise TimeoutError(_overran(timeout_s)) from None
        loop = asyncio.get_running_loop()
        started = loop.time()
        watchdog = self.watchdog
        watched = watchdog.enter(delivery.job_id, delivery.job_type) if watchdog else None
        deadline = self._deadlines.enter(timeout_s) if timed else None
        try:
            result = await handler.func(*args)
        except BaseException as exc:
            expired = deadline is not None and deadline.expired
            timed_out = deadline is not None and self._deadlines.leave(deadline)
            if (timed_out and isinstance(exc, asyncio.CancelledError)) or (
                # A handler (or a client library in it) that turned its deadline's cancel
                # into a TimeoutError of its own: still this job's deadline, as before.
                expired and isinstance(exc, TimeoutError)
            ):
                raise TimeoutError(_overran(timeout_s)) from None
            raise  # the handler's own error, its own TimeoutError included, or a real cancel
        else:
            if deadline is not None:
                # A handler that swallowed its deadline's cancellation and returned: its
                # result stands, as under asyncio.timeout.
                self._deadlines.leave(deadline)
        finally:
            if watched is not None:
                assert watchdog is not None
                watchdog.leave(watched)
        ran_s = loop.time() - started
        if ran_s > timeout_s:
            # The deadline could not fire: the handler never gave the event loop a turn.
            raise LoopBlocked(
                f"{_overran(timeout_s)}: it ran {ran_s:.1f}s without yielding to the event "
                "loop (blocking code in an async handler), so it could not be stopped in time"
            )
        return result


def _as_datetime(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms is not None else None


def _overran(timeout_s: float) -> str:
    return f"job exceeded its deadline of {format_duration(timeout_s)} (the job type's timeout)"
