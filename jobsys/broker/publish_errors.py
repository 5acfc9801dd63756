"""What a failed confirmed publish means for the job, as one typed error: not published
(safe to resubmit), refused for good, or outcome unknown (it may be queued; resubmit with the
same job id). Each message says which, and what to do."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
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


#: "Outcome unknown" lines logged one by one per window; the rest are counted and logged as one
#: line when the window ends. A lost connection fails every publish in flight at once, and
#: thousands of lines, one per job, would bury the one that says why (each publisher still
#: gets its own ``PublishOutcomeUnknown`` with the job id).
LINES_PER_WINDOW = 5
WINDOW_S = 10.0


class UnknownOutcomeLog:
    """The warnings of ``unknown``: the first ``LINES_PER_WINDOW`` of each ``WINDOW_S`` one by
    one, then one line with how many more there were and why. The held count is logged when
    the window ends (a timer on the running loop), at the next warning after it, or at exit."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # the sync producer publishes from its own thread
        self._window_start = -math.inf
        self._logged = 0
        self._held: Counter[str] = Counter()
        self._timer_set = False

    def warn(self, job_id: str, job_type: str, why: str) -> None:
        with self._lock:
            now = self._clock()
            summary = None
            if now - self._window_start >= WINDOW_S:
                summary = self._take()
                self._window_start, self._logged = now, 0
            one_by_one = self._logged < LINES_PER_WINDOW
            set_timer = False
            if one_by_one:
                self._logged += 1
            else:
                self._held[why] += 1
                set_timer, self._timer_set = not self._timer_set, True
            wait_s = self._window_start + WINDOW_S - now
        if summary is not None:
            log.warning(summary)
        if one_by_one:
            log.warning("publish outcome unknown for job %s (%s): %s", job_id, job_type, why)
        elif set_timer:
            with contextlib.suppress(RuntimeError):  # no running loop: the next call or exit
                asyncio.get_running_loop().call_later(max(wait_s, 0.0), self.flush)

    def flush(self) -> None:
        """Log the count held back so far, if any."""
        with self._lock:
            summary = self._take()
        if summary is not None:
            log.warning(summary)

    def _take(self) -> str | None:
        self._timer_set = False
        if not self._held:
            return None
        total = sum(self._held.values())
        reasons = "; ".join(f"{why} ({n})" for why, n in self._held.most_common(3))
        more = len(self._held) - 3
        self._held.clear()
        return (
            f"publish outcome unknown for {total} more job{'s' if total != 1 else ''} within "
            f"{WINDOW_S:g}s, not logged one by one (each publisher got PublishOutcomeUnknown "
            f"with its job id): {reasons}" + (f"; and {more} other reasons" if more > 0 else "")
        )


_unknown_log = UnknownOutcomeLog()
atexit.register(_unknown_log.flush)


def unknown(job_id: str, job_type: str, why: str) -> PublishOutcomeUnknown:
    """The job may or may not have been published (logged as a warning, a few per window:
    ``UnknownOutcomeLog``)."""
    _unknown_log.warn(job_id, job_type, why)
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
