"""Attempt and publish middleware on a real broker: order, short-circuits, failures settled as
a handler's, and the producer built with ``app=``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from jobsys.app import App, JobContext
from jobsys.errors import PayloadValidationError, QueueFullError, Reject, Retry
from jobsys.publish.producer import JobRequest, Producer, Receipt
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.wire.headers import HEADER_ERROR_MESSAGE, HEADER_ERROR_TYPE
from tests.apps import worker_apps
from tests.apps.worker_apps import EmailPayload, drain_dead, publish, queue_depth, wait_until
from tests.harness.running import running_worker

pytestmark = pytest.mark.timeout(60)

Next = Callable[[], Awaitable[Any]]


@pytest.fixture
async def loaded(vhost_settings: Settings) -> LoadedTopology:
    topology = worker_apps.loaded_topology()
    await worker_apps.apply(vhost_settings, topology)
    return topology


def _app(seen: list[str]) -> App:
    app = App()

    @app.handler("echo")
    async def echo(payload: Any) -> str:  # no context: middleware gets one all the same
        seen.append(f"handler {payload['n']}")
        return "result"

    @app.handler("boom")
    async def boom(payload: Any) -> None:
        seen.append("handler boom")

    @app.handler("slow")
    async def slow(payload: Any) -> None:
        seen.append("handler slow")

    return app


async def test_middleware_runs_in_registration_order_around_the_handler_and_sees_its_result(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    seen: list[str] = []
    app = _app(seen)

    @app.middleware
    async def outer(ctx: JobContext, call_next: Next) -> Any:
        seen.append(f"outer in {ctx.job_type} attempt {ctx.attempt}")
        result = await call_next()
        seen.append(f"outer out {result}")
        return result

    async def inner(ctx: JobContext, call_next: Next) -> Any:
        seen.append(f"inner in {ctx.job_id}")
        return await call_next()

    app.add_middleware(inner)

    async with running_worker(app, loaded, vhost_settings) as worker:
        [job_id] = await publish(vhost_settings, loaded, "echo", [{"n": 1}])
        await wait_until(lambda: worker.stats.done == 1, what="one job done")
    assert seen == [
        "outer in echo attempt 1",
        f"inner in {job_id}",
        "handler 1",
        "outer out result",
    ]


async def test_a_middleware_may_reject_before_the_handler_runs_and_the_job_is_dead_lettered(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    seen: list[str] = []
    app = _app(seen)

    @app.middleware
    async def gate(ctx: JobContext, call_next: Next) -> Any:
        raise Reject("tenant is suspended")

    async with running_worker(app, loaded, vhost_settings) as worker:
        await publish(vhost_settings, loaded, "echo", [{"n": 1}])
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    [dead] = await drain_dead(vhost_settings)
    assert dead.headers[HEADER_ERROR_TYPE] == "jobsys.errors.Reject"
    assert dead.headers[HEADER_ERROR_MESSAGE] == "tenant is suspended"
    assert seen == []


async def test_a_middleware_may_ask_for_a_retry_and_the_next_attempt_runs(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    seen: list[str] = []
    app = _app(seen)

    @app.middleware
    async def first_time_busy(ctx: JobContext, call_next: Next) -> Any:
        if ctx.attempt == 1:
            raise Retry(delay_s=0, reason="rate limited")
        return await call_next()

    async with running_worker(app, loaded, vhost_settings) as worker:
        await publish(vhost_settings, loaded, "echo", [{"n": 7}])
        await wait_until(lambda: worker.stats.done == 1, what="the second attempt done")
    assert worker.stats.retried == 1
    assert seen == ["handler 7"]


@pytest.mark.parametrize(
    ("behaviour", "error_type", "message"),
    [
        ("raise_after", "RuntimeError", "audit log unreachable"),
        ("twice", "RuntimeError", "called call_next twice"),
        ("exit", "SystemExit", "2"),
    ],
)
async def test_an_exception_in_a_middleware_is_settled_like_a_handler_failure(
    vhost_settings: Settings,
    loaded: LoadedTopology,
    behaviour: str,
    error_type: str,
    message: str,
) -> None:
    seen: list[str] = []
    app = _app(seen)

    @app.middleware
    async def hostile(ctx: JobContext, call_next: Next) -> Any:
        await call_next()
        if behaviour == "raise_after":
            raise RuntimeError("audit log unreachable")
        if behaviour == "twice":
            await call_next()
        raise SystemExit(2)

    async with running_worker(app, loaded, vhost_settings) as worker:
        await publish(vhost_settings, loaded, "boom", [{}])  # max_attempts: 1
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    [dead] = await drain_dead(vhost_settings)
    assert dead.headers[HEADER_ERROR_TYPE] == error_type
    assert message in str(dead.headers[HEADER_ERROR_MESSAGE])
    assert seen == ["handler boom"]  # the handler ran once, even when call_next was repeated


async def test_a_middleware_that_blocks_is_stopped_at_the_deadline(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    seen: list[str] = []
    app = _app(seen)

    @app.middleware
    async def stuck(ctx: JobContext, call_next: Next) -> Any:
        await asyncio.sleep(3600)

    async with running_worker(app, loaded, vhost_settings) as worker:
        await publish(vhost_settings, loaded, "slow", [{}])  # timeout 500ms, max_attempts 1
        await wait_until(lambda: worker.stats.dead_lettered == 1, 20, what="dead-lettered")
    [dead] = await drain_dead(vhost_settings)
    assert dead.headers[HEADER_ERROR_TYPE] == "TimeoutError"
    assert "with its middleware" in str(dead.headers[HEADER_ERROR_MESSAGE])
    assert seen == []


async def test_publish_middleware_and_payload_models_come_with_the_app(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    app = App()
    requests: list[JobRequest] = []

    @app.handler("email")
    async def email(payload: EmailPayload) -> None: ...

    @app.publish_middleware
    async def tag_tenant(request: JobRequest, call_next: Callable[[JobRequest], Any]) -> Any:
        requests.append(request)
        return await call_next(dataclasses.replace(request, headers={"tenant": "acme"}))

    seen_headers: list[Any] = []

    @app.handler("echo")
    async def echo(payload: Any, ctx: JobContext) -> None:
        seen_headers.append(ctx.headers.get("tenant"))

    async with Producer(vhost_settings, loaded, app=app) as producer:
        receipt = await producer.publish("echo", {"n": 1})
        with pytest.raises(PayloadValidationError, match="subject"):
            await producer.publish("email", {"to": "a@example.com"})
        many = await producer.publish_many([JobRequest("echo", {"n": 2})])
    assert isinstance(receipt, Receipt) and isinstance(many[0], Receipt)
    assert [r.job_type for r in requests] == ["echo", "email", "echo"]
    async with running_worker(app, loaded, vhost_settings) as worker:
        await wait_until(lambda: worker.stats.done == 2, what="two jobs done")
    assert seen_headers == ["acme", "acme"]


async def test_a_publish_middleware_error_is_that_jobs_result_in_publish_many(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    app = App()

    @app.publish_middleware
    async def refuse_odd(request: JobRequest, call_next: Callable[[JobRequest], Any]) -> Any:
        if request.payload["n"] % 2:
            raise QueueFullError("odd jobs are refused here", job_id=request.job_id)
        return await call_next(request)

    async with Producer(vhost_settings, loaded, app=app) as producer:
        results = await producer.publish_many([JobRequest("echo", {"n": n}) for n in range(4)])
    assert [type(r).__name__ for r in results] == [
        "Receipt",
        "QueueFullError",
        "Receipt",
        "QueueFullError",
    ]
    assert await queue_depth(vhost_settings, worker_apps.WORK) == 2


async def test_call_next_refuses_what_is_not_a_job_request(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    app = App()

    @app.publish_middleware
    async def broken(request: JobRequest, call_next: Callable[[Any], Any]) -> Any:
        return await call_next({"job_type": "echo"})

    async with Producer(vhost_settings, loaded, app=app) as producer:
        with pytest.raises(Exception, match="passed call_next a dict, not a JobRequest"):
            await producer.publish("echo", {})
    assert await queue_depth(vhost_settings, worker_apps.WORK) == 0


# -- call() goes through the publish middleware too ----------------------------------------------


def _calling_app(middleware: Callable[[JobRequest, Callable[[JobRequest], Any]], Any]) -> App:
    app = App()

    @app.handler("echo")
    async def echo(payload: Any, ctx: JobContext) -> Any:
        return {"n": payload["n"], "tenant": ctx.headers.get("tenant")}

    app.publish_middleware(middleware)
    return app


async def test_call_goes_through_the_publish_middleware_and_returns_the_result(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    # Before, call() skipped the app's publish middleware: the tenant header never arrived.
    seen: list[str] = []

    async def tag_tenant(request: JobRequest, call_next: Callable[[JobRequest], Any]) -> Any:
        seen.append(request.job_type)
        receipt = await call_next(dataclasses.replace(request, headers={"tenant": "acme"}))
        assert isinstance(receipt, Receipt) and receipt.job_id == request.job_id
        return receipt

    app = _calling_app(tag_tenant)
    async with (
        running_worker(app, loaded, vhost_settings),
        Producer(vhost_settings, loaded, app=app) as producer,
    ):
        result = await producer.call("echo", {"n": 7}, timeout_s=30, job_id="job-7")
    assert result == {"n": 7, "tenant": "acme"}
    assert seen == ["echo"]


async def test_call_waits_for_the_job_the_middleware_published_last(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async def twice(request: JobRequest, call_next: Callable[[JobRequest], Any]) -> Any:
        await call_next(dataclasses.replace(request, payload={"n": 1}, job_id=None))
        return await call_next(dataclasses.replace(request, payload={"n": 2}, job_id=None))

    app = _calling_app(twice)
    async with (
        running_worker(app, loaded, vhost_settings) as worker,
        Producer(vhost_settings, loaded, app=app) as producer,
    ):
        assert await producer.call("echo", {"n": 0}, timeout_s=30) == {"n": 2, "tenant": None}
        await wait_until(lambda: worker.stats.done == 2, what="both jobs done")


async def test_a_call_whose_middleware_publishes_nothing_or_raises_says_so_and_sends_nothing(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async def swallow(request: JobRequest, call_next: Callable[[JobRequest], Any]) -> Any:
        return None

    async def refuse(request: JobRequest, call_next: Callable[[JobRequest], Any]) -> Any:
        raise QueueFullError("refused by policy", job_id=request.job_id)

    for middleware, error in ((swallow, "returned without publishing"), (refuse, "policy")):
        app = _calling_app(middleware)
        async with Producer(vhost_settings, loaded, app=app) as producer:
            with pytest.raises(Exception, match=error):
                await producer.call("echo", {"n": 1}, timeout_s=5)
    assert await queue_depth(vhost_settings, worker_apps.WORK) == 0


async def test_a_middleware_that_raises_after_publishing_reaches_the_caller_and_the_job_runs(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async def raise_after(request: JobRequest, call_next: Callable[[JobRequest], Any]) -> Any:
        await call_next(request)
        raise RuntimeError("audit log is down")

    app = _calling_app(raise_after)
    async with Producer(vhost_settings, loaded, app=app) as producer:
        with pytest.raises(RuntimeError, match="audit log is down"):
            await producer.call("echo", {"n": 1}, timeout_s=5)
        assert not producer._caller or not producer._caller._waiting  # nothing left waiting
    assert await queue_depth(vhost_settings, worker_apps.WORK) == 1  # it was published
