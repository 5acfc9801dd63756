"""Cancelling jobs that have not run: a ``Producer`` appends cancellations (and a worker its
markers) to the namespace's cancellations stream, which every worker reads
(``jobsys.consume.cancellations``)."""

from __future__ import annotations

from jobsys.broker.confirm import Outgoing, Publishes
from jobsys.publish.properties import message_properties
from jobsys.publish.receipt import Receipt
from jobsys.topology.model import Topology
from jobsys.topology.own import OwnLayout
from jobsys.wire.envelope import check_job_id, new_message_id
from jobsys.wire.headers import HEADER_JOB_ID

__all__ = ["CANCEL_TYPE", "SYNC_TYPE", "CancelsJobs"]

#: The AMQP type of a cancellation on the cancellations stream, and of a worker's marker there.
CANCEL_TYPE = "jobsys.cancel"
SYNC_TYPE = "jobsys.cancel-sync"


class CancelsJobs:
    """The cancelling half of ``Producer``: it publishes on the producer's confirm channel."""

    topology: Topology

    def _channel(self) -> Publishes:
        raise NotImplementedError  # the Producer's

    async def cancel(self, job_id: str) -> Receipt:
        """Cancel job ``job_id`` if it has not started: every worker acks it without running
        it when it arrives (waiting in its queue, delayed, or fired later by a schedule), and
        counts it as cancelled. Returns once the broker confirmed the cancellation.

        jobsys keeps no index of jobs, so it cannot tell whether such a job exists or already
        ran: the cancellation is recorded either way, and remembered for as long as a job can
        wait in the delay levels (``delays.max_delay``). A job already running is not stopped.
        A malformed or oversized id is refused (``MessageError``) before any I/O.
        """
        return await self._to_cancellations(check_job_id(job_id), CANCEL_TYPE)

    async def cancel_marker(self, marker: str) -> Receipt:
        """Append a worker's marker to the cancellations stream (see
        ``jobsys.consume.cancellations``); it cancels nothing."""
        return await self._to_cancellations(marker, SYNC_TYPE)

    async def _to_cancellations(self, job_id: str, kind: str) -> Receipt:
        exchange = OwnLayout(self.topology.namespace).cancel_exchange
        outgoing = Outgoing(job_id, kind, exchange, "", b"", ())
        message_id = new_message_id()
        props = message_properties(kind, None, {HEADER_JOB_ID: job_id}, message_id)
        await self._channel().publish(outgoing, props)
        return Receipt(job_id, kind, exchange, "", message_id)
