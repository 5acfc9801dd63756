"""A ledger of what fault tests did to each job, and a checker that says what became of it.

The categories are those of RabbitMQ's own Jepsen tests:

- **lost**: the broker confirmed the job, yet it was never completed and is not in any queue;
- **recovered**: the publish outcome was unknown (or the publish failed in a way that may
  still have sent it) and the job turned up anyway;
- **unexpected**: the job turned up but was never published, or was refused for certain
  (a nack, a validation error, a connection that never came back before the send);
- **duplicated**: the job ran (started) more than once, or completed more than once, or is
  still queued after completing.

A job "turns up" when a handler completed it, or it is left in a work queue or a dead-letter
queue at the end. Lost and unexpected must be empty in every scenario; duplicates are allowed
only for the jobs a scenario names (typically those in flight at a crash).

A ``Ledger`` is filled by the test: ``record_publish`` for every publish result, ``read_runs``
for the lines a subprocess worker's handler appended ("start <id>", "done <id>"), and
``read_queue`` for what is left in a queue. ``check()`` classifies; ``CheckResult.assert_ok``
fails with a readable diff naming each bad job's history.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aio_pika

from jobsys.errors import (
    JobsysError,
    MessageError,
    PublishOutcomeUnknown,
    QueueFullError,
    UnroutableError,
)
from jobsys.publish.producer import Receipt
from jobsys.wire.headers import HEADER_JOB_ID

PublishState = Literal["confirmed", "unknown", "failed"]
#: How many job ids a failure message shows per category.
SHOWN = 10


@dataclass
class Ledger:
    """Every job a scenario published and every trace of it found afterwards."""

    publish_state: dict[str, PublishState] = field(default_factory=dict)
    failure: dict[str, str] = field(default_factory=dict)  # job id -> error type, when failed
    starts: Counter[str] = field(default_factory=Counter)
    dones: Counter[str] = field(default_factory=Counter)
    queued: Counter[str] = field(default_factory=Counter)  # left in work queues
    dead: Counter[str] = field(default_factory=Counter)  # left in dead-letter queues

    # -- publishing ------------------------------------------------------------------------

    def record_publish(self, job_id: str, result: Receipt | BaseException) -> PublishState:
        """Record one publish result; a later result for the same id (a resubmission) wins
        only when it is better known (confirmed beats unknown beats failed)."""
        state = publish_state_of(result)
        previous = self.publish_state.get(job_id)
        if previous is None or _RANK[state] > _RANK[previous]:
            self.publish_state[job_id] = state
            if state == "failed":
                self.failure[job_id] = type(result).__name__
            else:
                self.failure.pop(job_id, None)
        return state

    def mark(self, job_id: str, state: PublishState) -> None:
        """Record a publish made outside a ``Producer`` (e.g. a raw message, confirmed)."""
        self.publish_state[job_id] = state

    def record_many(
        self, job_ids: Iterable[str], results: Iterable[Receipt | BaseException]
    ) -> None:
        """``record_publish`` for each id with its result (``publish_many`` order)."""
        for job_id, result in zip(job_ids, results, strict=True):
            self.record_publish(job_id, result)

    def with_state(self, state: PublishState) -> set[str]:
        """The job ids whose publish ended in ``state``."""
        return {job_id for job_id, s in self.publish_state.items() if s == state}

    @property
    def confirmed(self) -> set[str]:
        """Jobs the broker confirmed."""
        return self.with_state("confirmed")

    @property
    def unknown(self) -> set[str]:
        """Jobs whose publish outcome is unknown."""
        return self.with_state("unknown")

    @property
    def failed(self) -> set[str]:
        """Jobs known not to have been published."""
        return self.with_state("failed")

    # -- what became of them ---------------------------------------------------------------

    def record_run(self, kind: str, job_id: str) -> None:
        """One handler event: ``start`` or ``done``."""
        if kind == "start":
            self.starts[job_id] += 1
        elif kind == "done":
            self.dones[job_id] += 1
        else:
            raise ValueError(f"unknown handler event {kind!r}")

    def read_runs(self, path: Path) -> None:
        """Add the "start <id>" / "done <id>" lines a handler appended to ``path``
        (other lines are ignored). Call once per file, at the end."""
        if not path.exists():
            return
        for line in path.read_text(encoding="utf-8").splitlines():
            kind, _, job_id = line.partition(" ")
            if kind in ("start", "done") and job_id:
                self.record_run(kind, job_id)

    async def read_queue(self, url: str, queue: str, *, dead: bool = False) -> int:
        """Take every message out of ``queue`` (acked) and count it by job id; returns how
        many were read. ``dead`` files them as dead-lettered."""
        found = await drain_job_ids(url, queue)
        (self.dead if dead else self.queued).update(found)
        return sum(found.values())

    # -- checking --------------------------------------------------------------------------

    def seen(self, job_id: str) -> int:
        """How many copies of the job turned up: completed runs plus copies left in queues."""
        return self.dones[job_id] + self.queued[job_id] + self.dead[job_id]

    def history(self, job_id: str) -> str:
        """One line on everything the ledger knows about ``job_id``."""
        state = self.publish_state.get(job_id, "never published")
        if job_id in self.failure:
            state += f" ({self.failure[job_id]})"
        return (
            f"{job_id}: publish {state}; started {self.starts[job_id]}, "
            f"done {self.dones[job_id]}, queued {self.queued[job_id]}, dead {self.dead[job_id]}"
        )

    def check(self) -> CheckResult:
        """Classify every job the ledger has heard of."""
        ids = (
            set(self.publish_state)
            | set(self.starts)
            | set(self.dones)
            | set(self.queued)
            | set(self.dead)
        )
        result = CheckResult(self)
        for job_id in sorted(ids):
            state = self.publish_state.get(job_id)
            seen = self.seen(job_id)
            if state == "confirmed" and seen == 0:
                result.lost.add(job_id)
            elif seen and state in (None, "failed"):
                result.unexpected.add(job_id)
            elif seen and state == "unknown":
                result.recovered.add(job_id)
            elif seen and state == "confirmed":
                result.ok.add(job_id)
            if seen > 1 or self.starts[job_id] > 1:
                result.duplicated.add(job_id)
        return result


_RANK: dict[PublishState, int] = {"failed": 0, "unknown": 1, "confirmed": 2}


def publish_state_of(result: Receipt | BaseException) -> PublishState:
    """What a publish result says about the job: a receipt is confirmed; a nack, a return or
    a refusal before any I/O is failed; anything else (outcome unknown, a lost connection, a
    timeout, an error nobody expected) is unknown, since the job may have been sent."""
    if isinstance(result, Receipt):
        return "confirmed"
    if isinstance(result, PublishOutcomeUnknown):
        return "unknown"
    if isinstance(result, QueueFullError | UnroutableError | MessageError):
        return "failed"
    if isinstance(result, JobsysError) and not_sent(result):
        return "failed"
    return "unknown"


def not_sent(error: JobsysError) -> bool:
    """True for the producer's errors that promise the job was not sent."""
    return "was not published" in str(error)


