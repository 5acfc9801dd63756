"""The in-memory kit on its own: the virtual clock, what a test can inspect, call(), and the
hostile cases (handlers that raise, block or exit; a clock moved by a bad amount; a topology
the kit must refuse as ``topology validate`` does). Its equality with RabbitMQ is
tests/contract/."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from jobsys.app import App, JobContext
from jobsys.errors import (
    CallTimeout,
    ConfigError,
    JobFailed,
    KitError,
    PayloadValidationError,
    TopologyError,
    TopologyLoadError,
)
from jobsys.publish.prepare import JobRequest
from jobsys.testing import Kit
from jobsys.testing import KitError as TestingKitError
from jobsys.topology.loader import LoadedTopology, load_topology, load_topology_text
from jobsys.wire.headers import now_ms

pytestmark = pytest.mark.timeout(30)

TOPOLOGY = """\
version: 1
exchanges:
  k.jobs: {type: direct}
queues:
  k.work: {type: classic}
bindings:
  - {exchange: k.jobs, queue: k.work, routing_key: work}
job_types:
  ok: {exchange: k.jobs, routing_key: work}
  flaky: {exchange: k.jobs, routing_key: work, retry: {max_attempts: 3, delays: [5s, 30s]}}
  exits: {exchange: k.jobs, routing_key: work, retry: {max_attempts: 2, delays: [1s]}}
  blocks: {exchange: k.jobs, routing_key: work, timeout: 1s, retry: {max_attempts: 1}}
  calls: {exchange: k.jobs, routing_key: work, retry: {max_attempts: 1}}
  again: {exchange: k.jobs, routing_key: work}
  stuck: {exchange: k.jobs, routing_key: work, timeout: 1s, retry: {max_attempts: 1}}
