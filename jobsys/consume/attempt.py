"""One attempt at one delivery: read its identity, decode and validate it, run the handler
under its deadline, and say how the delivery is to be settled (an ``Outcome``).

Nothing here acks, publishes or requeues: the worker's ``_settle`` does that with the
``Outcome`` this module returns.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, cast

from aiormq import spec
from aiormq.abc import DeliveredMessage

from jobsys.app import App, HandlerSpec, JobContext
from jobsys.consume.acks import Acks
from jobsys.consume.retry import RetryAfter, decide
from jobsys.duration import format_duration
from jobsys.errors import HandlerSignal, MessageError
from jobsys.settings import Settings
from jobsys.topology.model import Topology
from jobsys.wire.envelope import (
    HEADER_ATTEMPT,
    HEADER_JOB_ID,
    HEADER_PUBLISHED_AT_MS,
    decode_envelope,
)

log = logging.getLogger(__name__)

_DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Outcome:
    """How one delivery is settled."""

    kind: Literal["ack", "dead_letter", "retry", "requeue"]
    error: BaseException | None = None
    # A handler's traceback helps; a decoding error's traceback only shows jobsys's own code.
    with_traceback: bool = True
    delay_s: float | None = None  # for "retry": how long the job waits before its next attempt
    reason: str | None = None  # why the job is retried or dead-lettered

    @classmethod
    def dead_letter(
        cls, error: BaseException, *, with_traceback: bool = True, reason: str | None = None
    ) -> Outcome:
        """Dead-letter with ``error`` as the cause."""
        return cls("dead_letter", error=error, with_traceback=with_traceback, reason=reason)

    @classmethod
    def retry(cls, error: BaseException, delay_s: float, reason: str) -> Outcome:
        """Run the job again after ``delay_s`` seconds."""
        return cls("retry", error=error, delay_s=delay_s, reason=reason)


ACK = Outcome("ack")
REQUEUE = Outcome("requeue")


@dataclass
class Job:
    """One delivery being worked on, and what is known about it so far."""

    message: DeliveredMessage
    acks: Acks[Job]
    tag: int = 0
    redelivered: bool = False
    job_id: str = "?"
    job_type: str = "?"
    attempt: int = 1
    published_at_ms: int | None = None
    #: Already counted in the stats (dead-lettered or retried): its ack is not a "done".
    counted: bool = False

    def identify(self) -> None:
        """Read the job id, type and attempt from the properties and headers, so that logs and
        dead-letter headers name the job even when its body cannot be decoded."""
        props = self.message.header.properties
        headers = props.headers or {}
        job_id = headers.get(HEADER_JOB_ID)
        if isinstance(job_id, bytes):
            job_id = job_id.decode("utf-8", "replace")
        if isinstance(job_id, str) and job_id:
            self.job_id = job_id
        if props.message_type:
            self.job_type = props.message_type
        attempt = headers.get(HEADER_ATTEMPT)
        if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt >= 1:
            self.attempt = attempt
        published = headers.get(HEADER_PUBLISHED_AT_MS)
        if isinstance(published, int) and not isinstance(published, bool) and published > 0:
            self.published_at_ms = published


def deliver_frame(message: DeliveredMessage) -> spec.Basic.Deliver:
    """The ``basic.deliver`` of ``message`` (a consumer never receives get-ok or return)."""
    return cast(spec.Basic.Deliver, message.delivery)


def cancel_requested() -> bool:
    """True when somebody really cancelled the current task (a hard stop)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class AttemptRunner:
    """Runs attempts of the jobs of ``topology`` with ``app``'s handlers."""

    def __init__(self, app: App, topology: Topology, settings: Settings) -> None:
        self.app = app
        self.topology = topology
        self.settings = settings
        self.executor: ThreadPoolExecutor | None = None  # for sync handlers, set by the worker
        self._timeouts = {name: jt.timeout for name, jt in topology.job_types.items()}

    async def run(self, job: Job, queue: str) -> Outcome:
        """Run one attempt of ``job`` (consumed from ``queue``, already identified) and return
        its outcome."""
        message = job.message
        props = message.header.properties
        try:
            envelope = decode_envelope(
                message.body,
                content_type=props.content_type,
                message_type=props.message_type,
                headers=props.headers,
                priority=props.priority,
                max_bytes=self.settings.max_payload_bytes,
            )
            job.job_id, job.job_type, job.attempt = (
                envelope.job_id,
                envelope.job_type,
                envelope.attempt,
            )
            handler = self.app.get(envelope.job_type)
            payload = handler.parse_payload(envelope.payload)
        except MessageError as exc:
            return self.failed(job, exc, with_traceback=False)
        if handler.wants_context:
            ctx = JobContext(
                envelope.job_id,
                envelope.job_type,
                envelope.attempt,
                envelope.headers,
                queue,
                job.redelivered,
            )
            args: tuple[Any, ...] = (payload, ctx)
        else:
            args = (payload,)
        try:
            await self._call(handler, args, job)
        except (Exception, HandlerSignal) as exc:
            return self.failed(job, exc)
        except asyncio.CancelledError as exc:
            if cancel_requested():
                raise  # a hard stop: leave the job unsettled, the broker redelivers it
            return self.failed(job, exc)  # the handler's own cancellation is a failure
        return ACK

    def failed(self, job: Job, error: BaseException, *, with_traceback: bool = True) -> Outcome:
        """The outcome of an attempt that failed with ``error``, as the job type's retry
        policy decides (bad input and ``Reject`` dead-letter at once)."""
        job_type = self.topology.job_types.get(job.job_type)
        decision = decide(
            job_type.retry if job_type is not None else None,
            job.attempt,
            error,
            max_delay_s=self.topology.delays.max_delay,
        )
        if isinstance(decision, RetryAfter):
            return Outcome.retry(error, decision.delay_s, decision.reason)
        return Outcome.dead_letter(error, with_traceback=with_traceback, reason=decision.reason)

    async def _call(self, handler: HandlerSpec, args: tuple[Any, ...], job: Job) -> None:
        timeout_s = self._timeouts.get(job.job_type, _DEFAULT_TIMEOUT_S)
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                if handler.is_async:
                    await handler.func(*args)
                else:
                    loop = asyncio.get_running_loop()
                    await loop.run_in_executor(self.executor, handler.func, *args)
        except TimeoutError:
            if not deadline.expired():
                raise  # the handler's own TimeoutError
            if not handler.is_async:
                log.warning(
                    "job %s (%s): sync handler overran its deadline; its thread runs on in the "
                    "background and its result is ignored",
                    job.job_id,
                    job.job_type,
                )
            raise TimeoutError(
                f"job exceeded its deadline of {format_duration(timeout_s)} "
                f"(the job type's timeout)"
            ) from None
