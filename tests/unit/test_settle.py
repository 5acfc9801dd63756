"""Settlement without a broker: the decision table of ``Settler.settle`` (what is acked,
requeued, republished, counted and reported as fatal for each outcome and each publish result)
and the headers a retry and a dead letter carry. The publish itself is a recording stand-in:
what the broker does with it is checked in tests/integration/test_retries.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader

from jobsys.consume.acks import Acks
from jobsys.consume.attempt import Delivery
from jobsys.consume.options import WorkerStats
from jobsys.consume.outcome import ACK, REQUEUE, Outcome
from jobsys.consume.settle import Settler
from jobsys.errors import (
    AccessRefused,
    JobsysError,
    PublishOutcomeUnknown,
    QueueFullError,
    TopologyError,
    UnroutableError,
)
from jobsys.topology.delays import DelayLayout
from jobsys.topology.loader import load_topology_text
from jobsys.wire.headers import (
    HEADER_ATTEMPT,
    HEADER_ATTEMPTS,
    HEADER_DEAD_LETTER_REASON,
    HEADER_ERROR_TYPE,
    HEADER_FIRST_FAILED_AT_MS,
    HEADER_JOB_ID,
    HEADER_ORIGINAL_EXCHANGE,
    HEADER_ORIGINAL_QUEUE,
    HEADER_ORIGINAL_ROUTING_KEY,
)

QUEUE = "emails"


class _Channel:
    is_closed = False

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.nacked: list[int] = []

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.acked.append(delivery_tag)

    async def basic_nack(
        self, delivery_tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True
    ) -> None:
        self.nacked.append(delivery_tag)


@dataclass
class _Producer:
    """Records republishes; ``fail`` makes each one raise that error instead."""

    fail: JobsysError | None = None
    sent: list[dict[str, Any]] = field(default_factory=list)
    delay_layout: DelayLayout = field(default_factory=DelayLayout)
    topology: Any = load_topology_text("version: 1\n").topology

    async def republish(
        self, body: bytes, headers: dict[str, Any], exchange: str, key: str, **kw: Any
    ) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append({"body": body, "headers": headers, "exchange": exchange, "key": key, **kw})


def _delivery(channel: _Channel, headers: dict[str, Any] | None = None, tag: int = 1) -> Delivery:
    props = spec.Basic.Properties(
        message_type="send_email",
        headers={HEADER_JOB_ID: "job-1", HEADER_ATTEMPT: 2, "tenant": "acme", "x-death": [{}]}
        if headers is None
        else headers,
        reply_to="amq.rabbitmq.reply-to.x",
        correlation_id="c-1",
        priority=4,
    )
    message = DeliveredMessage(
        delivery=spec.Basic.Deliver("ctag", tag, False, "jobs", "email.send"),
        header=ContentHeader(properties=props),
        body=b'{"to": "a@b.c"}',
        channel=channel,  # type: ignore[arg-type]
    )
    acks: Acks[Delivery] = Acks(channel, lambda sent, lost: None)
    delivery = Delivery(message, acks, tag)
    acks.track(tag)
    delivery.identify()
    return delivery


@dataclass
class _World:
    channel: _Channel
    producer: _Producer
    stats: WorkerStats
    fatal: list[JobsysError]
    settler: Settler


def _world(fail: JobsysError | None = None) -> _World:
    channel, producer, stats, fatal = _Channel(), _Producer(fail), WorkerStats(), []
    settler = Settler(producer, stats, on_fatal=fatal.append, on_settled=lambda: None)  # type: ignore[arg-type]
    return _World(channel, producer, stats, fatal, settler)


async def _settle(world: _World, outcome: Outcome, delivery: Delivery | None = None) -> Outcome:
    delivery = delivery or _delivery(world.channel)
    applied = await world.settler.settle(delivery, outcome, QUEUE)
    await delivery.acks.flushed()
    await asyncio.sleep(0)
    return applied


RETRY = Outcome.retry(RuntimeError("smtp down"), 4.0, "RuntimeError: smtp down")
DEAD = Outcome.dead_letter(
    RuntimeError("smtp down"), reason="gave up after 2 attempts: RuntimeError"
)


# -- the decision table -------------------------------------------------------------------------


async def test_a_success_is_acked_and_nothing_is_published() -> None:
    world = _world()
    assert (await _settle(world, ACK)).kind == "ack"
    assert (world.channel.acked, world.channel.nacked, world.producer.sent) == ([1], [], [])


async def test_a_delivery_taken_back_unrun_is_requeued_and_counted() -> None:
    world = _world()
    assert (await _settle(world, REQUEUE)).kind == "requeue"
    assert (world.channel.acked, world.channel.nacked) == ([], [1])
    assert world.stats.requeued == 1


@pytest.mark.parametrize("outcome", [RETRY, DEAD])
async def test_a_confirmed_republish_acks_the_original_and_counts_it(outcome: Outcome) -> None:
    world = _world()
    applied = await _settle(world, outcome)
    assert applied is outcome
    assert (world.channel.acked, world.channel.nacked) == ([1], [])
    assert len(world.producer.sent) == 1
    assert (world.stats.retried, world.stats.dead_lettered) == (
        (1, 0) if outcome.kind == "retry" else (0, 1)
    )
    assert world.stats.done == 0  # a retried or dead-lettered job is not "done"


@pytest.mark.parametrize("error", [QueueFullError("full"), PublishOutcomeUnknown("lost")])
@pytest.mark.parametrize("outcome", [RETRY, DEAD])
async def test_an_unconfirmed_republish_requeues_the_original_so_nothing_is_lost(
    outcome: Outcome, error: JobsysError
) -> None:
    world = _world(fail=error)
    applied = await _settle(world, outcome)
    assert applied.kind == "requeue"
    assert (world.channel.acked, world.channel.nacked) == ([], [1])
    assert world.fatal == []


@pytest.mark.parametrize(
    ("error", "fatal_type"),
    [(UnroutableError("no route"), TopologyError), (AccessRefused("no write"), AccessRefused)],
)
@pytest.mark.parametrize("outcome", [RETRY, DEAD])
async def test_a_republish_that_can_never_succeed_requeues_and_stops_the_worker(
    outcome: Outcome, error: JobsysError, fatal_type: type[JobsysError]
) -> None:
    world = _world(fail=error)
    applied = await _settle(world, outcome)
    assert applied.kind == "requeue"
    assert world.channel.nacked == [1]
    [fatal] = world.fatal
    assert isinstance(fatal, fatal_type)
    if fatal_type is TopologyError:
        assert "jobsys topology apply" in str(fatal)


# -- what a retry and a dead letter carry -------------------------------------------------------


async def test_a_retry_goes_back_to_its_own_queue_through_the_delay_levels() -> None:
    world = _world()
    await _settle(world, RETRY)
    [sent] = world.producer.sent
    assert sent["exchange"] == "jobsys.wait.02"  # 4 s: bit 2
    assert sent["key"].endswith(f".{QUEUE}") and sent["delay_s"] == 4.0
    headers = sent["headers"]
    assert headers[HEADER_ATTEMPT] == 3
    assert headers[HEADER_JOB_ID] == "job-1" and headers["tenant"] == "acme"
    assert (headers[HEADER_ORIGINAL_EXCHANGE], headers[HEADER_ORIGINAL_ROUTING_KEY]) == (
        "jobs",
        "email.send",
    )
    assert isinstance(headers[HEADER_FIRST_FAILED_AT_MS], int)
    assert not [name for name in headers if name.startswith("x-")]
    kept = sent["kept"]
    assert (kept.job_type, kept.priority, kept.reply_to, kept.correlation_id) == (
        "send_email",
        4,
        "amq.rabbitmq.reply-to.x",
        "c-1",
    )


async def test_a_retry_with_no_delay_goes_straight_through_the_delivery_exchange() -> None:
    world = _world()
    await _settle(world, Outcome.retry(RuntimeError(), 0.0, "now"))
    assert world.producer.sent[0]["exchange"] == "jobsys.due"


async def test_a_dead_letter_carries_the_record_and_the_origin_of_a_retried_job() -> None:
    world = _world()
    headers = {
        HEADER_JOB_ID: "job-1",
        HEADER_ATTEMPT: 2,
        HEADER_ORIGINAL_EXCHANGE: "jobs",
        HEADER_ORIGINAL_ROUTING_KEY: "email.send",
        HEADER_FIRST_FAILED_AT_MS: 1_700_000_000_000,
    }
    await _settle(world, DEAD, _delivery(world.channel, headers))
    [sent] = world.producer.sent
    assert (sent["exchange"], sent["key"]) == ("jobsys.dead-letter", f"{QUEUE}.dead")
    record = sent["headers"]
    assert record[HEADER_ERROR_TYPE] == "RuntimeError"
    assert record[HEADER_ATTEMPTS] == 2 and record[HEADER_ORIGINAL_QUEUE] == QUEUE
    assert record[HEADER_FIRST_FAILED_AT_MS] == 1_700_000_000_000
    assert record[HEADER_DEAD_LETTER_REASON] == "gave up after 2 attempts: RuntimeError"


async def test_a_delivery_with_no_identity_is_dead_lettered_under_its_message_id() -> None:
    world = _world()
    delivery = _delivery(world.channel, headers={})
    delivery.message.header.properties.message_id = "m-42"
    await _settle(world, DEAD, delivery)
    assert world.producer.sent[0]["headers"][HEADER_JOB_ID] == "m-42"


async def test_the_original_is_not_acked_before_its_republish_is_confirmed() -> None:
    world = _world()
    release = asyncio.Event()
    record = world.producer.republish

    async def slow(*args: Any, **kwargs: Any) -> None:
        await release.wait()
        await record(*args, **kwargs)

    world.producer.republish = slow  # type: ignore[method-assign]
    settling = asyncio.create_task(_settle(world, DEAD))
    for _ in range(5):
        await asyncio.sleep(0)
    assert world.channel.acked == [] and world.channel.nacked == []
    release.set()
    await settling
    assert world.channel.acked == [1]