@dataclass
class CheckResult:
    """The checker's verdict: job ids by category (``ok`` are confirmed and seen)."""

    ledger: Ledger
    ok: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)
    recovered: set[str] = field(default_factory=set)
    unexpected: set[str] = field(default_factory=set)
    duplicated: set[str] = field(default_factory=set)

    def counts(self) -> dict[str, int]:
        """How many jobs fell in each category."""
        return {
            "ok": len(self.ok),
            "lost": len(self.lost),
            "recovered": len(self.recovered),
            "unexpected": len(self.unexpected),
            "duplicated": len(self.duplicated),
        }

    def summary(self) -> str:
        """One line: the size of every category and of every publish state."""
        ledger = self.ledger
        published = (
            f"confirmed={len(ledger.confirmed)} unknown={len(ledger.unknown)} "
            f"failed={len(ledger.failed)}"
        )
        categories = " ".join(f"{name}={n}" for name, n in self.counts().items())
        return f"{published} | {categories}"

    def problems(self, allowed_duplicates: Iterable[str] = ()) -> str:
        """A readable diff of everything wrong; empty when nothing is."""
        allowed = set(allowed_duplicates)
        sections = [
            ("lost (confirmed, never completed, not in any queue)", self.lost),
            ("unexpected (seen, but never published or refused for certain)", self.unexpected),
            ("duplicated beyond what the scenario allows", self.duplicated - allowed),
        ]
        lines: list[str] = []
        for title, ids in sections:
            if not ids:
                continue
            lines.append(f"{len(ids)} {title}:")
            lines += [f"  {self.ledger.history(job_id)}" for job_id in sorted(ids)[:SHOWN]]
            if len(ids) > SHOWN:
                lines.append(f"  ... and {len(ids) - SHOWN} more")
        return "\n".join(lines)

    def assert_ok(self, allowed_duplicates: Iterable[str] = ()) -> None:
        """Fail unless nothing is lost or unexpected and every duplicate is allowed."""
        problems = self.problems(allowed_duplicates)
        if problems:
            raise AssertionError(f"{self.summary()}\n{problems}")


async def drain_job_ids(url: str, queue: str) -> Counter[str]:
    """Take every message out of ``queue`` (acked) and count them by job id header; a
    message without one counts under its message id, or ``"?"``."""
    found: Counter[str] = Counter()
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=False)
        while (message := await q.get(fail=False, no_ack=True)) is not None:
            job_id = (message.headers or {}).get(HEADER_JOB_ID) or message.message_id or "?"
            found[job_id.decode() if isinstance(job_id, bytes) else str(job_id)] += 1
    finally:
        await connection.close()
    return found
