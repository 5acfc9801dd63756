"""``Producer.call`` against a real broker: results through direct reply-to, ``JobFailed`` after
retries, timeouts, callers that go away, and publishers that name a reply address of their own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiormq
import pytest
from pamqp import commands as spec

from jobsys.consume.worker import Worker
from jobsys.errors import CallTimeout, ConfigError, JobFailed, ResultError
from jobsys.publish.producer import Producer
from jobsys.publish.sync import SyncProducer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.wire.envelope import new_job_id
from jobsys.wire.headers import HEADER_JOB_ID
from jobsys.wire.reply import DIRECT_REPLY_TO
from tests.apps import result_apps
from tests.apps.result_apps import Summary
from tests.apps.worker_apps import drain_dead, queue_depth, wait_until
from tests.harness.running import running_worker

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def loaded(vhost_settings: Settings) -> LoadedTopology:
    topology = result_apps.loaded_topology()
    await result_apps.apply(vhost_settings, topology)
    result_apps.RELEASE = asyncio.Event()  # of this test's event loop
    result_apps.FLAKY_RUNS.clear()
    return topology


@pytest.fixture
async def worker(vhost_settings: Settings, loaded: LoadedTopology) -> AsyncIterator[Worker]:
    async with running_worker(result_apps.app, loaded, vhost_settings) as running:
        yield running
        result_apps.RELEASE.set()  # a held job lets the worker drain


@pytest.fixture
async def producer(vhost_settings: Settings, loaded: LoadedTopology) -> AsyncIterator[Producer]:
    async with Producer(vhost_settings, loaded) as opened:
        yield opened


async def test_call_returns_the_result_of_every_kind(worker: Worker, producer: Producer) -> None:
    assert await producer.call("add", {"a": 2, "b": 3}, timeout_s=20) == 5
    assert await producer.call("sync_add", {"a": 2, "b": 3}, timeout_s=20) == 5
    assert await producer.call("nothing", {}, timeout_s=20) is None
    summary = await producer.call("summary", ["a", "b"], timeout_s=20)
    assert summary == {"count": 2, "names": ["a", "b"]}
    typed = await producer.call("summary", ["a"], timeout_s=20, returns=Summary)
    assert typed == Summary(count=1, names=["a"])
    tricky = {"text": "\x1b[31mred\x00", "unicode": "é✓", "list": [1, 2.5, None, True]}
    assert await producer.call("echo", tricky, timeout_s=20) == tricky


async def test_many_calls_at_once_each_get_their_own_result(
    worker: Worker, producer: Producer
) -> None:
    results = await asyncio.gather(
        *(producer.call("add", {"a": i, "b": 1000}, timeout_s=30) for i in range(50))
    )
    assert results == [i + 1000 for i in range(50)]


async def test_call_survives_retries_through_the_delay_levels(
    worker: Worker, producer: Producer
) -> None:
    result = await producer.call("flaky", {"succeed_at": 3}, timeout_s=30)
    assert result == {"attempt": 3}
    assert worker.stats.retried == 2


async def test_delayed_call_gets_its_result_after_the_delay(
    worker: Worker, producer: Producer
) -> None:
    assert await producer.call("add", {"a": 1, "b": 1}, timeout_s=30, delay_s=1) == 2


async def test_job_that_fails_for_good_raises_job_failed_not_a_timeout(
    worker: Worker, producer: Producer, vhost_settings: Settings
) -> None:
    job_id = new_job_id()
    with pytest.raises(JobFailed) as caught:
        await producer.call("always_fails", {}, timeout_s=30, job_id=job_id)
    failed = caught.value
    assert (failed.job_id, failed.job_type, failed.attempts) == (job_id, "always_fails", 2)
    assert failed.error_type == "ValueError"
    assert failed.error_message == "it never works"
    assert failed.safe_to_resubmit is True
    assert "gave up after 2 attempts" in str(failed.reason)
    assert "may succeed" in str(failed)
    [dead] = await drain_dead(vhost_settings, result_apps.WORK_DEAD)
    assert dead.headers[HEADER_JOB_ID] == job_id  # dead-lettered as usual, and then replied


@pytest.mark.parametrize(
    ("job_type", "error_type"),
    [("refuse", "jobsys.errors.Reject"), ("bad_set", "jobsys.errors.ResultError")],
)
async def test_rejected_job_or_refused_result_is_not_safe_to_resubmit(
    worker: Worker, producer: Producer, job_type: str, error_type: str
) -> None:
    with pytest.raises(JobFailed) as caught:
        await producer.call(job_type, {}, timeout_s=20)
    assert caught.value.error_type == error_type
    assert caught.value.attempts == 1
    assert caught.value.safe_to_resubmit is False
    assert "fail the same way" in str(caught.value)


async def test_cancelled_job_raises_job_failed_saying_so(
    worker: Worker, producer: Producer
) -> None:
    job_id = new_job_id()
    await producer.cancel(job_id)
    with pytest.raises(JobFailed) as caught:
        await producer.call("add", {"a": 1, "b": 1}, timeout_s=20, job_id=job_id)
    assert caught.value.cancelled is True
    assert "cancelled" in str(caught.value)


async def test_timeout_says_the_job_may_still_run_and_a_late_reply_is_ignored(
    worker: Worker, producer: Producer
) -> None:
    job_id = new_job_id()
    with pytest.raises(CallTimeout) as caught:
        await producer.call("hold", {}, timeout_s=0.5, job_id=job_id)
    assert caught.value.job_id == job_id
    assert "may still run" in str(caught.value)
    result_apps.RELEASE.set()
    await wait_until(lambda: worker.stats.done == 1, what="the held job done")
    # The late reply reached a caller that no longer waits for it: nothing breaks.
    assert await producer.call("add", {"a": 1, "b": 2}, timeout_s=20) == 3


async def test_caller_that_went_away_costs_the_worker_nothing(
    worker: Worker, producer: Producer, vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async with Producer(vhost_settings, loaded) as gone:
        waiting = asyncio.ensure_future(gone.call("hold", {}, timeout_s=60))
        await wait_until(lambda: worker.in_progress == 1, what="the held job running")
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    # The caller's connection is closed; the job finishes and replies into the void.
    result_apps.RELEASE.set()
    await wait_until(lambda: worker.stats.done == 1, what="the held job done")
    replies = worker._replies
    assert replies is not None
    await wait_until(lambda: replies.sent == 1, what="the reply handed to the broker")
    assert await producer.call("add", {"a": 1, "b": 2}, timeout_s=20) == 3
    assert worker.stats.lost_acks == 0 and not worker.stopping


async def test_reply_channel_closed_under_the_worker_is_opened_again(
    worker: Worker, producer: Producer
) -> None:
    assert await producer.call("add", {"a": 1, "b": 1}, timeout_s=20) == 2
    replies = worker._replies
    assert replies is not None and replies._channel is not None
    await replies._channel.close()  # as a broker closing it would
    assert await producer.call("add", {"a": 2, "b": 2}, timeout_s=20) == 4
    assert replies.dropped == 0


def test_sync_producer_call_blocks_for_the_result(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async def serve() -> None:
        async with running_worker(result_apps.app, loaded, vhost_settings):
            await asyncio.to_thread(_sync_calls, vhost_settings, loaded)

    asyncio.run(serve())


def _sync_calls(settings: Settings, loaded: LoadedTopology) -> None:
    with SyncProducer(settings, loaded) as producer:
        assert producer.call("add", {"a": 20, "b": 22}, timeout_s=20) == 42
        with pytest.raises(JobFailed):
            producer.call("refuse", {}, timeout_s=20)


@pytest.mark.parametrize("timeout_s", [0, -1, float("nan"), float("inf"), "5", True, None])
async def test_call_refuses_a_timeout_that_is_not_a_positive_number(
    producer: Producer, timeout_s: Any
) -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        await producer.call("add", {"a": 1, "b": 1}, timeout_s=timeout_s)


async def test_result_that_does_not_match_returns_is_a_clear_error(
    worker: Worker, producer: Producer
) -> None:
    with pytest.raises(ResultError, match="the job succeeded"):
        await producer.call("add", {"a": 1, "b": 1}, timeout_s=20, returns=Summary)


# -- hostile publishers: a reply_to of their own -------------------------------------------------


async def _publish_raw(settings: Settings, props: spec.Basic.Properties) -> None:
    connection = await aiormq.connect(settings.url)
    try:
        channel = await connection.channel()
        await channel.confirm_delivery()
        await channel.basic_publish(
            b'{"a": 1, "b": 2}', exchange="rs.jobs", routing_key="work", properties=props
        )
    finally:
        await connection.close()


def _request(reply_to: str, correlation_id: str = "c-1") -> spec.Basic.Properties:
    return spec.Basic.Properties(
        content_type="application/json",
        headers={HEADER_JOB_ID: new_job_id()},
        delivery_mode=2,
        message_type="echo",
        reply_to=reply_to,
        correlation_id=correlation_id,
    )


@pytest.mark.parametrize(
    "reply_to",
    [
        result_apps.WORK,  # an existing queue: the default exchange would route there
        "rs.jobs",  # an exchange's name
        "amq.rabbitmq.reply-tox",  # a look-alike (the bare pseudo-queue the broker refuses)
        "amq.rabbitmq.reply-to.\x1b[2J",  # control characters
        "amq.rabbitmq.reply-to. spaced",
    ],
)
async def test_worker_never_replies_to_anything_but_a_direct_reply_to_address(
    worker: Worker, vhost_settings: Settings, reply_to: str
) -> None:
    await _publish_raw(vhost_settings, _request(reply_to))
    await wait_until(lambda: worker.stats.done == 1, what="the job done")
    replies = worker._replies
    assert replies is not None
    assert (replies.ignored, replies.sent) == (1, 0)
    await asyncio.sleep(0.2)  # a reply wrongly published would be in rs.work by now
    assert await queue_depth(vhost_settings, result_apps.WORK) == 0
    assert worker.stats.done == 1  # and nothing came back to run again


async def test_correlation_id_not_utf8_gets_no_reply_and_the_pool_serves_on(
    worker: Worker, producer: Producer, vhost_settings: Settings
) -> None:
    props = _request("amq.rabbitmq.reply-to.AAAA", correlation_id="QQQQ")
    data = props.marshal().replace(b"\x04QQQQ", b"\x04\xff\xfeQQ")
    raw = spec.Basic.Properties()
    raw.marshal = lambda: data  # type: ignore[method-assign]
    await _publish_raw(vhost_settings, raw)
    await wait_until(lambda: worker.stats.dead_lettered == 1, what="the bad job dead-lettered")
    replies = worker._replies
    assert replies is not None and replies.ignored == 1
    assert await producer.call("add", {"a": 1, "b": 2}, timeout_s=20) == 3


async def test_longest_correlation_id_is_sent_back(
    worker: Worker, vhost_settings: Settings
) -> None:
    connection = await aiormq.connect(vhost_settings.url)
    try:
        channel = await connection.channel()
        got: asyncio.Queue[Any] = asyncio.Queue()

        async def on_reply(message: Any) -> None:
            await got.put(message)

        await channel.basic_consume(DIRECT_REPLY_TO, on_reply, no_ack=True)
        longest = "é" * 127 + "c"  # 255 bytes in UTF-8
        await channel.basic_publish(
            b'{"a": 1, "b": 2}',
            exchange="rs.jobs",
            routing_key="work",
            properties=_request(DIRECT_REPLY_TO, longest),
        )
        reply = await asyncio.wait_for(got.get(), 20)
        assert reply.header.properties.correlation_id == longest
        assert reply.body == b'{"a":1,"b":2}'
    finally:
        await connection.close()
