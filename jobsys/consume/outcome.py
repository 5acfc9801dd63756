"""How one delivery is settled: the one vocabulary of a job's fate (pure).

``retry.decide`` turns a failure into a ``retry`` or ``dead_letter`` outcome, an attempt that
succeeded is ``ack``, a delivery taken back unrun (shutdown) is ``requeue``, and a delayed job
that arrived before its due time goes back to wait (``wait``, not an attempt), and a job
cancelled before it ran is acked unrun (``cancel``);
``settle.Settler`` carries each out. Spans and metrics show these kinds under their documented
names (``ok``, ``retry``, ``dead_lettered``, ``requeued``), mapped in one place in
``jobsys.observe.tracing``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jobsys.wire.headers import escape_invalid

OutcomeKind = Literal["ack", "retry", "dead_letter", "requeue", "wait", "cancel"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one delivery is settled, and why."""

    kind: OutcomeKind
    error: BaseException | None = None
    #: A handler's traceback helps; a decoding error's only shows jobsys's own code.
    with_traceback: bool = True
    delay_s: float | None = None  # for "retry": how long the job waits before its next run
    reason: str | None = None  # why the job is retried or dead-lettered
    #: For "ack": the handler's return value encoded as JSON (None: it returned None).
    result: bytes | None = None
    #: For "wait": held back by a limit of its job type (``max_running``), not early.
    held_back: bool = False

    @classmethod
    def dead_letter(
        cls, error: BaseException, *, reason: str, with_traceback: bool = True
    ) -> Outcome:
        """Give up on the job: it goes to its queue's dead-letter queue with ``reason``."""
        # A reason quotes the handler (a Reject's text): as text every encoder takes, so the
        # dead letter, the reply and the history event can all be written.
        reason = escape_invalid(reason)
        return cls("dead_letter", error=error, with_traceback=with_traceback, reason=reason)

    @classmethod
    def retry(cls, error: BaseException, delay_s: float, reason: str) -> Outcome:
        """Run the job again after ``delay_s`` seconds, as its next attempt."""
        return cls("retry", error=error, delay_s=delay_s, reason=escape_invalid(reason))

    @classmethod
    def done(cls, result: bytes) -> Outcome:
        """The attempt succeeded and returned ``result`` (JSON): ack the job, reply with it.
        A handler that returns None gets the shared ``ACK`` instead, at no cost."""
        return cls("ack", result=result)

    @classmethod
    def wait(cls, delay_s: float, reason: str) -> Outcome:
        """Send the job back through the delay levels for ``delay_s`` seconds, unrun: it
        arrived before its due time. Not an attempt: its attempt counter stays."""
        return cls("wait", delay_s=delay_s, reason=reason)

    @classmethod
    def hold_back(cls, delay_s: float, reason: str) -> Outcome:
        """Send the job back through the delay levels for ``delay_s`` seconds, unrun: a limit
        of its job type holds it back. Not an attempt: its attempt counter stays."""
        return cls("wait", delay_s=delay_s, reason=reason, held_back=True)


ACK = Outcome("ack")
#: A job cancelled before it ran (``Producer.cancel``): acked without running.
CANCEL = Outcome("cancel")
REQUEUE = Outcome("requeue")
