"""Frozen pydantic models of a topology file (``version: 1``).

Shapes only: types, ranges and unknown keys. Checks that relate one part of the file to
another (dangling references, reachability, broker-version support) live in ``check.py`` so
that every problem can be reported at once with its position.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from jobsys.duration import format_duration
from jobsys.topology import limits
from jobsys.topology.delays import DEFAULT_NAMESPACE, MAX_DELAY_S, DelayLayout
from jobsys.topology.fields import (
    AmqpCount,
    Duration,
    Headers,
    Name,
    Number,
    Replicas,
    RoutingKey,
    Whole,
    refuse,
)
from jobsys.topology.schedules import Schedule

#: Name of the direct exchange through which workers publish to dead-letter queues and through
#: which the broker dead-letters (max length, delivery limit) into them, in the default
#: namespace (a topology with a namespace of its own uses ``<namespace>.dead-letter``).
DEAD_LETTER_EXCHANGE = "jobsys.dead-letter"
#: Suffix of every queue's dead-letter queue: ``emails`` -> ``emails.dead``.
DEAD_LETTER_SUFFIX = ".dead"
#: Prefix reserved for names jobsys derives itself.
RESERVED_PREFIX = "jobsys."

#: Message headers RabbitMQ routes on for any exchange type: a copy goes to every routing key they
#: list. (``jobsys.wire.headers.ROUTING_HEADERS`` holds the same names; the rooms are apart.)
_ROUTING_HEADERS = frozenset({"cc", "bcc"})

#: The largest ``max_running`` of a job type: its permits are messages in one queue.
MAX_PERMITS = 10_000
#: The largest weight of a queue in a weighted pool, and the most queues one pool serves.
MAX_WEIGHT = 1000
MAX_POOL_QUEUES = 64


def dead_letter_queue_name(queue: str) -> str:
    """The dead-letter queue of ``queue``: ``emails`` -> ``emails.dead``."""
    return f"{queue}{DEAD_LETTER_SUFFIX}"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class Exchange(_Frozen):
    """An exchange jobs are published to."""

    type: Literal["direct", "topic", "fanout", "headers"]
    durable: bool = True


class ConsumerPool(_Frozen):
    """Defaults of the consumer pool that serves a queue."""

    concurrency: Whole = Field(default=10, ge=1, le=10_000)
    prefetch: Whole = Field(default=20, ge=1, le=65_535)

    @model_validator(mode="after")
    def _prefetch_covers_concurrency(self) -> ConsumerPool:
        if self.prefetch < self.concurrency:
            raise ValueError(
                f"prefetch ({self.prefetch}) is below concurrency ({self.concurrency}): "
                "the pool could never run that many jobs at once"
            )
        return self


#: A queue's weight in a weighted pool: a whole number, 1 to 1000 (a string, a float or a bool is
#: refused rather than read as a number).
Weight = Annotated[int, Field(strict=True, ge=1, le=MAX_WEIGHT)]


class WeightedPool(_Frozen):
    """A consumer pool that serves several queues, sharing its runners among them by weight.

    While every queue has jobs waiting, a queue of weight w gets w / (sum of weights) of the
    jobs started; a queue with nothing waiting is skipped, its share going to the others
    (``jobsys.consume.fair``). ``concurrency`` bounds the jobs running in the whole pool;
    ``prefetch`` is the heaviest queue's; the others prefetch in proportion to their weight, and
    each at least ``concurrency`` so that any one queue can keep every runner busy when the
    others are empty.
    """

    queues: dict[Name, Weight] = Field(min_length=1, max_length=MAX_POOL_QUEUES)
    concurrency: int = Field(default=10, strict=True, ge=1, le=10_000)
    prefetch: int | None = Field(default=None, strict=True, ge=1, le=65_535)

    @model_validator(mode="after")
    def _prefetch_covers_concurrency(self) -> WeightedPool:
        if self.prefetch is not None and self.prefetch < self.concurrency:
            raise ValueError(
                f"prefetch ({self.prefetch}) is below concurrency ({self.concurrency}): "
                "every queue prefetches at least the concurrency, so that any one can keep the "
                "pool busy while the others are empty"
            )
        return self

    @property
    def heaviest_prefetch(self) -> int:
        """What the heaviest queue's channel prefetches: ``prefetch``, else four times the
        concurrency and at least 32. Jobs are started from what a worker holds, so a queue's
        share holds only while its next jobs are already there when a runner frees up: the
        heaviest queue, consumed fastest, needs the deepest buffer to cover the broker's refill."""
        if self.prefetch is not None:
            return self.prefetch
        return min(max(4 * self.concurrency, 32), 65_535)

    def prefetch_of(self, queue: str) -> int:
        """What ``queue``'s channel prefetches: the heaviest queue's prefetch scaled by its
        weight, and never below the concurrency, so that any one queue can keep every runner
        busy while the others are empty. A light queue's jobs are not held back from other
        workers in a deep buffer they would wait long in."""
        scaled = -(-self.heaviest_prefetch * self.queues[queue] // max(self.queues.values()))
        return max(self.concurrency, scaled)

    def shares(self) -> dict[str, float]:
        """Each queue's share of the jobs started while every queue has a backlog."""
        total = sum(self.queues.values())
        return {name: weight / total for name, weight in self.queues.items()}


class Queue(_Frozen):
    """A work queue. Every work queue gets a dead-letter queue, ``<name>.dead``."""

    type: Literal["classic", "quorum"]
    durable: bool = True
    max_priority: Whole | None = Field(default=None, ge=1, le=255)
    max_length: AmqpCount | None = None
    max_length_bytes: AmqpCount | None = None
    overflow: Literal["drop-head", "reject-publish", "reject-publish-dlx"] | None = None
    message_ttl: Annotated[Duration, refuse(limits.message_ttl_problem)] | None = None
    delivery_limit: Annotated[AmqpCount, Field(ge=1)] | None = None
    dead_letter_strategy: Literal["at-most-once", "at-least-once"] | None = None
    #: Quorum replicas (``x-quorum-initial-group-size``) of the queue and its dead-letter queue;
    #: the broker's default (every cluster member, at most its configured size) when unset.
    replicas: Replicas | None = None
    #: The broker's consumer timeout for this queue (``x-consumer-timeout``, RabbitMQ >= 3.12):
    #: the job types it serves may then run up to it instead of the server's default 30m.
    consumer_timeout: Annotated[Duration, Field(gt=0, le=7 * 86400)] | None = None
    consumer: ConsumerPool = ConsumerPool()


class Binding(_Frozen):
    """A binding from an exchange to a queue, by routing key (pattern) or header match."""

    exchange: Name
    queue: Name
    routing_key: Annotated[RoutingKey, Field(max_length=255)] = ""
    match: Literal["all", "any"] | None = None
    headers: Headers | None = None


class ExponentialBackoff(_Frozen):
    """Delay before attempt n+1: ``min(max, initial * multiplier**(n-1))``, +- ``jitter``."""

    initial: Duration = 1.0
    multiplier: Number = Field(default=2.0, ge=1.0, le=100.0)
    max: Duration = 3600.0
    jitter: Number = Field(default=0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> ExponentialBackoff:
        if self.max < self.initial:
            raise ValueError(
                f"max ({format_duration(self.max)}) is below initial "
                f"({format_duration(self.initial)})"
            )
        return self


class RetryPolicy(_Frozen):
    """How often a failing job is tried, and how long it waits in between.

    ``max_attempts`` counts every run, the first included. Give either ``backoff`` or an
    explicit list of ``delays`` (one per retry; the last repeats when attempts outnumber it).
    """

    max_attempts: Whole = Field(default=3, ge=1, le=1000)
    backoff: ExponentialBackoff | None = None
    delays: list[Duration] | None = Field(default=None, min_length=1)
    dont_retry: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_schedule(self) -> RetryPolicy:
        if self.backoff is not None and self.delays is not None:
            raise ValueError("give either backoff or delays, not both")
        return self


#: The fastest rate limit: tokens are messages, published by one refiller.
MAX_RATE_PER_S = 10_000.0
_RATE = re.compile(r"^([0-9]{1,9}(?:\.[0-9]{1,6})?)/(s|m|h)$")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _rate_per_s(value: object) -> float:
    if not isinstance(value, str):
        raise ValueError("a rate limit is written as a count per unit: 50/s, 100/m or 1000/h")
    match = _RATE.match(value.strip())
    if match is None:
        raise ValueError(
            f"{value!r} is not a rate limit: write a count per s, m or h (50/s, 100/m, 1000/h)"
        )
    rate = float(match.group(1)) / _PER[match.group(2)]
    if not 0 < rate <= MAX_RATE_PER_S:
        raise ValueError(f"a rate limit must be above 0 and at most {MAX_RATE_PER_S:g}/s")
    return rate


#: Jobs per second, written ``50/s``, ``100/m`` or ``1000/h``.
RatePerSecond = Annotated[float, BeforeValidator(_rate_per_s)]


class CircuitBreaker(_Frozen):
    """Pause a job type whose handler keeps failing (``jobsys.consume.breaker``).

    Give ``failures`` (this many failed attempts within ``window`` open it) or
    ``failure_ratio`` (this share of failed attempts within ``window``, once at least
    ``min_calls`` ran). Open, the type's jobs are not attempted for ``cool_down``: they wait in
    the delay levels, burning no attempt. Then one trial runs: a success closes it, a failure
    opens it again.
    """

    failures: int | None = Field(default=None, strict=True, ge=1, le=100_000)
    failure_ratio: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    min_calls: int = Field(default=10, strict=True, ge=1, le=100_000)
    window: Duration = 60.0
    cool_down: Duration = 30.0

    @field_validator("failure_ratio", mode="before")
    @classmethod
    def _ratio_is_a_number(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float | None):
            raise ValueError("failure_ratio is a number above 0 and at most 1, e.g. 0.5")
        return value

    @model_validator(mode="after")
    def _one_trigger(self) -> CircuitBreaker:
        if (self.failures is None) == (self.failure_ratio is None):
            raise ValueError("give either failures or failure_ratio")
        if not 1.0 <= self.window <= 86400.0:
            raise ValueError("window must be from 1s to 1d")
        if not 1.0 <= self.cool_down <= 86400.0:
            raise ValueError("cool_down must be from 1s to 1d")
        return self


class JobType(_Frozen):
    """Where a job type is published, and how it is run."""

    exchange: Name
    routing_key: Annotated[RoutingKey, Field(max_length=200)] = ""
    headers: Headers | None = None
    priority: Whole | None = Field(default=None, ge=0, le=255)
    timeout: Duration = 300.0
    retry: RetryPolicy = RetryPolicy()
    #: At most this many jobs of the type run at once across every worker: each holds one of
    #: this many permits, messages in the type's permits queue (``jobsys.consume.permits``).
    max_running: int | None = Field(default=None, strict=True, ge=1, le=MAX_PERMITS)
    #: Pause the type while its handler keeps failing.
    breaker: CircuitBreaker | None = None
    #: At most this many jobs of the type start per second across every worker: each takes a
    #: token from the type's tokens queue, which one elected refiller keeps filling.
    rate_limit: RatePerSecond | None = None
    #: Tokens that may pile up while the type is idle (a burst above the rate); default: one
    #: second's worth.
    rate_burst: int | None = Field(default=None, strict=True, ge=1, le=100_000)

    @property
    def burst(self) -> int:
        """The tokens queue's length: ``rate_burst``, else one second's worth (at least 1)."""
        if self.rate_burst is not None:
            return self.rate_burst
        return max(1, math.ceil(self.rate_limit or 1.0))

    @field_validator("headers")
    @classmethod
    def _no_routing_headers(
        cls, headers: dict[str, str | int | bool] | None
    ) -> dict[str, str | int | bool] | None:
        for name in headers or {}:
            if name.lower() in _ROUTING_HEADERS:
                raise ValueError(
                    f"header {name!r} is reserved: RabbitMQ would send a copy of every job of "
                    "this type to each routing key it lists"
                )
        return headers


class Delays(_Frozen):
    """The broker-side delay levels shared by delayed publishing and retry backoff.

    ``max_delay`` bounds what may be published and how long a retry may wait; the levels on
    the broker are the same whatever it is (``jobsys.topology.delays``).
    """

    max_delay: Duration = 30 * 86400.0
    #: Unset: quorum on a cluster or with ``replicas``, classic on one node (``resolved_type``).
    queue_type: Literal["classic", "quorum"] | None = None
    #: Quorum replicas of the delay levels and the scheduler's queues (quorum only).
    replicas: Replicas | None = None

    def resolved_type(self, *, cluster: bool) -> Literal["classic", "quorum"]:
        """The type the delay levels and the scheduler's queues are declared with: the file's
        when it names one; else quorum on a cluster (a classic level lives on one node, and the
        delayed jobs and retries waiting in it are lost with that node) or when ``replicas``
        asks for copies, classic on a single node (one node replicates nothing, and classic
        levels cost the broker less)."""
        if self.queue_type is not None:
            return self.queue_type
        return "quorum" if cluster or self.replicas is not None else "classic"

    @model_validator(mode="after")
    def _within_the_levels(self) -> Delays:
        if self.max_delay < 30 * 86400:
            raise ValueError("max_delay must be at least 30d")
        if self.max_delay > MAX_DELAY_S:
            raise ValueError(
                f"max_delay must be at most {format_duration(MAX_DELAY_S)} (2**29 - 1 s): "
                "the longest delay RabbitMQ's queue TTLs can express"
            )
        return self


class History(_Frozen):
    """Opt-in job history: the lifecycle events of the jobs of ``queues`` (every queue when
    absent) appended to a stream of the namespace, kept ``max_age`` and at most ``max_bytes``
    (the broker drops whole old segments beyond either)."""

    queues: list[Name] | None = Field(default=None, min_length=1)
    max_age: Duration = 7 * 86400.0
    max_bytes: Whole = Field(default=1024**3, ge=16 * 1024**2, le=2**50)

    @field_validator("max_age")
    @classmethod
    def _sensible_age(cls, value: float) -> float:
        if value < 60:
            raise ValueError("max_age must be at least 1m (the stream drops whole segments)")
        return value

    def records(self, queue: str) -> bool:
        """Whether the jobs of ``queue`` are recorded."""
        return self.queues is None or queue in self.queues


class Topology(_Frozen):
    """A whole topology file."""

    version: Literal[1]
    exchanges: dict[Name, Exchange] = Field(default_factory=dict)
    queues: dict[Name, Queue] = Field(default_factory=dict)
    bindings: list[Binding] = Field(default_factory=list)
    job_types: dict[Name, JobType] = Field(default_factory=dict)
    delays: Delays = Delays()
    #: Periodic jobs, by name; fired by ``jobsys scheduler`` (``jobsys.schedule``).
    schedules: dict[Name, Schedule] = Field(default_factory=dict)
    #: Consumer pools that serve several queues by weight (``jobsys worker --pool NAME``).
    pools: dict[Name, WeightedPool] = Field(default_factory=dict)
    #: Job history in a stream (``jobsys.observe.history``); None: off.
    history: History | None = None
    #: The prefix of the exchanges and queues jobsys derives for this topology (delay levels,
    #: the due exchange, the dead-letter exchange). Apps sharing a vhost keep apart by using
    #: namespaces of their own: one app's producers then cannot reach the other's queues
    #: through these exchanges.
    namespace: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")] = DEFAULT_NAMESPACE

    @property
    def delay_layout(self) -> DelayLayout:
        """The delay levels and due exchange of this topology's namespace."""
        return DelayLayout(self.namespace)

    @property
    def dead_letter_exchange(self) -> str:
        """The exchange dead-lettered jobs reach their dead-letter queues through."""
        return f"{self.namespace}.dead-letter"

    def dead_letter_queues(self) -> dict[str, str]:
        """Map each work queue to its dead-letter queue (every work queue has one)."""
        return {name: dead_letter_queue_name(name) for name in self.queues}
