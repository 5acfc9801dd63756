"""The names and arguments of the entities jobsys keeps for itself beside the delay levels: the
scheduler's election and state queues (for a topology with ``schedules:``) and the stream of
cancellations (for every topology), all under the topology's namespace (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from jobsys.topology.delays import DEFAULT_NAMESPACE

#: How much of the cancellations stream the broker keeps, at most: about a million
#: cancellations. Workers read back as far as ``delays.max_delay`` (the longest a job can wait
#: in the levels); a cancellation older than what is kept is forgotten.
CANCELLATIONS_MAX_BYTES = 256 * 1024 * 1024
#: Segment files of the stream: retention drops whole segments, so they are kept small.
CANCELLATIONS_SEGMENT_BYTES = 16 * 1024 * 1024

#: Routing key of the refiller's election token on the tokens exchange: ``#`` is not allowed in
#: a job type's name, so no bucket shares it.
REFILLER_KEY = "#refiller"
#: Routing keys on the scheduler's exchange.
TOKEN_KEY = "token"
STATE_KEY = "state"


@dataclass(frozen=True)
class OwnLayout:
    """The scheduler's and the cancellations' entities of one namespace."""

    namespace: str = DEFAULT_NAMESPACE

    @property
    def scheduler_exchange(self) -> str:
        """Direct exchange for the election token and the state records."""
        return f"{self.namespace}.scheduler"

    @property
    def leader_queue(self) -> str:
        """Single-active-consumer queue holding the token: its active consumer leads."""
        return f"{self.namespace}.scheduler.leader"

    @property
    def state_queue(self) -> str:
        """The last slot fired per schedule: one message (``x-max-length: 1``), read by
        leaders only."""
        return f"{self.namespace}.scheduler.state"

    @property
    def status_queue(self) -> str:
        """A copy of the state for ``jobsys schedules list`` to peek at, with the leader."""
        return f"{self.namespace}.scheduler.status"

    @property
    def cancel_exchange(self) -> str:
        """Fanout exchange cancellations are published to."""
        return f"{self.namespace}.cancel"

    @property
    def cancellations(self) -> str:
        """The stream of cancellations every worker reads."""
        return f"{self.namespace}.cancellations"

    @property
    def history_exchange(self) -> str:
        """Fanout exchange job history events are published to (a topology with ``history``)."""
        return f"{self.namespace}.history"

    @property
    def history(self) -> str:
        """The stream of job history events."""
        return f"{self.namespace}.history.events"

    def permits_queue(self, job_type: str, max_running: int) -> str:
        """The queue holding the ``max_running`` permits of ``job_type``. The count is in the
        name: a new limit is a new queue, filled when ``apply`` creates it, and the old one
        (the plan lists it as extra) serves the workers still running with the old file."""
        return f"{self.namespace}.permits.{job_type}.{max_running}"

    @property
    def tokens_exchange(self) -> str:
        """Direct exchange the refiller publishes rate-limit tokens to (key: the job type), and
        its election token (key ``REFILLER_KEY``, which no job type name can be)."""
        return f"{self.namespace}.tokens"

    def tokens_queue(self, job_type: str) -> str:
        """The token bucket of ``job_type``'s ``rate_limit``."""
        return f"{self.namespace}.tokens.{job_type}"

    @property
    def refiller_queue(self) -> str:
        """Single-active-consumer queue electing the one process that refills the buckets."""
        return f"{self.namespace}.refiller"

    @property
    def breaker_exchange(self) -> str:
        """Direct exchange workers publish a circuit breaker's state to (key: the job type)."""
        return f"{self.namespace}.breakers"

    @property
    def breaker_events(self) -> str:
        """The stream of every breaker's changes of state, which every worker reads: a breaker
        opened by one worker pauses the type in all of them."""
        return f"{self.namespace}.breakers.events"

    def breaker_queue(self, job_type: str) -> str:
        """The last state of ``job_type``'s circuit breaker, one message, for ``status``."""
        return f"{self.namespace}.breaker.{job_type}"

    def derived_names(self) -> tuple[str, ...]:
        """Every name above: a topology may not declare one of its own."""
        return (
            self.scheduler_exchange,
            self.leader_queue,
            self.state_queue,
            self.status_queue,
            self.cancel_exchange,
            self.cancellations,
            self.history_exchange,
            self.history,
            self.breaker_exchange,
            self.breaker_events,
            self.tokens_exchange,
            self.refiller_queue,
        )


def last_value_arguments(queue_type: str) -> dict[str, str | int | bool]:
    """A queue that keeps only its newest message (the state and status records)."""
    return {"x-queue-type": queue_type, "x-max-length": 1, "x-overflow": "drop-head"}


def leader_arguments(queue_type: str) -> dict[str, str | int | bool]:
    """The election queue: its first consumer gets every message (the token); when it goes,
    the next one does. At most one token waits: more would be harmless, fewer is never the
    case once any scheduler started."""
    return {
        "x-queue-type": queue_type,
        "x-single-active-consumer": True,
        "x-max-length": 1,
        "x-overflow": "drop-head",
    }


def bucket_arguments(burst: int) -> dict[str, str | int | bool]:
    """A token bucket: at most ``burst`` tokens wait; the refiller's next one pushes out the
    oldest (drop-head), so a full bucket stays full and never grows."""
    return {"x-queue-type": "classic", "x-max-length": burst, "x-overflow": "drop-head"}


def breaker_events_arguments() -> dict[str, str | int | bool]:
    """The breakers' events: small, kept for a day at most (a worker reads back a cool-down)."""
    return {
        "x-queue-type": "stream",
        "x-max-length-bytes": 64 * 1024 * 1024,
        "x-max-age": "1D",
        "x-stream-max-segment-size-bytes": 4 * 1024 * 1024,
    }


def permits_arguments() -> dict[str, str | int | bool]:
    """A permits queue: classic, for a requeued permit goes back to the head and is never
    counted as a redelivery (a quorum queue on 4.x drops a message after 20 returns by default,
    and a permit returns after every job)."""
    return {"x-queue-type": "classic"}


def cancellations_arguments() -> dict[str, str | int | bool]:
    """The cancellations stream: readable from any point by any number of workers."""
    return {
        "x-queue-type": "stream",
        "x-max-length-bytes": CANCELLATIONS_MAX_BYTES,
        "x-stream-max-segment-size-bytes": CANCELLATIONS_SEGMENT_BYTES,
    }


#: Segment files of the history stream: retention drops whole segments.
HISTORY_SEGMENT_BYTES = 64 * 1024 * 1024


def history_arguments(max_age_s: float, max_bytes: int) -> dict[str, str | int | bool]:
    """The history stream: events older than ``max_age_s`` or beyond ``max_bytes`` go, a
    whole segment at a time."""
    return {
        "x-queue-type": "stream",
        "x-max-age": f"{max(1, int(max_age_s))}s",
        "x-max-length-bytes": max_bytes,
        "x-stream-max-segment-size-bytes": min(HISTORY_SEGMENT_BYTES, max(max_bytes // 8, 1)),
    }
