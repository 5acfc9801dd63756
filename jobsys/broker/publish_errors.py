"""What a failed publish means, as one of jobsys's typed errors.

aiormq reports a publish that did not succeed in several ways; each is mapped here, once, to
what the caller can do about it: unroutable (fix the topology), refused (a full queue: retry
later), blocked (a resource alarm) or unknown (resubmit with the same job id).
"""

from __future__ import annotations

import logging

import aiormq.exceptions

from jobsys.errors import (
    AccessRefused,
    BrokerBlockedError,
    JobsysError,
    PublishOutcomeUnknown,
    QueueFullError,
    UnroutableError,
)
from jobsys.topology.model import DEAD_LETTER_SUFFIX

log = logging.getLogger(__name__)

_UNKNOWN = "outcome unknown — resubmitting with the same job id is safe"
#: Errors that mean the connection or channel went away before the confirm.
CONNECTION_LOST = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPChannelError,
    ConnectionError,
    OSError,
)


def unknown(job_id: str, job_type: str, why: str) -> PublishOutcomeUnknown:
    """The job may or may not have been published (logged as a warning)."""
    log.warning("publish outcome unknown for job %s (%s): %s", job_id, job_type, why)
    return PublishOutcomeUnknown(f"job {job_id} ({job_type}): {why}; {_UNKNOWN}", job_id=job_id)


def publish_error(
    exc: BaseException,
    *,
    job_id: str,
    job_type: str,
    exchange: str,
    routing_key: str,
    queues: tuple[str, ...],
    blocked: bool,
    timeout_s: float,
    refusals_dead_lettered: frozenset[str] = frozenset(),
) -> JobsysError:
    """The typed error for ``exc``, raised by publishing ``job_id`` and awaiting its confirm;
    ``blocked`` says whether the broker was blocking the connection at the time."""
    if isinstance(exc, TimeoutError):
        if blocked:
            return BrokerBlockedError(
                f"the broker blocked publishing (memory or disk alarm) and job {job_id} "
                f"({job_type}) was not confirmed within {timeout_s:g}s; it may still be "
                "published when the alarm clears — resubmitting with the same job id is safe",
                job_id=job_id,
            )
        return unknown(job_id, job_type, f"no confirm within {timeout_s:g}s")
    if isinstance(exc, aiormq.exceptions.PublishError):
        return UnroutableError(
            f"job {job_id} ({job_type}) is unroutable: no binding on exchange "
            f"{exchange!r} matched routing key {routing_key!r} ({reply_text(exc)}); "
            "it was not published",
            job_id=job_id,
        )
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        # A basic.nack: the broker refused the message, e.g. reject-publish overflow.
        shown = ", ".join(queues) if queues else f"behind exchange {exchange!r}"
        copies = [f"{q}{DEAD_LETTER_SUFFIX}" for q in queues if q in refusals_dead_lettered]
        copied = (
            f"; under reject-publish-dlx the broker put the refused copy in {', '.join(copies)} "
            "(reason maxlen): if you resubmit, do not replay that copy too"
            if copies
            else ""
        )
        return QueueFullError(
            f"queue {shown} is full: the broker refused job {job_id} ({job_type}); "
            f"it was not published — retry later or raise the queue's max_length{copied}",
            job_id=job_id,
        )
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        # The broker refused the publish itself (no write permission on the exchange): the
        # job is certainly not queued, and resubmitting with the same settings cannot help.
        return AccessRefused(
            f"job {job_id} ({job_type}) was not published: the broker refused it "
            f"({reply_text(exc)}); the user needs write permission on exchange {exchange!r}",
        )
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return UnroutableError(
            f"job {job_id} ({job_type}) was not published: {reply_text(exc)} — "
            "has the topology been applied (`jobsys topology apply`)?",
            job_id=job_id,
        )
    return unknown(job_id, job_type, reply_text(exc))


def reply_text(exc: BaseException) -> str:
    """The broker's reply text carried by ``exc`` (or its type's name)."""
    text = " ".join(str(arg) for arg in exc.args if isinstance(arg, str | int))
    return text or type(exc).__name__
