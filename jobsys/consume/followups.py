"""Follow-up jobs: held while the handler runs, published when the attempt succeeded.

``ctx.publish(...)`` (``JobContext.hold`` in a sync handler) validates the job at once and
keeps it in the attempt's ``Outbox``. Only when the handler and its middleware returned are the
held jobs published, in order, each awaiting its confirm, and after them the job a
``jobsys-then`` header asks for (the handler's return value as its payload); only then is the
parent acked. A failed attempt publishes none of them. A follow-up that cannot be published
(unroutable, refused, the outcome unknown) fails the attempt, which is retried or dead-lettered
as its policy says, instead of being acked without it.

The ids come from the parent's (``jobsys.wire.chain``): a crash between the confirms and the
ack, or a failure of a later follow-up, makes the next attempt publish the same ids again.
Delivery is at least once, for follow-ups too: their handlers deduplicate by ``ctx.job_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from jobsys.errors import ConfigError, MessageError
from jobsys.publish.prepare import JobRequest
from jobsys.publish.producer import Producer
from jobsys.wire.chain import THEN_SUFFIX, followup_id, then_job_type
from jobsys.wire.headers import HEADER_THEN
from jobsys.wire.table import shown


class Outbox:
    """The follow-ups of one attempt of job ``parent``."""

    __slots__ = ("held", "parent", "producer")

    def __init__(self, producer: Producer, parent: str) -> None:
        self.producer = producer
        self.parent = parent
        self.held: list[JobRequest] = []

    def hold(
        self,
        job_type: str,
        payload: Any,
        *,
        priority: int | None,
        delay_s: float | None,
        headers: Mapping[str, Any] | None,
        run_at: datetime | None,
        then: str | None,
    ) -> str:
        """Validate one follow-up (raising what ``publish`` would) and keep it."""
        job_id = followup_id(self.parent, len(self.held) + 1)
        request = JobRequest(job_type, payload, priority, delay_s, job_id, headers, run_at, then)
        self.producer.prepare(request)
        self.held.append(request)
        return job_id

    async def send(self) -> None:
        """Publish the held jobs in order, each confirmed; raises the first failure."""
        for request in self.held:
            await self.producer.publish_request(request)


def read_then(headers: Mapping[str, Any] | None, known: Mapping[str, object]) -> str | None:
    """The job type a delivery's ``jobsys-then`` header names, None without one; a hostile
    value raises a ``MessageError`` (the job is dead-lettered with the reason, unrun)."""
    if not headers:
        return None
    value = headers.get(HEADER_THEN)
    return None if value is None else then_job_type(value, known)


async def send_then(producer: Producer, parent: str, job_type: str, result: Any) -> None:
    """Publish the chained job: ``result`` as the payload of ``job_type``, confirmed. A
    result that is not a valid payload is a ``MessageError`` naming the chain."""
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    request = JobRequest(job_type, result, job_id=followup_id(parent, THEN_SUFFIX))
    try:
        producer.prepare(request)
    except (MessageError, ConfigError) as exc:
        raise type(exc)(
            f"the return value cannot be the payload of {shown(job_type, 80)} "
            f"({HEADER_THEN}): {exc}"
        ) from None
    await producer.publish_request(request)
