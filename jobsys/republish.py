"""The publishes that settle a failed delivery: a copy to its queue's dead-letter queue.

Each publish is confirmed before the worker acks the original, so a job is never lost between
the two: when the publish fails, the caller requeues the original instead. Which one happens is
decided by the worker's ``_settle``; this module only publishes.
"""

from __future__ import annotations

import logging
import socket

from jobsys.attempt import Job, Outcome, deliver_frame
from jobsys.deadletter import dead_letter_headers, record_for
from jobsys.envelope import Envelope, new_job_id, now_ms
from jobsys.errors import JobsysError
from jobsys.producer import Producer
from jobsys.topology.model import DEAD_LETTER_EXCHANGE, dead_letter_queue_name

log = logging.getLogger(__name__)


class Republisher:
    """Publishes failed jobs onward through ``producer`` (confirmed, as every publish)."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.host = socket.gethostname()

    async def dead_letter(self, job: Job, outcome: Outcome, queue: str) -> bool:
        """Publish a copy of the job (same body, the broker's death history stripped, the
        reason added) to ``queue``'s dead-letter queue and await the confirm; False (logged)
        when it was not confirmed."""
        message = job.message
        props = message.header.properties
        deliver = deliver_frame(message)
        assert outcome.error is not None
        record = record_for(
            outcome.error,
            attempts=job.attempt,
            failed_at_ms=now_ms(),
            exchange=deliver.exchange,
            routing_key=deliver.routing_key or "",
            queue=queue,
            worker_host=self.host,
            with_traceback=outcome.with_traceback,
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
                extra_headers=dead_letter_headers(props.headers, record),
                queues=(dead_letter_queue_name(queue),),
            )
        except JobsysError as exc:
            log.error(
                "job %s (%s): dead-letter publish failed, requeueing the job: %s",
                job.job_id,
                job.job_type,
                exc,
            )
            return False
        return True
