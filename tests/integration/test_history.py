"""Job history against a real broker: timelines for a job that succeeds, is retried, is
dead-lettered, is interrupted by a killed worker; a history that cannot be written never fails a
job; ``jobsys jobs show``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from click.testing import CliRunner

from jobsys.broker.connection import BrokerConnection
from jobsys.cli import main
from jobsys.errors import ConfigError, JobFailed
from jobsys.ops import dlq
from jobsys.ops.history import follow, job_timeline
from jobsys.publish.history import HistorySink
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text
from jobsys.topology.own import OwnLayout
from jobsys.wire.envelope import new_job_id
from jobsys.wire.headers import now_ms
from jobsys.wire.history import HistoryEvent, job_state
from tests.apps import result_apps
from tests.apps.worker_apps import wait_until
from tests.harness.running import running_worker
from tests.harness.worker_subprocess import WorkerSubprocess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def loaded(vhost_settings: Settings, tmp_path: Path) -> LoadedTopology:
    topology = result_apps.loaded_topology(tmp_path, history=True)
    await result_apps.apply(vhost_settings, topology)
    result_apps.RELEASE = asyncio.Event()
    return topology


@pytest.fixture
async def producer(vhost_settings: Settings, loaded: LoadedTopology) -> AsyncIterator[Producer]:
    async with Producer(vhost_settings, loaded) as opened:
        yield opened


async def timeline(settings: Settings, loaded: LoadedTopology, job_id: str) -> list[HistoryEvent]:
    async with BrokerConnection(settings) as connection:
        return await job_timeline(connection, loaded.topology, job_id, timeout_s=30)


async def kinds_until(
    settings: Settings, loaded: LoadedTopology, job_id: str, last: str
) -> list[str]:
    """The event kinds of ``job_id`` once its last event is ``last`` (events are batched)."""
    seen: list[str] = []

    async def ended() -> bool:
        seen[:] = [event.kind for event in await timeline(settings, loaded, job_id)]
        return bool(seen) and seen[-1] == last

    await wait_until(ended, what=f"job {job_id} recorded as {last}")
    return seen


async def test_timelines_of_a_success_a_retried_job_and_a_dead_letter(
    vhost_settings: Settings, loaded: LoadedTopology, producer: Producer
) -> None:
    ok, flaky, failing = new_job_id(), new_job_id(), new_job_id()
    async with running_worker(result_apps.app, loaded, vhost_settings):
        assert await producer.call("add", {"a": 1, "b": 2}, timeout_s=30, job_id=ok) == 3
        await producer.call("flaky", {"succeed_at": 2}, timeout_s=30, job_id=flaky)
        with pytest.raises(JobFailed):
            await producer.call("always_fails", {}, timeout_s=30, job_id=failing)
        assert await kinds_until(vhost_settings, loaded, ok, "succeeded") == [
            "published",
            "started",
            "succeeded",
        ]
        assert await kinds_until(vhost_settings, loaded, flaky, "succeeded") == [
            "published",
            "started",
            "retried",
            "started",
            "succeeded",
        ]
        assert await kinds_until(vhost_settings, loaded, failing, "dead_lettered") == [
            "published",
            "started",
            "retried",
            "started",
            "dead_lettered",
        ]
    events = await timeline(vhost_settings, loaded, failing)
    assert [e.attempt for e in events] == [1, 1, 1, 2, 2]
    assert events[2].details["error_type"] == "ValueError"
    assert events[2].details["delay_s"] == 1.0
    assert "gave up after 2 attempts" in events[-1].details["reason"]
    assert job_state(events).state == "dead_lettered"
    async with Producer(vhost_settings, loaded) as replaying:
        assert (await dlq.replay(replaying, result_apps.WORK)).replayed == 1
    assert (await kinds_until(vhost_settings, loaded, failing, "replayed"))[-2:] == [
        "dead_lettered",
        "replayed",
    ]
    succeeded = (await timeline(vhost_settings, loaded, ok))[-1]
    assert succeeded.details["result_bytes"] == 1  # "3": its size, never the result itself
    assert succeeded.pid == os.getpid()


async def test_an_error_text_that_is_not_unicode_is_recorded_escaped_and_history_goes_on(
    vhost_settings: Settings, loaded: LoadedTopology, producer: Producer
) -> None:
    # Before, the event could not be encoded: its batch was retried for good and every later
    # event of the worker stayed unwritten.
    garbled, later = new_job_id(), new_job_id()
    async with running_worker(result_apps.app, loaded, vhost_settings):
        with pytest.raises(JobFailed):
            await producer.call("refuse_garbled", {}, timeout_s=30, job_id=garbled)
        assert await producer.call("add", {"a": 2, "b": 2}, timeout_s=30, job_id=later) == 4
        assert await kinds_until(vhost_settings, loaded, later, "succeeded") == [
            "published",
            "started",
            "succeeded",
        ]
    events = await timeline(vhost_settings, loaded, garbled)
    assert [e.kind for e in events] == ["published", "started", "dead_lettered"]
    assert "caf\\xe9" in events[-1].details["reason"]


async def test_a_worker_killed_mid_job_shows_the_interrupted_attempt_and_the_rerun(
    vhost_settings: Settings, loaded: LoadedTopology, producer: Producer, tmp_path: Path
) -> None:
    job_id = new_job_id()
    worker = WorkerSubprocess(
        "tests.apps.result_apps:app",
        tmp_path / "topology.yaml",
        tmp_path / "killed.stderr",
        {"JOBSYS_URL": vhost_settings.url},
        (),
    )
    try:
        await producer.publish("hold", {}, job_id=job_id)
        await kinds_until(vhost_settings, loaded, job_id, "started")
        worker.signal(signal.SIGKILL)
        await worker.wait_exit()
    finally:
        worker.kill()
    result_apps.RELEASE.set()
    async with running_worker(result_apps.app, loaded, vhost_settings):
        kinds = await kinds_until(vhost_settings, loaded, job_id, "succeeded")
    assert kinds == ["published", "started", "started", "succeeded"]
    events = await timeline(vhost_settings, loaded, job_id)
    assert events[1].pid != events[2].pid
    state = job_state(events)
    assert (state.state, state.interrupted) == ("succeeded", (1,))


async def test_a_history_that_cannot_be_written_never_fails_a_job(
    vhost_settings: Settings, loaded: LoadedTopology, producer: Producer
) -> None:
    async with BrokerConnection(vhost_settings) as connection:
        channel = await connection.channel(confirms=False)
        await channel.exchange_delete("jobsys.history")
    async with running_worker(result_apps.app, loaded, vhost_settings) as worker:
        for i in range(5):
            assert await producer.call("add", {"a": i, "b": 0}, timeout_s=30) == i
        history = worker.history
        assert history is not None
        await wait_until(lambda: history.recorder.failed > 0, what="history writes failing")
        assert await producer.call("add", {"a": 7, "b": 0}, timeout_s=30) == 7
    assert worker.stats.done == 6 and worker.stats.dead_lettered == 0


async def test_a_producer_closed_while_the_stream_refuses_writes_its_events_once_it_takes_them(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    # Just after a broker restart the history exchange may route nowhere for a moment: a
    # producer closed then keeps trying (within its close timeout) instead of dropping them.
    layout = OwnLayout(loaded.topology.namespace)
    async with BrokerConnection(vhost_settings) as connection:
        channel = await connection.channel(confirms=False)
        stream = await channel.get_queue(layout.history, ensure=False)
        await stream.unbind(layout.history_exchange, routing_key="")
        job_id = new_job_id()
        producer = await Producer(vhost_settings, loaded).open()
        await producer.publish("add", {"a": 1, "b": 1}, job_id=job_id)
        closing = asyncio.create_task(producer.close())
        await asyncio.sleep(1.0)
        assert not closing.done()  # the stream refused: the producer is still trying
        await stream.bind(layout.history_exchange, routing_key="")
        await asyncio.wait_for(closing, 10)
    assert [e.kind for e in await timeline(vhost_settings, loaded, job_id)] == ["published"]


async def test_reading_history_of_a_topology_without_it_says_how_to_turn_it_on(
    vhost_settings: Settings,
) -> None:
    plain = result_apps.loaded_topology()
    async with BrokerConnection(vhost_settings) as connection:
        with pytest.raises(ConfigError, match="history:"):
            await job_timeline(connection, plain.topology, "x")


async def test_jobs_show_prints_the_timeline_and_the_state(
    vhost_settings: Settings, loaded: LoadedTopology, producer: Producer, tmp_path: Path
) -> None:
    job_id = new_job_id()
    async with running_worker(result_apps.app, loaded, vhost_settings):
        with pytest.raises(JobFailed):
            await producer.call("refuse", {}, timeout_s=30, job_id=job_id)
        await kinds_until(vhost_settings, loaded, job_id, "dead_lettered")
    # A hostile event: a job id with control characters, published past jobsys.
    async with BrokerConnection(vhost_settings) as connection:
        channel = await connection.channel(confirms=True)
        exchange = await channel.get_exchange("jobsys.history", ensure=False)
        event = {
            "kind": "started",
            "job_id": job_id,
            "job_type": "\x1b[2Jrefuse",
            "queue": "rs.work",
            "attempt": 9,
            "at_ms": 1,
            "host": "\x1b]0;owned\x07",
            "pid": 1,
            "details": {"note": "\r\u202e"},
        }
        await exchange.publish(
            aio_pika.Message(json.dumps([event]).encode(), type="jobsys.history"),
            routing_key="",
        )
    args = ["jobs", "show", job_id, "--url", vhost_settings.url]
    env = {"JOBSYS_TOPOLOGY": str(tmp_path / "topology.yaml")}
    result = await asyncio.to_thread(
        CliRunner().invoke, main, args, env=env, catch_exceptions=False
    )
    assert result.exit_code == 0, result.stderr
    assert "dead-lettered at attempt 1" in result.stdout
    assert "rejected by the handler" in result.stdout
    for char in ("\x1b", "\x07", "\r", "\u202e"):
        assert char not in result.stdout
    as_json = await asyncio.to_thread(
        CliRunner().invoke, main, [*args, "--json"], env=env, catch_exceptions=False
    )
    printed = json.loads(as_json.stdout)
    assert printed["state"] == "dead_lettered"
    assert [e["kind"] for e in printed["events"]][-1] == "dead_lettered"
    bad = await asyncio.to_thread(
        CliRunner().invoke, main, ["jobs", "show", "x" * 300, "--url", vhost_settings.url], env=env
    )
    assert bad.exit_code == 2


async def test_jobs_tail_follows_the_history_with_its_filters(
    vhost_settings: Settings, loaded: LoadedTopology, producer: Producer, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "JOBSYS_URL": vhost_settings.url,
        "JOBSYS_TOPOLOGY": str(tmp_path / "topology.yaml"),
    }
    tail = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobsys",
        "jobs",
        "tail",
        "--failed",
        "--since",
        "10m",
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with running_worker(result_apps.app, loaded, vhost_settings):
            assert await producer.call("add", {"a": 1, "b": 1}, timeout_s=30) == 2
            with pytest.raises(JobFailed):
                await producer.call("refuse", {}, timeout_s=30)
            assert tail.stdout is not None
            line = await asyncio.wait_for(tail.stdout.readline(), 30)
        printed = json.loads(line)
        assert (printed["kind"], printed["job_type"]) == ("dead_lettered", "refuse")
    finally:
        tail.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(tail.wait(), 30)
        except TimeoutError:
            tail.kill()
            assert tail.stderr is not None
            said = (await tail.stderr.read()).decode(errors="replace")
            failure = f"jobs tail did not stop 30s after SIGINT; it said: {said}"
            raise AssertionError(failure) from None


async def test_follow_hands_over_every_event_written_from_now_on(
    vhost_settings: Settings, loaded: LoadedTopology, producer: Producer
) -> None:
    seen: list[HistoryEvent] = []
    stop = asyncio.Event()
    async with BrokerConnection(vhost_settings) as connection:
        following = asyncio.ensure_future(
            follow(connection, loaded.topology, seen.append, since_s=600, stop=stop)
        )
        async with running_worker(result_apps.app, loaded, vhost_settings):
            job_id = new_job_id()
            await producer.call("add", {"a": 1, "b": 1}, timeout_s=30, job_id=job_id)
            await wait_until(
                lambda: (
                    [e.kind for e in seen if e.job_id == job_id]
                    == ["published", "started", "succeeded"]
                ),
                what="both events followed",
            )
        stop.set()
        await following


#: The smallest history the topology allows: 16 MiB, kept in 2 MiB segments (max_bytes / 8).
SMALL_HISTORY_YAML = result_apps.TOPOLOGY_YAML + "history: {max_age: 1m, max_bytes: 16777216}\n"


async def _write_filler(sink: HistorySink, megabytes: int, tag: str) -> str:
    """Write about ``megabytes`` MiB of events through the product's writer; the id of the
    last job written."""
    job_id = ""
    for n in range(megabytes * 2):  # ~512 KiB a batch: 400 events of ~1.3 KiB
        job_id = f"{tag}-{n}"
        batch = [
            HistoryEvent(
                "retried",
                job_id,
                "add",
                result_apps.WORK,
                i,
                now_ms(),
                "h",
                1,
                {"error_message": "x" * 1200},
            )
            for i in range(400)
        ]
        await sink(batch)
    return job_id


async def _oldest_gone(settings: Settings, loaded: LoadedTopology, job_id: str) -> bool:
    return await timeline(settings, loaded, job_id) == []


@pytest.mark.slow
async def test_retention_by_size_drops_the_oldest_events(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = load_topology_text(SMALL_HISTORY_YAML, "small-history.yaml")
    await result_apps.apply(vhost_settings, loaded)
    async with BrokerConnection(vhost_settings) as connection:
        sink = HistorySink(connection, loaded.topology)
        try:
            await _write_filler(sink, 1, "oldest")
            assert await timeline(vhost_settings, loaded, "oldest-0") != []
            newest = await _write_filler(sink, 32, "newer")  # twice max_bytes
        finally:
            await sink.close()
    await wait_until(
        lambda: _oldest_gone(vhost_settings, loaded, "oldest-0"), 60, "the oldest events dropped"
    )
    assert await timeline(vhost_settings, loaded, newest) != []


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_retention_by_age_drops_events_older_than_max_age(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    loaded = load_topology_text(SMALL_HISTORY_YAML, "small-history.yaml")
    await result_apps.apply(vhost_settings, loaded)
    async with BrokerConnection(vhost_settings) as connection:
        sink = HistorySink(connection, loaded.topology)
        try:
            # The oldest events and enough after them to fill their segment (the stream drops
            # whole segments, never the one being written).
            await _write_filler(sink, 3, "old")
            await asyncio.sleep(62)  # past max_age: 1m
            newest = await _write_filler(sink, 3, "new")  # a new segment: retention runs
        finally:
            await sink.close()
    await wait_until(
        lambda: _oldest_gone(vhost_settings, loaded, "old-0"), 60, "the old events dropped"
    )
    assert await timeline(vhost_settings, loaded, newest) != []
