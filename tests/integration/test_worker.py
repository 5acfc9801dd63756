"""The worker against a real broker: acks, dead-lettering, deadlines, bounds on concurrency."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from jobsys.consume.worker import Worker, WorkerOptions
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.wire.envelope import (
    DL_ATTEMPTS,
    DL_ERROR_MESSAGE,
    DL_ERROR_TYPE,
    DL_FAILED_AT_MS,
    DL_ORIGINAL_EXCHANGE,
    DL_ORIGINAL_QUEUE,
    DL_ORIGINAL_ROUTING_KEY,
    DL_TRACEBACK,
    DL_WORKER_HOST,
    HEADER_JOB_ID,
)
from tests.integration import worker_apps
from tests.integration.worker_apps import (
    PROBE,
    WORK,
    drain_dead,
    publish,
    publish_raw,
    queue_depth,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

StartWorker = Callable[..., Any]


@pytest.fixture
async def loaded(vhost_settings: Settings) -> LoadedTopology:
    topology = worker_apps.loaded_topology()
    await worker_apps.apply(vhost_settings, topology)
    PROBE.reset()
    return topology


@pytest.fixture
async def start_worker(
    vhost_settings: Settings, loaded: LoadedTopology
) -> AsyncIterator[StartWorker]:
    """Start in-process workers; each is stopped gracefully at the end of the test."""
    running: list[tuple[Worker, asyncio.Task[Any]]] = []

    async def start(**options: Any) -> Worker:
        worker = Worker(worker_apps.app, loaded, vhost_settings, WorkerOptions(**options))
        task = asyncio.create_task(worker.run())
        running.append((worker, task))
        ready = asyncio.ensure_future(worker.ready.wait())
        await asyncio.wait({ready, task}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert worker.ready.is_set(), "worker did not start consuming"
        return worker

    yield start
    for worker, task in running:
        if PROBE.release is not None:
            PROBE.release.set()
        worker.request_stop()
        await asyncio.wait_for(task, 30)


async def test_successful_job_is_acked_and_its_handler_sees_the_context(
    vhost_settings: Settings, loaded: LoadedTopology, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    [job_id] = await publish(vhost_settings, loaded, "echo", [{"n": 1}])
    await wait_until(lambda: worker.stats.done == 1, what="one job done")
    assert PROBE.done == [job_id]
    assert PROBE.payloads == [{"n": 1}]
    ctx = PROBE.contexts[0]
    assert (ctx.job_id, ctx.job_type, ctx.attempt, ctx.queue) == (job_id, "echo", 1, WORK)
    assert ctx.redelivered is False
    assert await queue_depth(vhost_settings, WORK) == 0
    assert await drain_dead(vhost_settings) == []


async def test_many_jobs_are_all_done_exactly_once_with_batched_acks(
    vhost_settings: Settings, loaded: LoadedTopology, start_worker: StartWorker
) -> None:
    worker = await start_worker(concurrency=8, prefetch=50)
    ids = await publish(vhost_settings, loaded, "echo", [{"n": i} for i in range(300)])
    await wait_until(lambda: worker.stats.done == 300, what="300 jobs done")
    assert sorted(PROBE.done) == sorted(ids)
    assert worker.stats.lost_acks == 0
    assert await queue_depth(vhost_settings, WORK) == 0


async def test_payload_model_is_validated_before_the_handler_runs(
    vhost_settings: Settings, loaded: LoadedTopology, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    await publish(vhost_settings, loaded, "email", [{"to": "a@example.com", "subject": "hi"}])
    [bad_id] = await publish(vhost_settings, loaded, "email", [{"to": "a@example.com"}])
    await wait_until(lambda: worker.stats.settled == 2, what="both jobs settled")
    assert len(PROBE.payloads) == 1
    assert isinstance(PROBE.payloads[0], worker_apps.EmailPayload)
    [dead] = await drain_dead(vhost_settings)
    headers = dead.headers
    assert headers[HEADER_JOB_ID] == bad_id
    assert headers[DL_ERROR_TYPE] == "jobsys.errors.PayloadValidationError"
    assert "subject" in str(headers[DL_ERROR_MESSAGE])
    assert "a@example.com" not in str(headers[DL_ERROR_MESSAGE])


@pytest.mark.parametrize(
    ("body", "properties", "error_type", "reason"),
    [
        (b"\xff\xfe", {"type": "echo"}, "DecodeError", "UTF-8"),
        (b"{not json", {"type": "echo"}, "DecodeError", "not JSON"),
        (b"{}", {"type": "echo", "content_type": "text/plain"}, "DecodeError", "content type"),
        (b"{}", {}, "DecodeError", "job type"),
        (b"{}", {"type": "echo", "headers": {}}, "DecodeError", "jobsys-job-id"),
        (b"{}", {"type": "orphan"}, "UnknownJobTypeError", "no handler"),
        (b'"' + b"x" * 2048 + b'"', {"type": "echo"}, "PayloadTooLargeError", "limit"),
    ],
    ids=[
        "not-utf8",
        "not-json",
        "wrong-content-type",
        "no-type",
        "no-job-id",
        "no-handler",
        "too-large",
    ],
)
async def test_bad_input_is_dead_lettered_once_with_the_reason_and_the_worker_keeps_serving(
    vhost_settings: Settings,
    loaded: LoadedTopology,
    body: bytes,
    properties: dict[str, Any],
    error_type: str,
    reason: str,
) -> None:
    settings = vhost_settings.with_overrides(max_payload_bytes=1024)
    worker = Worker(worker_apps.app, loaded, settings, WorkerOptions())
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.ready.wait(), 15)
        await publish_raw(settings, body, **properties)
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the bad job dead-lettered")
        [job_id] = await publish(settings, loaded, "echo", [{"after": True}])
        await wait_until(lambda: worker.stats.done == 1, what="the next job done")
        assert PROBE.done == [job_id]
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
    dead = await drain_dead(vhost_settings)
    assert len(dead) == 1
    [message] = dead
    assert message.body == body
    headers = message.headers
    assert str(headers[DL_ERROR_TYPE]).endswith(error_type)
    assert reason in str(headers[DL_ERROR_MESSAGE])
    assert DL_TRACEBACK not in headers
    assert headers[DL_ORIGINAL_QUEUE] == WORK
    assert headers[DL_ORIGINAL_EXCHANGE] == "wt.jobs"
    assert headers[DL_ORIGINAL_ROUTING_KEY] == "work"
    assert headers[DL_ATTEMPTS] == 1
    assert await queue_depth(vhost_settings, WORK) == 0


async def test_handler_exception_is_dead_lettered_with_its_traceback(
    vhost_settings: Settings, loaded: LoadedTopology, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    [job_id] = await publish(vhost_settings, loaded, "boom", [{"secret": "s3cr3t"}])
    await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    [dead] = await drain_dead(vhost_settings)
    headers = dead.headers
    assert headers[HEADER_JOB_ID] == job_id
    assert headers[DL_ERROR_TYPE] == "RuntimeError"
    assert headers[DL_ERROR_MESSAGE] == "the handler broke"
    assert "in boom" in str(headers[DL_TRACEBACK])
    assert "s3cr3t" not in str(headers[DL_TRACEBACK])
    assert isinstance(headers[DL_FAILED_AT_MS], int)
    assert headers[DL_WORKER_HOST]
    assert json.loads(dead.body) == {"secret": "s3cr3t"}
    assert dead.delivery_mode == 2


async def test_reject_signal_dead_letters_the_job_with_its_reason(
    vhost_settings: Settings, loaded: LoadedTopology, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    await publish(vhost_settings, loaded, "refuse", [{}])
    await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    [dead] = await drain_dead(vhost_settings)
    assert dead.headers[DL_ERROR_TYPE] == "jobsys.errors.Reject"
    assert dead.headers[DL_ERROR_MESSAGE] == "not for us"


async def test_job_past_its_deadline_is_dead_lettered_as_a_timeout(
    vhost_settings: Settings, loaded: LoadedTopology, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    await publish(vhost_settings, loaded, "slow", [{}])
    await wait_until(lambda: worker.stats.dead_lettered == 1, timeout_s=10, what="deadline")
    [dead] = await drain_dead(vhost_settings)
    assert dead.headers[DL_ERROR_TYPE] == "TimeoutError"
    assert "500ms" in str(dead.headers[DL_ERROR_MESSAGE])


async def test_sync_handler_runs_in_a_thread_and_an_overrun_is_settled_at_its_deadline(
    vhost_settings: Settings, loaded: LoadedTopology, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    [job_id] = await publish(vhost_settings, loaded, "sync_echo", [{"n": 1}])
    await wait_until(lambda: worker.stats.done == 1, what="sync job done")
    assert PROBE.done == [job_id]
    thread_name, payload = PROBE.payloads[0]
    assert thread_name.startswith("jobsys-handler") and payload == {"n": 1}
    await publish(vhost_settings, loaded, "sync_slow", [{}])
    await wait_until(lambda: worker.stats.dead_lettered == 1, what="sync overrun settled")
    [dead] = await drain_dead(vhost_settings)
    assert dead.headers[DL_ERROR_TYPE] == "TimeoutError"


async def test_no_more_than_concurrency_handlers_run_at_once_and_prefetch_bounds_deliveries(
    vhost_settings: Settings, loaded: LoadedTopology, start_worker: StartWorker
) -> None:
    PROBE.release = asyncio.Event()
    worker = await start_worker(concurrency=3, prefetch=5)
    await publish(vhost_settings, loaded, "hold", [{} for _ in range(20)])
    await wait_until(lambda: PROBE.running == 3, what="three running")
    # prefetch 5: three running, two held, fifteen still in the queue
    await wait_until(_depth_is(vhost_settings, 15), what="15 jobs left in the queue (prefetch 5)")
    assert PROBE.max_running == 3
    PROBE.release.set()
    await wait_until(lambda: worker.stats.done == 20, what="all 20 done")
    assert PROBE.max_running == 3


def _depth_is(settings: Settings, expected: int) -> Callable[[], Any]:
    async def check() -> bool:
        return await queue_depth(settings, WORK) == expected

    return check


async def test_pools_cover_every_queue_a_handled_job_type_reaches_unless_queues_are_named(
    vhost_settings: Settings, loaded: LoadedTopology, start_worker: StartWorker
) -> None:
    everything = await start_worker()
    assert sorted(p.queue for p in everything.pools) == ["wt.other", "wt.work"]
    other = next(p for p in everything.pools if p.queue == "wt.other")
    assert (other.concurrency, other.prefetch) == (1, 1)
    only = Worker(worker_apps.app, loaded, vhost_settings, WorkerOptions(queues=["wt.other"]))
    assert [p.queue for p in only.pools] == ["wt.other"]


class _RecordingChannel:
    """Records the acks ``Acks`` sends (no broker involved: this checks jobsys's own
    coalescing rule, not what the broker does with it)."""

    is_closed = False

    def __init__(self) -> None:
        self.sent: list[tuple[int, bool]] = []

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.sent.append((tag, multiple))


async def test_coalesced_acks_never_cover_a_job_that_has_not_finished() -> None:
    from jobsys.consume.acks import Acks
    from jobsys.consume.attempt import Job

    channel = _RecordingChannel()
    reported: list[tuple[list[int], list[int]]] = []
    acks: Acks[Job] = Acks(
        channel,  # type: ignore[arg-type]
        lambda sent, lost: reported.append(([j.tag for j in sent], [j.tag for j in lost])),
    )
    jobs = {tag: Job(None, acks, tag) for tag in range(1, 7)}  # type: ignore[arg-type]
    for tag in jobs:
        acks.track(tag)
    # 1, 2 and 4, 5 finish in the same loop turn; 3 and 6 are still running.
    for tag in (1, 2, 4, 5):
        acks.ack(jobs[tag])
    await acks.flushed()
    assert channel.sent == [(2, True), (4, False), (5, False)]
    assert reported == [([1, 2, 4, 5], [])]
    channel.sent.clear()
    acks.ack(jobs[3])
    await acks.flushed()
    acks.ack(jobs[6])
    await acks.flushed()
    assert channel.sent == [(3, True), (6, True)]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "expected MODULE:OBJECT"),
        ("tests.integration.no_such_module:app", "cannot import"),
        ("tests.integration.worker_apps:PROBE", "is not a jobsys App"),
        ("tests.integration.worker_apps:nothere", "module 'tests.integration.worker_apps' has no"),
    ],
)
def test_worker_command_refuses_a_bad_app_target_with_exit_2(
    tmp_path: Path, target: str, message: str
) -> None:
    from click.testing import CliRunner

    from jobsys.cli import main

    worker_apps.loaded_topology(tmp_path)
    result = CliRunner().invoke(
        main, ["worker", target, "--topology", str(tmp_path / "topology.yaml")]
    )
    assert result.exit_code == 2
    assert message in result.output


def test_worker_command_refuses_a_queue_that_is_not_in_the_topology(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from jobsys.cli import main

    worker_apps.loaded_topology(tmp_path)
    result = CliRunner().invoke(
        main,
        [
            "worker",
            "tests.integration.worker_apps:app",
            "--topology",
            str(tmp_path / "topology.yaml"),
            "--queue",
            "nope",
        ],
    )
    assert result.exit_code == 2
    assert "queue(s) not in the topology: nope" in result.output
