"""What a publish answers: a ``Receipt`` (the broker confirmed the job and routed it to a
queue), or, per job of ``publish_many``, the error that job met."""

from __future__ import annotations

from dataclasses import dataclass

from jobsys.errors import JobsysError

__all__ = ["PublishResult", "Receipt"]


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof that the broker confirmed a job and routed it to a queue.

    For a delayed job ``exchange`` and ``routing_key`` are those of the delay level it entered
    and ``delay_s`` the delay applied (rounded up to whole seconds); a delayed job type that
    fans out to several queues was published once per queue and all were confirmed.
    """

    job_id: str
    job_type: str
    exchange: str
    routing_key: str
    message_id: str
    delay_s: float | None = None


#: What ``publish_many`` reports per job: its receipt, or the error that job met.
PublishResult = Receipt | JobsysError
