"""The worker against a real broker: acks, dead-lettering, deadlines, bounds on concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from jobsys.consume.options import WorkerOptions
from jobsys.consume.worker import Worker
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.wire.headers import (
    HEADER_ATTEMPTS,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_FAILED_AT_MS,
    HEADER_JOB_ID,
    HEADER_ORIGINAL_EXCHANGE,
    HEADER_ORIGINAL_QUEUE,
    HEADER_ORIGINAL_ROUTING_KEY,
    HEADER_TRACEBACK,
    HEADER_WORKER_HOST,
)
from tests.apps import worker_apps
from tests.apps.worker_apps import (
    PROBE,
    WORK,
    drain_dead,
    publish,
    publish_raw,
    queue_depth,
    wait_until,
)
from tests.harness.running import running_worker

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
    async with contextlib.AsyncExitStack() as stack:

        async def start(**options: Any) -> Worker:
            return await stack.enter_async_context(
                running_worker(worker_apps.app, loaded, vhost_settings, WorkerOptions(**options))
            )

        yield start
        if PROBE.release is not None:
            PROBE.release.set()  # a held job lets its worker drain


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
    assert headers[HEADER_ERROR_TYPE] == "jobsys.errors.PayloadValidationError"
    assert "subject" in str(headers[HEADER_ERROR_MESSAGE])
    assert "a@example.com" not in str(headers[HEADER_ERROR_MESSAGE])


@pytest.mark.parametrize(
    ("body", "properties", "error_type", "reason"),
    [
        (b"\xff\xfe", {"type": "echo"}, "DecodeError", "UTF-8"),
        (b"{not json", {"type": "echo"}, "DecodeError", "not JSON"),
        (b"{}", {"type": "echo", "content_type": "text/plain"}, "ContentTypeError", "content type"),
        (b"{}", {"type": "echo", "content_type": None}, "ContentTypeError", "no content type"),
        (b"{}", {"type": "echo", "content_encoding": "gzip"}, "ContentTypeError", "'gzip'"),
        (b"{}", {}, "DecodeError", "job type"),
        (b"{}", {"type": "echo", "headers": {}}, "DecodeError", "jobsys-job-id"),
        (b"{}", {"type": "orphan"}, "UnknownJobTypeError", "no handler"),
        (b'"' + b"x" * 2048 + b'"', {"type": "echo"}, "PayloadTooLargeError", "limit"),
    ],
    ids=[
        "not-utf8",
        "not-json",
        "wrong-content-type",
        "no-content-type",
        "gzip-flag",
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
    async with running_worker(worker_apps.app, loaded, settings) as worker:
        await publish_raw(settings, body, **properties)
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the bad job dead-lettered")
        [job_id] = await publish(settings, loaded, "echo", [{"after": True}])
        await wait_until(lambda: worker.stats.done == 1, what="the next job done")
        assert PROBE.done == [job_id]
    dead = await drain_dead(vhost_settings)
    assert len(dead) == 1
    [message] = dead
    assert message.body == body
    headers = message.headers
    assert str(headers[HEADER_ERROR_TYPE]).endswith(error_type)
    assert reason in str(headers[HEADER_ERROR_MESSAGE])
    assert HEADER_TRACEBACK not in headers
    assert headers[HEADER_ORIGINAL_QUEUE] == WORK
    assert headers[HEADER_ORIGINAL_EXCHANGE] == "wt.jobs"
    assert headers[HEADER_ORIGINAL_ROUTING_KEY] == "work"
    assert headers[HEADER_ATTEMPTS] == 1
    assert await queue_depth(vhost_settings, WORK) == 0


@pytest.mark.parametrize(
    ("properties", "reason"),
    [
        ({"content_encoding": "gzip"}, "content encoding 'gzip'"),
        ({"content_type": "text/plain"}, "content type 'text/plain'"),
        ({"content_type": None}, "no content type"),
    ],
    ids=["gzip-flag", "text-plain", "no-content-type"],
)
async def test_a_body_in_a_form_jobsys_did_not_write_is_refused_whatever_the_annotation(
    vhost_settings: Settings,
    loaded: LoadedTopology,
    properties: dict[str, Any],
    reason: str,
) -> None:
    # The handler takes a pydantic model that this body would satisfy: the decoder refuses the
    # delivery before the model (or the handler) ever sees it, as for an unannotated handler.
    body = b'{"to": "a@example.com", "subject": "hi"}'
    async with running_worker(worker_apps.app, loaded, vhost_settings) as worker:
        await publish_raw(vhost_settings, body, type="email", **properties)
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the job dead-lettered")
        [job_id] = await publish(vhost_settings, loaded, "email", [json.loads(body)])
        await wait_until(lambda: worker.stats.done == 1, what="the next job done")
    assert PROBE.done == [job_id]
    [dead] = await drain_dead(vhost_settings)
    assert dead.headers[HEADER_ERROR_TYPE] == "jobsys.errors.ContentTypeError"
    assert reason in str(dead.headers[HEADER_ERROR_MESSAGE])
    assert dead.headers[HEADER_ATTEMPTS] == 1  # refused at once, never retried


async def test_handler_exception_is_dead_lettered_with_its_traceback(
    vhost_settings: Settings, loaded: LoadedTopology, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    [job_id] = await publish(vhost_settings, loaded, "boom", [{"secret": "s3cr3t"}])
    await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    [dead] = await drain_dead(vhost_settings)
    headers = dead.headers
    assert headers[HEADER_JOB_ID] == job_id
    assert headers[HEADER_ERROR_TYPE] == "RuntimeError"
    assert headers[HEADER_ERROR_MESSAGE] == "the handler broke"
    assert "in boom" in str(headers[HEADER_TRACEBACK])
    assert "s3cr3t" not in str(headers[HEADER_TRACEBACK])
    assert isinstance(headers[HEADER_FAILED_AT_MS], int)
    assert headers[HEADER_WORKER_HOST]
    assert json.loads(dead.body) == {"secret": "s3cr3t"}
    assert dead.delivery_mode == 2


async def test_reject_signal_dead_letters_the_job_with_its_reason(
    vhost_settings: Settings, loaded: LoadedTopology, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    await publish(vhost_settings, loaded, "refuse", [{}])
    await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    [dead] = await drain_dead(vhost_settings)
    assert dead.headers[HEADER_ERROR_TYPE] == "jobsys.errors.Reject"
    assert dead.headers[HEADER_ERROR_MESSAGE] == "not for us"


async def test_job_past_its_deadline_is_dead_lettered_as_a_timeout(
    vhost_settings: Settings, loaded: LoadedTopology, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    await publish(vhost_settings, loaded, "slow", [{}])
    await wait_until(lambda: worker.stats.dead_lettered == 1, timeout_s=10, what="deadline")
    [dead] = await drain_dead(vhost_settings)
    assert dead.headers[HEADER_ERROR_TYPE] == "TimeoutError"
    assert "500ms" in str(dead.headers[HEADER_ERROR_MESSAGE])


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
    assert dead.headers[HEADER_ERROR_TYPE] == "TimeoutError"


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
