"""What a failed confirmed publish means for the job, as one typed error: not published
(safe to resubmit), refused for good, or outcome unknown (it may be queued; resubmit with the
same job id). Each message says which, and what to do."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aiormq.exceptions

from jobsys.errors import (
    AccessRefused,
    BrokerBlockedError,
    JobsysError,
    MessageRefusedError,
    PublishOutcomeUnknown,
    QueueFullError,
    UnroutableError,
)
from jobsys.topology.model import DEAD_LETTER_SUFFIX

if TYPE_CHECKING:
    from jobsys.broker.confirm import Outgoing

log = logging.getLogger(__name__)

_UNKNOWN = (
    "outcome unknown: it may be queued; publishing it again with the same job id may queue a "
    "second copy, which handlers that deduplicate by job id run once"
)


def unknown(job_id: str, job_type: str, why: str) -> PublishOutcomeUnknown:
    """The job may or may not have been published (logged as a warning)."""
    log.warning("publish outcome unknown for job %s (%s): %s", job_id, job_type, why)
    return PublishOutcomeUnknown(f"job {job_id} ({job_type}): {why}; {_UNKNOWN}", job_id=job_id)


def publish_error(
    exc: BaseException,
    out: Outgoing,
    *,
    blocked: bool,
    timeout_s: float,
    refusals_dead_lettered: frozenset[str] = frozenset(),
    alone: bool = False,
) -> JobsysError:
    """The typed error for ``exc``, raised by publishing ``out`` and awaiting its confirm;
    ``blocked`` says whether the broker was blocking the connection at the time, ``alone``
    whether ``out`` was the only publish awaiting its confirm on the channel."""
    job_id, job_type, exchange = out.job_id, out.job_type, out.exchange
    if isinstance(exc, TimeoutError):
        if blocked:
            return BrokerBlockedError(
                f"the broker blocked publishing (memory or disk alarm) and job {job_id} "
                f"({job_type}) was not confirmed within {timeout_s:g}s; it may still be "
                "published when the alarm clears; publishing it again with the same job id "
                "may queue a second copy, which handlers that deduplicate by job id run once",
                job_id=job_id,
            )
        return unknown(job_id, job_type, f"no confirm within {timeout_s:g}s")
    if isinstance(exc, aiormq.exceptions.PublishError):
        return UnroutableError(
            f"job {job_id} ({job_type}) is unroutable: no binding on exchange "
            f"{exchange!r} matched routing key {out.routing_key!r} ({reply_text(exc)}); "
            "it was not published",
            job_id=job_id,
        )
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        # A basic.nack: the broker refused the message, e.g. reject-publish overflow.
        return _queue_full(out, refusals_dead_lettered)
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        # The broker refused the publish itself (no write permission on the exchange): the
        # job is certainly not queued, and resubmitting with the same settings cannot help.
        return AccessRefused(
            f"job {job_id} ({job_type}) was not published: the broker refused it "
            f"({reply_text(exc)}); the user needs write permission on exchange {exchange!r}",
        )
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
        return _refused(out, reply_text(exc), alone)
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        if not alone:
            # The broker closed the channel for a publish to a missing exchange, and aiormq
            # failed every confirm pending on it alike: this job may have been queued.
            return unknown(job_id, job_type, f"its channel was closed: {reply_text(exc)}")
        return UnroutableError(
            f"job {job_id} ({job_type}) was not published: {reply_text(exc)} — "
            "has the topology been applied (`jobsys topology apply`)?",
            job_id=job_id,
        )
    return unknown(job_id, job_type, reply_text(exc))


def _refused(out: Outgoing, reply: str, alone: bool) -> JobsysError:
    if not alone:
        # Every confirm pending on the channel failed alike: this job may be the one refused,
        # one the broker discarded after it, or one queued just before it.
        return unknown(out.job_id, out.job_type, f"the broker refused a message ({reply})")
    return MessageRefusedError(
        f"job {out.job_id} ({out.job_type}) was not published: the broker refused the message "
        f"({reply}); resubmitting it unchanged will be refused again",
        job_id=out.job_id,
    )


def _queue_full(out: Outgoing, refusals_dead_lettered: frozenset[str]) -> QueueFullError:
    shown = ", ".join(out.queues) if out.queues else f"behind exchange {out.exchange!r}"
    copies = [f"{q}{DEAD_LETTER_SUFFIX}" for q in out.queues if q in refusals_dead_lettered]
    copied = (
        f"; under reject-publish-dlx the broker put the refused copy in {', '.join(copies)} "
        "(reason maxlen): if you resubmit, do not replay that copy too"
        if copies
        else ""
    )
    return QueueFullError(
        f"queue {shown} is full: the broker refused job {out.job_id} ({out.job_type}); "
        f"it was not published — retry later or raise the queue's max_length{copied} (on a "
        "cluster, a quorum queue whose leader just died may refuse publishes the same way; "
        "jobsys publishes on a new channel after a refusal)",
        job_id=out.job_id,
    )


def reply_text(exc: BaseException) -> str:
    """The broker's reply text carried by ``exc`` (or its type's name)."""
    text = " ".join(str(arg) for arg in exc.args if isinstance(arg, str | int))
    return text or type(exc).__name__
