"""Follow-up jobs and chains on a real broker: published with confirms only when the attempt
succeeded, before the ack; ids derived from the parent's; a failed follow-up publish fails the
attempt; ``jobsys-then`` validated at publish and on receipt; kill -9 between the confirms
and the ack loses nothing (the ledger)."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobsys.app import App, JobContext
from jobsys.broker.connection import BrokerConnection
from jobsys.errors import PayloadValidationError, UnknownJobTypeError
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology
from jobsys.wire.headers import (
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_JOB_ID,
    HEADER_THEN,
)
from tests.apps import followup_apps, worker_apps
from tests.apps.worker_apps import drain_dead, publish, publish_raw, queue_depth, wait_until
from tests.harness.ledger import Ledger, drain_job_ids
from tests.harness.running import running_worker
from tests.harness.worker_subprocess import WorkerSubprocess

pytestmark = pytest.mark.timeout(90)

OTHER = "wt.other"  # the queue of job type "other": no handler here, so nobody consumes it


@pytest.fixture
async def loaded(vhost_settings: Settings) -> LoadedTopology:
    topology = worker_apps.loaded_topology()
    await worker_apps.apply(vhost_settings, topology)
    return topology


async def _bodies(settings: Settings, queue: str) -> dict[str, Any]:
    """Job id -> decoded payload of everything in ``queue`` (taken out)."""
    found: dict[str, Any] = {}
    async with BrokerConnection(settings) as conn:
        channel = await conn.channel(confirms=False)
        q = await channel.get_queue(queue, ensure=True)
        while (message := await q.get(fail=False)) is not None:
            found[str(message.headers[HEADER_JOB_ID])] = json.loads(message.body)
            await message.ack()
    return found


def _app(behaviour: str = "ok") -> App:
    app = App()

    @app.handler("echo")
    async def echo(payload: Any, ctx: JobContext) -> dict[str, int]:
        first = await ctx.publish("other", {"step": 1})
        second = ctx.hold("other", {"step": 2}, priority=None)
        assert (first, second) == (f"{ctx.job_id}/1", f"{ctx.job_id}/2")
        return {"sum": 3}

    @app.handler("boom")  # max_attempts: 1
    async def boom(payload: Any, ctx: JobContext) -> None:
        await ctx.publish("other", {"step": 1})
        if behaviour == "fail":
            raise RuntimeError("after holding a follow-up")

    return app


async def test_follow_ups_are_published_with_derived_ids_when_the_handler_succeeded(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async with running_worker(_app(), loaded, vhost_settings) as worker:
        [parent] = await publish(vhost_settings, loaded, "echo", [{}])
        await wait_until(lambda: worker.stats.done == 1, what="the parent done")
    assert await _bodies(vhost_settings, OTHER) == {
        f"{parent}/1": {"step": 1},
        f"{parent}/2": {"step": 2},
    }


async def test_a_failed_attempt_publishes_none_of_its_follow_ups(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async with running_worker(_app("fail"), loaded, vhost_settings) as worker:
        await publish(vhost_settings, loaded, "boom", [{}])
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    assert await queue_depth(vhost_settings, OTHER) == 0


async def test_a_follow_up_that_cannot_be_routed_fails_the_attempt_instead_of_acking_it(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async with BrokerConnection(vhost_settings) as conn:
        channel = await conn.channel(confirms=False)
        await channel.queue_delete(OTHER)  # "other" is now unroutable
    async with running_worker(_app(), loaded, vhost_settings) as worker:
        [parent] = await publish(vhost_settings, loaded, "boom", [{}])
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    assert worker.stats.done == 0
    [dead] = await drain_dead(vhost_settings)
    assert dead.headers[HEADER_JOB_ID] == parent
    assert dead.headers[HEADER_ERROR_TYPE] == "jobsys.errors.UnroutableError"


async def test_a_bad_follow_up_raises_in_the_handler_and_dead_letters_the_job(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    app = App()

    @app.handler("echo")
    async def echo(payload: Any, ctx: JobContext) -> None:
        await ctx.publish("no_such_type", {})

    async with running_worker(app, loaded, vhost_settings) as worker:
        await publish(vhost_settings, loaded, "echo", [{}])
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    [dead] = await drain_dead(vhost_settings)
    assert dead.headers[HEADER_ERROR_TYPE] == "jobsys.errors.UnknownJobTypeError"


async def test_then_sends_the_handlers_return_value_to_the_next_job_type(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async with Producer(vhost_settings, loaded) as producer:
        receipt = await producer.publish("echo", {}, then="other")
    async with running_worker(_app(), loaded, vhost_settings) as worker:
        await wait_until(lambda: worker.stats.done == 1, what="the parent done")
    parent = receipt.job_id
    assert await _bodies(vhost_settings, OTHER) == {
        f"{parent}/1": {"step": 1},
        f"{parent}/2": {"step": 2},
        f"{parent}/then": {"sum": 3},
    }


async def test_a_hostile_then_is_refused_at_publish(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async with Producer(vhost_settings, loaded) as producer:
        with pytest.raises(UnknownJobTypeError, match="not in the topology"):
            await producer.publish("echo", {}, then="no_such_type")
        with pytest.raises(PayloadValidationError, match="control characters"):
            await producer.publish("echo", {}, then="other\n")
    assert await queue_depth(vhost_settings, worker_apps.WORK) == 0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("no_such_type", "not in the topology"),
        ("other\x1b[2J", "control characters"),
        (42, "must be a job type, got int"),
        ("o" * 300, "longer than 255 bytes"),
    ],
)
async def test_a_hostile_then_on_receipt_is_dead_lettered_with_the_reason_unrun(
    vhost_settings: Settings, loaded: LoadedTopology, value: object, reason: str
) -> None:
    ran: list[str] = []
    app = App()

    @app.handler("echo")
    async def echo(payload: Any) -> None:
        ran.append("echo")

    async with running_worker(app, loaded, vhost_settings) as worker:
        await publish_raw(
            vhost_settings,
            b"{}",
            type="echo",
            headers={HEADER_JOB_ID: "hostile-then", HEADER_THEN: value},
        )
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    [dead] = await drain_dead(vhost_settings)
    assert reason in str(dead.headers[HEADER_ERROR_MESSAGE])
    assert ran == []
    assert await queue_depth(vhost_settings, OTHER) == 0


# -- kill -9 between the follow-ups' confirms and the parent's ack -------------------------------


@pytest.fixture
def workers() -> Iterator[list[WorkerSubprocess]]:
    started: list[WorkerSubprocess] = []
    yield started
    for worker in started:
        worker.kill()


def _worker(tmp_path: Path, settings: Settings, kill: bool, name: str) -> WorkerSubprocess:
    return WorkerSubprocess(
        "tests.apps.followup_apps:app",
        tmp_path / "topology.yaml",
        tmp_path / f"{name}.stderr",
        {
            "JOBSYS_URL": settings.url,
            "JOBSYS_TEST_RECORD": str(tmp_path / "record.txt"),
            "JOBSYS_TEST_KILL": "1" if kill else "0",
        },
        # One job at a time: the kill catches exactly one parent between its confirms and ack.
        ("--queue", followup_apps.WORK, "--concurrency", "1", "--prefetch", "1"),
    )


async def test_kill_9_between_the_follow_up_confirms_and_the_ack_loses_none_and_reuses_ids(
    vhost_settings: Settings, tmp_path: Path, workers: list[WorkerSubprocess]
) -> None:
    file = tmp_path / "topology.yaml"
    file.write_text(followup_apps.TOPOLOGY_YAML, encoding="utf-8")
    loaded = load_topology(file)
    await worker_apps.apply(vhost_settings, loaded)
    ledger = Ledger()
    async with Producer(vhost_settings, loaded) as producer:
        parents = [(await producer.publish("parent", {"n": n})).job_id for n in range(3)]
    for parent in parents:
        ledger.mark(parent, "confirmed")

    first = _worker(tmp_path, vhost_settings, kill=True, name="first")
    workers.append(first)
    assert await first.wait_exit(30) == -signal.SIGKILL, first.stderr
    record = (tmp_path / "record.txt").read_text()
    [killed_at] = [line.split()[1] for line in record.splitlines() if line.startswith("confirmed")]
    killed_parent = killed_at.rsplit("/", 1)[0]

    second = _worker(tmp_path, vhost_settings, kill=False, name="second")
    workers.append(second)
    await wait_until(
        lambda: (tmp_path / "record.txt").read_text().count("done ") >= 4,
        30,
        what="every parent done after the rerun",
    )
    second.signal(signal.SIGTERM)
    assert await second.wait_exit() == 0, second.stderr

    ledger.read_runs(tmp_path / "record.txt")
    await ledger.read_queue(vhost_settings.url, followup_apps.WORK)
    follow_ups = await drain_job_ids(vhost_settings.url, followup_apps.NEXT)
    expected = {f"{p}/{i}" for p in parents for i in range(1, followup_apps.FOLLOW_UPS + 1)}
    assert set(follow_ups) == expected  # none lost, none made up
    again = {f"{killed_parent}/{i}" for i in range(1, followup_apps.FOLLOW_UPS + 1)}
    # The killed attempt's follow-ups were confirmed, and its rerun published the same ids.
    twice = Counter({job_id: n for job_id, n in follow_ups.items() if n > 1})
    assert twice == Counter(dict.fromkeys(again, 2))
    # The follow-ups under the ledger too: each confirmed (by the worker), none lost, and only
    # those of the killed attempt duplicated.
    for job_id in expected:
        ledger.mark(job_id, "confirmed")
    ledger.queued.update(follow_ups)
    ledger.check().assert_ok(allowed_duplicates=[killed_parent, *again])


def test_the_sync_producer_publishes_with_then_too(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    from jobsys.publish.sync import SyncProducer

    with SyncProducer(vhost_settings, loaded) as producer:
        producer.publish("echo", {}, then="other")
        with pytest.raises(UnknownJobTypeError):
            producer.publish("echo", {}, then="no_such_type")
