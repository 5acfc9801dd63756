"""The publishes that settle a failed delivery: a retry through the delay levels, or a copy to
its queue's dead-letter queue.

Each publish is confirmed before the worker acks the original, so a job is never lost between
the two: when the publish fails, the caller requeues the original instead. Which one happens is
decided by the worker's ``_settle``; this module only publishes.

A retried job goes back to the queue it was consumed from (through the delay levels, or
straight through the delivery exchange for no delay), never through its job type's exchange,
which may fan out to other queues that already have their own copy. It carries, in headers,
when its first attempt failed and the exchange and routing key it was first published with, so
that its dead-letter record can say so after any number of retries.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any

from jobsys.consume.attempt import Job, Outcome, deliver_frame
from jobsys.errors import AccessRefused, JobsysError, UnroutableError
from jobsys.publish.producer import Producer
from jobsys.topology.delays import delay_route
from jobsys.topology.model import DEAD_LETTER_EXCHANGE, dead_letter_queue_name
from jobsys.wire.deadletter import dead_letter_headers, record_for
from jobsys.wire.envelope import (
    DL_ORIGINAL_EXCHANGE,
    DL_ORIGINAL_ROUTING_KEY,
    HEADER_ATTEMPT,
    HEADER_FIRST_FAILED_AT_MS,
    HEADER_PUBLISHED_AT_MS,
    Envelope,
    new_job_id,
    now_ms,
)

log = logging.getLogger(__name__)

#: Headers the envelope of a republished job writes afresh.
_RENEWED = (HEADER_ATTEMPT, HEADER_PUBLISHED_AT_MS)


class Republisher:
    """Publishes failed jobs onward through ``producer`` (confirmed, as every publish)."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.host = socket.gethostname()

    async def retry(self, job: Job, outcome: Outcome, queue: str) -> bool:
        """Publish the job as attempt ``job.attempt + 1`` to ``queue`` after
        ``outcome.delay_s`` and await the confirm; False (logged) when it was not confirmed.
        Raises ``UnroutableError`` or ``AccessRefused`` when no retry can ever get through."""
        message = job.message
        props = message.header.properties
        original = props.headers or {}
        exchange, routing_key = _origin(job, original)
        carried = {k: v for k, v in original.items() if k not in _RENEWED}
        carried[HEADER_FIRST_FAILED_AT_MS] = _first_failure(original)
        carried[DL_ORIGINAL_EXCHANGE] = exchange
        carried[DL_ORIGINAL_ROUTING_KEY] = routing_key
        route = delay_route(queue, outcome.delay_s or 0.0, self.producer.delay_levels)
        envelope = Envelope(
            job_id=job.job_id,
            job_type=job.job_type,
            payload=None,
            attempt=job.attempt + 1,
            priority=props.priority,
        )
        try:
            await self.producer.publish_envelope(
                envelope,
                route.exchange,
                route.routing_key,
                body=message.body,
                extra_headers=carried,
                queues=(queue,),
                delay_s=route.delay_s,
                trace_kind="retry",
            )
        except (UnroutableError, AccessRefused):
            raise  # the topology or the permissions are wrong: the worker must stop, not loop
        except JobsysError as exc:
            # Refused (full) or unknown: the original is requeued, so the job is not lost.
            # Only when the outcome is unknown may the retry have gone out too, and the job then
            # runs twice (delivery is at least once; handlers are idempotent by job id).
            log.error(
                "job %s (%s): retry publish failed, requeueing the job: %s",
                job.job_id,
                job.job_type,
                exc,
            )
            return False
        return True

    async def dead_letter(self, job: Job, outcome: Outcome, queue: str) -> bool:
        """Publish a copy of the job (same body, the broker's death history stripped, the
        reason added) to ``queue``'s dead-letter queue and await the confirm; False (logged)
        when it was not confirmed. Raises ``UnroutableError`` or ``AccessRefused`` when no
        dead-letter publish can ever get through (the queue is gone, or may not be written)."""
        message = job.message
        props = message.header.properties
        original = props.headers or {}
        exchange, routing_key = _origin(job, original)
        assert outcome.error is not None
        record = record_for(
            outcome.error,
            attempts=job.attempt,
            failed_at_ms=now_ms(),
            exchange=exchange,
            routing_key=routing_key,
            queue=queue,
            worker_host=self.host,
            with_traceback=outcome.with_traceback,
            first_failed_at_ms=_first_failure(original),
            reason=outcome.reason,
        )
        # A job that could not be decoded has no envelope; this one only carries its identity
        # through the producer, and the original headers (added last) win over its own.
        envelope = Envelope(
            job_id=job.job_id if job.job_id != "?" else (props.message_id or new_job_id()),
            job_type=props.message_type or job.job_type,
            payload=None,
            attempt=job.attempt,
            priority=props.priority,
        )
        try:
            await self.producer.publish_envelope(
                envelope,
                DEAD_LETTER_EXCHANGE,
                dead_letter_queue_name(queue),
                body=message.body,
                extra_headers=dead_letter_headers(original, record),
                queues=(dead_letter_queue_name(queue),),
                trace_kind="dead_letter",
            )
        except (UnroutableError, AccessRefused):
            raise  # the topology or the permissions are wrong: the worker must stop, not loop
        except JobsysError as exc:
            log.error(
                "job %s (%s): dead-letter publish failed, requeueing the job: %s",
                job.job_id,
                job.job_type,
                exc,
            )
            return False
        return True


def _origin(job: Job, headers: Mapping[str, Any]) -> tuple[str, str]:
    """The exchange and routing key the job was first published with: a retried job arrives
    through the delivery exchange and carries its origin in headers."""
    deliver = deliver_frame(job.message)
    exchange = _text(headers.get(DL_ORIGINAL_EXCHANGE))
    routing_key = _text(headers.get(DL_ORIGINAL_ROUTING_KEY))
    if exchange is None or routing_key is None:
        return deliver.exchange or "", deliver.routing_key or ""
    return exchange, routing_key


def _first_failure(headers: Mapping[str, Any]) -> int:
    carried = headers.get(HEADER_FIRST_FAILED_AT_MS)
    if isinstance(carried, int) and not isinstance(carried, bool) and carried > 0:
        return carried
    return now_ms()  # this is the first failure


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None