"""

app = App()
seen: list[tuple[str, int, int]] = []  # (job type, attempt, kit time in ms)


@app.handler("ok")
async def ok(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    seen.append(("ok", ctx.attempt, now_ms()))
    return {"doubled": payload["n"] * 2}


@app.handler("flaky")
async def flaky(payload: Any, ctx: JobContext) -> None:
    seen.append(("flaky", ctx.attempt, now_ms()))
    if ctx.attempt < payload["succeed_at"]:
        raise ConnectionError(f"attempt {ctx.attempt} failed")


@app.handler("exits")
async def exits(payload: Any) -> None:
    sys.exit(3)


@app.handler("blocks")
async def blocks(payload: Any) -> None:
    await asyncio.Event().wait()  # never set: only the job type's 1 s deadline ends it


@app.handler("calls")
async def calls(payload: Any) -> None:
    await KIT[0].producer.call("ok", {"n": 1}, timeout_s=5)


@app.handler("again")
async def again(payload: Any) -> None:
    await KIT[0].producer.publish("again", {})


STUCK_DONE = threading.Event()


@app.handler("stuck")
def stuck(payload: Any) -> None:
    time.sleep(3)  # a sync handler that blocks its thread past the 1 s deadline
    STUCK_DONE.set()


KIT: list[Kit] = []


class _Model(BaseModel):
    n: int


@pytest.fixture
def loaded() -> LoadedTopology:
    return load_topology_text(TOPOLOGY, "kit.yaml")


@pytest.fixture
async def kit(loaded: LoadedTopology) -> Any:
    seen.clear()
    async with Kit(app, loaded) as opened:
        KIT[:] = [opened]
        yield opened


async def test_a_delayed_job_runs_exactly_when_the_virtual_clock_reaches_it(kit: Kit) -> None:
    start = kit.now_ms()
    began = time.monotonic()
    await kit.producer.publish("ok", {"n": 1}, delay_s=3600)
    await kit.advance(3599.999)
    assert seen == []
    await kit.advance(0.001)
    assert seen == [("ok", 1, start + 3_600_000)]
    assert time.monotonic() - began < 60  # an hour of delay, not waited for in real time


async def test_retries_follow_the_policy_on_the_virtual_clock(kit: Kit) -> None:
    start = kit.now_ms()
    receipt = await kit.producer.publish("flaky", {"succeed_at": 3})
    await kit.drain()
    await kit.advance(5)
    await kit.advance(30)
    assert seen == [
        ("flaky", 1, start),
        ("flaky", 2, start + 5_000),
        ("flaky", 3, start + 35_000),
    ]
    runs = kit.runs_of(receipt.job_id)
    assert [(r.attempt, r.outcome, r.retry_in_s) for r in runs] == [
        (1, "retry", 5.0),
        (2, "retry", 30.0),
        (3, "ack", None),
    ]
    assert kit.dead_letters("k.work") == []
    assert [p.job_type for p in kit.published] == ["flaky"]  # retries are not "published"


async def test_a_job_that_exhausts_its_retries_is_in_the_dead_letter_queue_with_why(
    kit: Kit,
) -> None:
    receipt = await kit.producer.publish("flaky", {"succeed_at": 99})
    await kit.run_until_idle()
    [dead] = kit.dead_letters("k.work")
    assert dead.job_id == receipt.job_id
    assert (dead.error_type, dead.attempts) == ("ConnectionError", 3)
    assert dead.reason == "gave up after 3 attempts: ConnectionError"
    assert kit.stats.dead_lettered == 1 and kit.stats.retried == 2


async def test_a_handler_that_exits_fails_its_attempt_and_does_not_end_the_kit(kit: Kit) -> None:
    await kit.producer.publish("exits", {})
    await kit.run_until_idle()
    [dead] = kit.dead_letters("k.work")
    assert (dead.error_type, dead.attempts) == ("SystemExit", 2)


async def test_a_handler_that_blocks_is_stopped_at_its_deadline(kit: Kit) -> None:
    await kit.producer.publish("blocks", {})
    await kit.drain()  # the deadline is real time: the job type's 1 s
    [dead] = kit.dead_letters("k.work")
    assert dead.error_type == "TimeoutError"


async def test_a_sync_handler_that_blocks_is_settled_at_its_deadline_and_the_kit_closes(
    loaded: LoadedTopology,
) -> None:
    STUCK_DONE.clear()
    async with Kit(app, loaded) as kit:
        await kit.producer.publish("stuck", {})
        await kit.drain()
        [dead] = kit.dead_letters("k.work")
        assert dead.error_type == "TimeoutError"
    assert not STUCK_DONE.is_set()  # neither drain nor close waited for the blocked thread


async def test_call_returns_the_result_or_raises_job_failed(kit: Kit) -> None:
    assert await kit.producer.call("ok", {"n": 21}, timeout_s=5) == {"doubled": 42}
    with pytest.raises(JobFailed) as failed:
        await kit.producer.call("flaky", {"succeed_at": 99}, timeout_s=60)
    assert failed.value.attempts == 3
    # Retries ran on the virtual clock inside the call: 5 s, then 30 s.
    assert [t for name, _, t in seen if name == "flaky"][-1] - seen[1][2] == 35_000


async def test_call_times_out_on_the_virtual_clock(kit: Kit) -> None:
    start = kit.now_ms()
    with pytest.raises(CallTimeout):
        await kit.producer.call("ok", {"n": 1}, delay_s=120, timeout_s=60)
    assert kit.now_ms() == start + 60_000
    await kit.advance(60)
    assert len(seen) == 1  # the job was published and still ran


async def test_call_from_inside_a_handler_fails_that_attempt_clearly(kit: Kit) -> None:
    await kit.producer.publish("calls", {})
    await kit.drain()
    [run] = kit.runs
    assert run.error_type == "KitError"
    assert "inside a handler" in str(run.error)


async def test_handlers_that_publish_without_end_stop_the_kit_with_a_clear_error(
    loaded: LoadedTopology,
) -> None:
    async with Kit(app, loaded, max_deliveries=50) as kit:
        KIT[:] = [kit]
        await kit.producer.publish("again", {})
        with pytest.raises(KitError, match="50 deliveries without the kit going idle"):
            await kit.drain()
        assert len(kit.queued("k.work")) == 1  # nothing lost


@pytest.mark.parametrize(
    "seconds",
    [-1, -0.001, float("nan"), float("inf"), float("-inf"), 1e300, 10**400, True, "30", None],
)
async def test_advance_refuses_what_is_not_a_forward_amount_of_seconds(
    kit: Kit, seconds: Any
) -> None:
    before = kit.now_ms()
    with pytest.raises(KitError):
        await kit.advance(seconds)
    assert kit.now_ms() == before


async def test_run_until_idle_stops_where_the_last_job_fell_due(kit: Kit) -> None:
    start = kit.now_ms()
    await kit.run_until_idle()  # nothing waits: the clock stays
    assert kit.now_ms() == start
    await kit.producer.publish("ok", {"n": 1}, delay_s=30)
    await kit.run_until_idle()
    assert len(seen) == 1
    assert 30_000 <= kit.now_ms() - start < 86_400_000  # not a whole day on


async def test_run_until_idle_says_so_when_jobs_still_wait_past_max_s(kit: Kit) -> None:
    # Before, it returned quietly with the job still delayed.
    await kit.producer.publish("ok", {"n": 1}, delay_s=2 * 86_400)
    with pytest.raises(TestingKitError, match="still wait after run_until_idle"):
        await kit.run_until_idle()
    assert seen == []
    await kit.run_until_idle(max_s=3 * 86_400)
    assert len(seen) == 1


async def test_advance_by_the_longest_delay_runs_it(kit: Kit) -> None:
    await kit.producer.publish("ok", {"n": 1}, delay_s=kit.topology.delays.max_delay)
    await kit.advance(kit.topology.delays.max_delay)
    assert len(seen) == 1


async def test_payload_errors_are_refused_before_anything_is_queued(kit: Kit) -> None:
    with pytest.raises(PayloadValidationError):
        await kit.new_producer(models={"ok": _Model}).publish("ok", {"n": "x"})
    assert kit.queued("k.work") == []


async def test_a_retry_whose_route_is_gone_stops_the_kit_as_it_stops_a_worker(kit: Kit) -> None:
    # The delay levels lost their bindings on the broker (drift): a retry cannot be routed.
    levels = f"{kit.topology.namespace}.wait."
    kit.broker.bindings[:] = [b for b in kit.broker.bindings if not b.source.startswith(levels)]
    await kit.producer.publish("flaky", {"succeed_at": 99})
    with pytest.raises(TopologyError, match="topology drift"):
        await kit.drain()
    assert len(kit.queued("k.work")) == 1  # requeued, not lost


async def test_the_kit_gives_the_wall_clock_back_when_closed(loaded: LoadedTopology) -> None:
    async with Kit(app, loaded) as kit:
        await kit.advance(86_400)
        assert now_ms() == kit.now_ms()
    assert abs(now_ms() - time.time() * 1000) < 1000
    with pytest.raises(KitError, match="not open"):
        await kit.drain()


def test_a_topology_file_is_refused_exactly_as_validate_refuses_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        TOPOLOGY.replace("routing_key: work}\n  flaky", "routing_key: nowhere}\n  flaky")
    )
    with pytest.raises(TopologyLoadError) as by_validate:
        load_topology(bad)
    with pytest.raises(TopologyLoadError) as by_kit:
        Kit(app, bad)
    assert str(by_kit.value) == str(by_validate.value)
    assert "bad.yaml:" in str(by_kit.value)


async def test_call_goes_through_the_apps_publish_middleware(loaded: LoadedTopology) -> None:
    stamped = App()
    seen_headers: list[dict[str, Any]] = []

    @stamped.publish_middleware
    async def tenant(request: JobRequest, call_next: Any) -> Any:
        return await call_next(dataclasses.replace(request, headers={"tenant": "acme"}))

    @stamped.handler("ok")
    async def handle(payload: Any, ctx: JobContext) -> int:
        seen_headers.append(dict(ctx.headers))
        return 7

    async with Kit(stamped, loaded) as kit:
        assert await kit.producer.call("ok", {"n": 1}, timeout_s=5) == 7
    assert seen_headers[0]["tenant"] == "acme"


async def test_a_call_whose_middleware_publishes_nothing_is_refused(loaded: LoadedTopology) -> None:
    swallowing = App()

    @swallowing.publish_middleware
    async def swallow(request: JobRequest, call_next: Any) -> Any:
        return None

    async with Kit(swallowing, loaded) as kit:
        with pytest.raises(ConfigError, match="returned without publishing"):
            await kit.producer.call("ok", {"n": 1}, timeout_s=5)
        assert kit.sent == []


RENAMES = """\
  renames_cancel: {exchange: k.jobs, routing_key: work, timeout: 1s, retry: {max_attempts: 1}}
"""


async def test_a_handler_turning_its_deadline_into_its_own_timeout_error_is_still_overrun(
    tmp_path: Path,
) -> None:
    own = App()

    @own.handler("renames_cancel")
    async def renames_cancel(payload: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise TimeoutError("the client's own timeout") from None  # as some clients do

    loaded = load_topology_text(TOPOLOGY + RENAMES, "kit.yaml")
    async with Kit(own, loaded) as kit:
        await kit.producer.publish("renames_cancel", {})
        await kit.drain()
        [dead] = kit.dead_letters("k.work")
    assert dead.error_type == "TimeoutError"
    assert "exceeded its deadline of 1s" in (dead.record.error_message or "")
