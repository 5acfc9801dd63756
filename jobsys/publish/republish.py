"""Publishing an existing job again -- a retry, a dead letter, a replay -- through the
producer's confirm channel: the half of ``Producer`` that workers and ``jobsys dlq replay`` use.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.context import Context
from pamqp import commands as spec

from jobsys.broker.confirm import ConfirmChannel, Outgoing
from jobsys.broker.connection import BrokerConnection
from jobsys.errors import MessageError
from jobsys.observe import tracing
from jobsys.publish.history import ProducerHistory
from jobsys.publish.properties import copied_properties
from jobsys.publish.receipt import Receipt
from jobsys.wire.envelope import JobProperties, new_message_id
from jobsys.wire.headers import HEADER_ATTEMPT, HEADER_JOB_ID, positive_int, text

#: Bytes of a content-header frame besides the properties: the frame's type, channel, size and
#: end octet (8), the class id, weight and body size (12).
_CONTENT_HEADER_OVERHEAD = 20


class RepublishesJobs:
    """The republishing half of ``Producer``: it publishes on the producer's confirm channel."""

    _history: ProducerHistory | None

    @property
    def connection(self) -> BrokerConnection:
        raise NotImplementedError  # the Producer's

    def _channel(self) -> ConfirmChannel:
        raise NotImplementedError  # the Producer's

    async def republish(
        self,
        body: bytes,
        headers: dict[str, Any],
        exchange: str,
        routing_key: str,
        *,
        kept: JobProperties,
        kind: tracing.PublishKind,
        delay_s: float | None = None,
        queues: Iterable[str] = (),
        parent: Context | None = None,
    ) -> Receipt:
        """Publish an existing job again (a retry, a dead letter, a replay) with the same
        confirm, return and nack handling as ``publish``.

        ``body`` goes out as it is (the original bytes) with ``headers`` as given (built by
        ``jobsys.wire``, which strips the broker's death history) and the properties the job
        ``kept``. ``queues`` names the queues it is meant for, in error messages only. The
        publish gets a PRODUCER span of ``kind``, child of ``parent`` (default: the current
        context, e.g. the attempt that failed).
        """
        job_id = text(headers.get(HEADER_JOB_ID)) or "unknown"
        outgoing = Outgoing(
            job_id, kept.job_type or "unknown", exchange, routing_key, body, tuple(queues)
        )
        attempt = positive_int(headers.get(HEADER_ATTEMPT)) or 1
        message_id = new_message_id()
        with tracing.publish_span(
            headers,
            job_type=outgoing.job_type,
            job_id=job_id,
            exchange=exchange,
            routing_key=routing_key,
            message_id=message_id,
            attempt=attempt,
            delay_s=delay_s,
            kind=kind,
            parent=parent,
        ):
            props = self._copied(outgoing, kept, headers, message_id)
            await self._channel().publish(outgoing, props)
        if kind == "replay" and self._history is not None:
            self._history.record("replayed", job_id, outgoing.job_type, outgoing.queues)
        return Receipt(job_id, outgoing.job_type, exchange, routing_key, message_id, delay_s)

    def _copied(
        self, out: Outgoing, kept: JobProperties, headers: dict[str, Any], message_id: str
    ) -> spec.Basic.Properties:
        # The content header (every property, headers included) must fit one frame: a larger
        # one makes the broker close the whole connection, taking every delivery on it along.
        limit = self.connection.frame_max - _CONTENT_HEADER_OVERHEAD
        try:
            return copied_properties(kept, headers, message_id, max_bytes=limit)
        except MessageError as exc:
            raise type(exc)(f"job {out.job_id} ({out.job_type}) was not published: {exc}") from None
