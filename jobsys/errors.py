"""One exception tree for jobsys, grouped by what the caller can do about each error.

``JobsysError`` is the root of everything jobsys raises on purpose. ``HandlerSignal`` is a
separate root so that ``except JobsysError`` in user code never swallows a handler's request
to retry or reject a job.
"""

from __future__ import annotations


class JobsysError(Exception):
    """Base class of every error jobsys raises on purpose."""


# -- configuration ---------------------------------------------------------------------------


class ConfigError(JobsysError):
    """Raised when settings (URL, TLS options, limits) are missing or inconsistent."""


class KitError(JobsysError):
    """Raised by the in-memory test kit (``jobsys.testing``) when it cannot go on: a clock
    moved by a bad amount, jobs that keep coming back without the kit ever going idle, a
    call made from inside a handler. Nothing was lost: the jobs are still in the kit."""


# -- topology ----------------------------------------------------------------------------------


class TopologyError(JobsysError):
    """Base class of problems with a topology file or with its state on the broker."""


class TopologyLoadError(TopologyError):
    """Raised when a topology file cannot be read or is not valid, listing every problem.

    ``problems`` holds one ``file:line:column: message`` string per problem.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class TopologyValidationError(TopologyLoadError):
    """Raised when a topology file parses but is inconsistent: a dangling reference, a job type
    that reaches no queue, an argument the queue type or broker version does not support."""


class TopologyConflictError(TopologyError):
    """Raised when the broker already has an entity of the topology with other arguments.

    ``diffs`` holds one human-readable line per differing entity or argument.
    """

    def __init__(self, diffs: list[str]) -> None:
        self.diffs = list(diffs)
        super().__init__(
            "the broker's topology differs from the file; nothing was changed:\n"
            + "\n".join(f"  {line}" for line in self.diffs)
        )


class TopologyChangedDuringApply(TopologyConflictError):
    """Raised when the broker refuses a declare for other arguments only after ``apply`` began
    declaring (somebody changed the broker after the plan). Unlike its base class, something
    may have changed: ``applied`` says what was created and what was not declared.
    """

    def __init__(self, diffs: list[str], applied: str) -> None:
        self.diffs = list(diffs)
        self.applied = applied
        # Not the base class's message: "nothing was changed" may not be true here.
        Exception.__init__(
            self,
            "the broker's topology changed while apply was declaring:\n"
            + "\n".join(f"  {line}" for line in self.diffs)
            + f"\n{applied}",
        )


# -- broker ------------------------------------------------------------------------------------


class BrokerError(JobsysError):
    """Base class of errors that come from talking to RabbitMQ."""


class ConnectionFailed(BrokerError):
    """Raised when the broker cannot be reached (refused, timed out, TLS failure)."""


class TLSHandshakeFailed(ConnectionFailed):
    """Raised when the TLS handshake with the broker fails: a certificate not trusted or not
    valid for the host, or a port that does not speak TLS. Retrying with the same settings
    cannot succeed, so jobsys does not wait out its connect deadline on it."""


class HostNotFound(ConnectionFailed):
    """Raised when the broker's host name does not resolve (no such name). Waiting does not
    make a mistyped name resolve, so jobsys does not wait out its connect deadline on it; a
    name server that did not answer in time is a plain ``ConnectionFailed`` and is retried."""


class AccessRefused(BrokerError):
    """Raised for wrong credentials, a missing vhost or refused permissions. Fatal: retrying
    with the same settings cannot succeed, so jobsys never loops on it (and it is not a
    ``ConnectionFailed``, which may heal by itself)."""


class PublishError(BrokerError):
    """Base class of errors where a publish was not confirmed as routed to a queue."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        self.job_id = job_id
        super().__init__(message)


class UnroutableError(PublishError):
    """Raised when the broker returned a mandatory publish because no binding matched it."""


class QueueFullError(PublishError):
    """Raised when the broker nacked a publish, e.g. a queue at its max length with
    ``x-overflow: reject-publish``."""


class BrokerBlockedError(PublishError):
    """Raised when a publish timed out while the broker blocked the connection (memory or disk
    alarm). The job was not published."""


class MessageRefusedError(PublishError):
    """Raised when the broker refused the message itself (e.g. a header it does not accept) and
    closed the channel: the job was not published, and resubmitting it unchanged fails again."""


class PublishOutcomeUnknown(PublishError):
    """Raised when the connection was lost before the confirm arrived: the job may or may not
    be in its queue. Publish it again with the same job id: that may queue a second copy, which
    handlers that deduplicate by ``ctx.job_id`` run once."""


# -- handlers ----------------------------------------------------------------------------------


