"""Settlement: the one place a delivery is acked, requeued, retried or dead-lettered.

A retry or a dead letter is a publish first: the job goes back to the queue it was consumed
from (through the delay levels, or straight through the delivery exchange for no delay), or a
copy goes to that queue's dead-letter queue; only once the broker confirmed that publish is the
original acked. If the publish was not confirmed the original is requeued, so a job is never
lost between the two (at worst it runs twice: delivery is at least once). A publish that can
never succeed (the delay levels or the dead-letter queue are gone, or may not be written) stops
the worker through ``on_fatal`` rather than requeueing the job forever.

A retry never goes through its job type's exchange, which may fan out to other queues that
already have their own copy. It carries, in headers, when its first attempt failed and the
exchange and routing key it was first published with, so that its dead-letter record can say so
after any number of retries.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from jobsys.consume.attempt import Delivery
from jobsys.consume.options import WorkerStats
from jobsys.consume.outcome import Outcome
from jobsys.consume.reply import ReplySender
from jobsys.duration import format_duration
from jobsys.errors import (
    AccessRefused,
    JobsysError,
    MessageError,
    TopologyError,
    UnroutableError,
)
from jobsys.publish.producer import Producer
from jobsys.topology.model import dead_letter_queue_name
from jobsys.wire.deadletter import dead_letter_headers, record_for
from jobsys.wire.envelope import new_job_id
from jobsys.wire.headers import (
    HEADER_DROPPED_HEADERS,
    dropped_digest,
    due_at_ms,
    escape_invalid,
    first_failed_at_ms,
    now_ms,
    origin_of,
    republishable,
    retry_headers,
    sendable_headers,
)

log = logging.getLogger(__name__)


class Settler:
    """Settles deliveries: acks through their channel's coalesced ``Acks``, republishes
    through ``producer`` (confirmed, as every publish), counts what it did in ``stats``.

    ``on_fatal`` gets the error of a republish that can never succeed; ``on_settled`` runs
    after every settlement that counts (a supervisor's ``max_jobs``).
    """

    def __init__(
        self,
        producer: Producer,
        stats: WorkerStats,
        *,
        on_fatal: Callable[[JobsysError], None],
        on_settled: Callable[[], None],
    ) -> None:
        self.producer = producer
        self.stats = stats
        self.host = socket.gethostname()
        self._on_fatal = on_fatal
        self._on_settled = on_settled
        #: Set by the worker: replies to callers waiting in ``Producer.call`` (sent just before
        #: the ack, see ``jobsys.consume.reply``).
        self.replies: ReplySender | None = None

    async def settle(self, delivery: Delivery, outcome: Outcome, queue: str) -> Outcome:
        """Carry out ``outcome`` for ``delivery`` (consumed from ``queue``); returns the
        outcome applied, which is ``requeue`` when a republish was not confirmed."""
        if outcome.kind == "ack":
            if self.replies is not None and delivery.message.header.properties.reply_to:
                await self.replies.succeeded(delivery, outcome)
            delivery.acks.ack(delivery)  # counted as done in on_acks_sent, once the ack is out
            return outcome
        if outcome.kind == "requeue":
            self.stats.requeued += 1
            await delivery.acks.nack(delivery.tag)
            return outcome
        if outcome.kind == "wait":
            return await self._wait_again(delivery, outcome, queue)
        if outcome.kind == "cancel":
            delivery.counted = True
            self.stats.cancelled += 1
            log.info(
                "job %s (%s) was cancelled: acked without running",
                delivery.job_id,
                delivery.job_type,
            )
            if self.replies is not None and delivery.message.header.properties.reply_to:
                await self.replies.failed(delivery, outcome)
            delivery.acks.ack(delivery)
            return outcome
        try:
            applied = await self._republish(delivery, outcome, queue)
        except (UnroutableError, AccessRefused) as exc:
            # Requeueing and carrying on would bring the job straight back, forever: keep it
            # in its queue and stop with one message.
            self.stats.requeued += 1
            await delivery.acks.nack(delivery.tag)
            self._on_fatal(_cannot_republish(exc, outcome, queue))
            return Outcome("requeue", error=outcome.error)
        if applied is None:
            await delivery.acks.nack(delivery.tag)  # keep the job: better twice than never
            return Outcome("requeue", error=outcome.error)
        outcome = applied
        delivery.counted = True
        self._log(delivery, outcome, queue)
        if outcome.kind == "retry":
            self.stats.retried += 1
        else:
            self.stats.dead_lettered += 1
            if self.replies is not None and delivery.message.header.properties.reply_to:
                await self.replies.failed(delivery, outcome)
        delivery.acks.ack(delivery)
        self._on_settled()
        return outcome

    def on_acks_sent(self, sent: list[Delivery], lost: list[Delivery]) -> None:
        """Count acked deliveries as done; an ack that found its channel gone is a job the
        broker requeued."""
        self.stats.done += sum(1 for delivery in sent if not delivery.counted)
        for delivery in lost:
            self.stats.lost_acks += 1
            log.warning(
                "job %s (%s): ack failed because the channel was lost; the broker requeued the job",
                delivery.job_id,
                delivery.job_type,
            )
        self._on_settled()

    async def _republish(self, delivery: Delivery, outcome: Outcome, queue: str) -> Outcome | None:
        """Publish the retry or the dead letter of ``delivery`` and await the confirm; returns
        the outcome applied, or None (logged) when the publish was not confirmed. Raises
        ``UnroutableError`` or ``AccessRefused`` when no such publish can ever get through.

        A copy that cannot be published as it is (headers too large for a frame, values no
        client can encode) is dead-lettered without them: its record says why, and a digest
        stands in for the headers. Sending it anyway would make the broker close the whole
        connection, redeliver it, and run every other job on that connection again.
        """
        try:
            await self._publish_copy(delivery, outcome, queue, trimmed=None)
        except MessageError as exc:
            if outcome.kind == "retry":
                outcome = Outcome.dead_letter(
                    outcome.error or exc,
                    reason=f"cannot be retried: {exc}",
                    with_traceback=outcome.with_traceback,
                )
            try:
                await self._publish_copy(delivery, outcome, queue, trimmed=str(exc))
            except MessageError as again:  # only the job's own properties are left: a bug
                log.error("job %s: cannot dead-letter it even trimmed: %s", delivery.job_id, again)
                return None
        except (UnroutableError, AccessRefused):
            raise  # the topology or the permissions are wrong: the worker must stop, not loop
        except JobsysError as exc:
            # Refused (full) or unknown: the original is requeued, so the job is not lost.
            # Only when the outcome is unknown may the copy have gone out too, and the job then
            # runs twice (delivery is at least once; handlers are idempotent by job id).
            log.error(
                "job %s (%s): %s publish failed, requeueing the job: %s",
                delivery.job_id,
                delivery.job_type,
                outcome.kind.replace("_", "-"),
                exc,
            )
            return None
        return outcome

    async def _publish_copy(
        self, delivery: Delivery, outcome: Outcome, queue: str, *, trimmed: str | None
    ) -> None:
        """Publish the retry or dead letter of ``delivery``; ``trimmed`` (why the original
        headers could not go along) makes it a dead letter carrying only its identity, the
        record and a digest of the headers."""
        assert outcome.error is not None
        message = delivery.message
        original = sendable_headers(message.header.properties.headers or {})
        deliver = delivery.deliver
        origin = origin_of(original, deliver.exchange or "", deliver.routing_key or "")
        first_failure = first_failed_at_ms(original, now_ms())
        job_id = delivery.job_id or escape_invalid(
            message.header.properties.message_id or new_job_id()
        )
        if outcome.kind == "retry":
            route = self.producer.delay_layout.route(queue, outcome.delay_s or 0.0)
            exchange, routing_key, delay_s = route.exchange, route.routing_key, route.delay_s
            target = queue
            headers = retry_headers(
                original,
                job_id=job_id,
                attempt=delivery.attempt + 1,
                origin=origin,
                first_failed_at_ms=first_failure,
                due_at=due_at_ms(route.delay_s, now_ms()) if route.delay_s else None,
            )
        else:
            target = routing_key = dead_letter_queue_name(queue)
            exchange, delay_s = self.producer.topology.dead_letter_exchange, None
            reason = outcome.reason
            if trimmed is not None:
                reason = f"{reason or 'dead-lettered'}; original headers dropped: {trimmed}"
            record = record_for(
                outcome.error,
                attempts=delivery.attempt,
                failed_at_ms=now_ms(),
                exchange=origin.exchange,
                routing_key=origin.routing_key,
                queue=queue,
                worker_host=self.host,
                with_traceback=outcome.with_traceback,
                first_failed_at_ms=first_failure,
                reason=reason,
            )
            kept_headers = original
            if trimmed is not None:
                kept_headers = {HEADER_DROPPED_HEADERS: dropped_digest(original)}
            headers = dead_letter_headers(kept_headers, record, job_id=job_id)
        await self.producer.republish(
            message.body,
            headers,
            exchange,
            routing_key,
            kept=delivery.kept_properties().sendable(),
            kind="retry" if outcome.kind == "retry" else "dead_letter",
            delay_s=delay_s,
            queues=(target,),
        )

    async def _wait_again(self, delivery: Delivery, outcome: Outcome, queue: str) -> Outcome:
        """Send an early job back through the delay levels, unrun and with the same attempt
        number and due time; then ack it. Not confirmed: requeue it (it comes back early
        again, and is held again)."""
        message = delivery.message
        route = self.producer.delay_layout.route(queue, outcome.delay_s or 0.0)
        headers = republishable(sendable_headers(message.header.properties.headers or {}))
        try:
            await self.producer.republish(
                message.body,
                headers,
                route.exchange,
                route.routing_key,
                kept=delivery.kept_properties().sendable(),
                kind="wait",
                delay_s=route.delay_s,
                queues=(queue,),
            )
        except (UnroutableError, AccessRefused) as exc:
            self.stats.requeued += 1
            await delivery.acks.nack(delivery.tag)
            self._on_fatal(_cannot_republish(exc, Outcome.retry(exc, 0.0, ""), queue))
            return Outcome("requeue")
        except JobsysError as exc:
            log.error(
                "job %s: publish to wait again failed, requeueing it: %s", delivery.job_id, exc
            )
            await delivery.acks.nack(delivery.tag)
            return Outcome("requeue")
        delivery.counted = True
        if outcome.held_back:
            self.stats.held_back += 1
        else:
            self.stats.early += 1
        delivery.acks.ack(delivery)
        return outcome

    def _log(self, delivery: Delivery, outcome: Outcome, queue: str) -> None:
        error_type = type(outcome.error).__name__
        if outcome.kind == "retry":
            log.info(
                "job %s (%s): attempt %d failed (%s); retrying in %s",
                delivery.job_id,
                delivery.job_type,
                delivery.attempt,
                error_type,
                format_duration(outcome.delay_s or 0.0),
            )
        else:
            log.warning(
                "job %s (%s) dead-lettered to %s: %s (%s)",
                delivery.job_id,
                delivery.job_type,
                dead_letter_queue_name(queue),
                error_type,
                outcome.reason or "no retry",
            )


def _cannot_republish(exc: JobsysError, outcome: Outcome, queue: str) -> JobsysError:
    """The fatal error for a retry or dead-letter publish that can never succeed."""
    if isinstance(exc, AccessRefused):
        return exc
    target = (
        f"dead-letter queue {dead_letter_queue_name(queue)!r}"
        if outcome.kind == "dead_letter"
        else f"the delay levels and delivery exchange for queue {queue!r}"
    )
    return TopologyError(
        f"topology drift: the {outcome.kind.replace('_', '-')} publish for a job of queue "
        f"{queue!r} was unroutable ({exc}); {target} is missing — run `jobsys topology apply FILE`"
    )