class HandlerThreadsBusy(JobsysError):
    """Raised as an attempt's failure when a sync handler did not start within its deadline
    because every handler thread was busy (often with handlers running past their own
    deadline); the job did not run, and its retry policy decides what happens next."""


class LoopBlocked(JobsysError):
    """Raised as an attempt's failure when an async handler blocked the worker's event loop:
    it overran its deadline without yielding, or on an earlier run it blocked the loop for so
    long that the broker dropped the connection (then the job is dead-lettered, not run
    again)."""


class StartupFailed(JobsysError):
    """Raised when a startup hook of the ``App`` raised or overran its timeout: the worker
    stopped before it took any job (every job is still in its queue). Fix what the message
    names and start the worker again; a restart alone fails the same way."""


# -- messages ----------------------------------------------------------------------------------


class MessageError(JobsysError):
    """Base class of problems with one job's content; never retried, never fatal to a worker."""


class DecodeError(MessageError):
    """Raised when a message body is not a jobsys envelope (not UTF-8 JSON, wrong content type,
    missing fields)."""


class ContentTypeError(DecodeError):
    """Raised when a message body is not in the form jobsys writes: its content type is missing
    or not ``application/json``, or its content encoding is not ``utf-8`` (e.g. ``gzip``)."""


class UnknownJobTypeError(MessageError):
    """Raised when a job type is not in the topology (when publishing) or has no handler (when
    consuming)."""


class PayloadValidationError(MessageError):
    """Raised when a payload does not match its job type's model; the message names the field
    path."""


class PayloadTooLargeError(MessageError):
    """Raised when an encoded job is larger than the configured limit."""


class ResultError(MessageError):
    """Raised as an attempt's failure when a handler's return value cannot be the job's result:
    not JSON-serialisable (NaN and infinity included), not matching the handler's return
    annotation, larger than ``max_payload_bytes`` encoded, or a coroutine returned unawaited.
    The job is dead-lettered at once: running it again would return the same kind of value."""


# -- waiting for a result (``Producer.call``) ---------------------------------------------------


class JobFailed(JobsysError):
    """Raised by ``call()`` when the job failed for good: dead-lettered after its attempts (or
    at once, for bad input or ``Reject``), or cancelled before it ran. It carries the remote
    error's type and message, the attempts made, the job id, the retry policy's verdict
    (``reason``) and ``safe_to_resubmit``: True when resubmitting (or replaying the dead
    letter) may succeed and no copy of the job is still going to run; False when the job's
    input or result was refused, which resubmitting it unchanged repeats."""

    def __init__(
        self,
        *,
        job_id: str,
        job_type: str,
        error_type: str,
        error_message: str,
        attempts: int,
        reason: str | None,
        safe_to_resubmit: bool,
        cancelled: bool = False,
    ) -> None:
        self.job_id = job_id
        self.job_type = job_type
        self.error_type = error_type
        self.error_message = error_message
        self.attempts = attempts
        self.reason = reason
        self.safe_to_resubmit = safe_to_resubmit
        self.cancelled = cancelled
        if cancelled:
            what = "was cancelled before it ran"
        else:
            plural = "s" if attempts != 1 else ""
            what = (
                f"failed after {attempts} attempt{plural} and was dead-lettered: "
                f"{error_type}: {error_message}"
            )
        advice = (
            "resubmitting it (or replaying its dead letter) may succeed"
            if safe_to_resubmit
            else "resubmitting it unchanged will fail the same way"
        )
        super().__init__(f"job {job_id} ({job_type}) {what}; {advice}")


class ResultUnknown(JobsysError):
    """Raised by ``call()`` when no outcome reached the caller: the connection carrying its
    reply address was lost while it waited. The job was published and may still run, or may
    have run: look it up by ``job_id`` rather than resubmitting blindly (a resubmission with
    the same job id is what idempotent handlers run once)."""

    def __init__(self, message: str, *, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(message)


class CallTimeout(ResultUnknown):
    """Raised by ``call()`` when its timeout passed before the job's outcome arrived. The job
    was published and may still run (it may be waiting, retrying or running); its outcome
    will not reach this caller."""


# -- handler signals ---------------------------------------------------------------------------


class HandlerSignal(Exception):
    """Base class of what a handler raises to steer settlement; not a ``JobsysError``."""


class Retry(HandlerSignal):
    """Raised by a handler to ask for another attempt, after ``delay_s`` or the policy's
    backoff when it is None."""

    def __init__(self, delay_s: float | None = None, reason: str = "retry requested") -> None:
        self.delay_s = delay_s
        self.reason = reason
        super().__init__(reason)


class Reject(HandlerSignal):
    """Raised by a handler to dead-letter the job at once, without retries."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
