"""The contract: each scenario runs on the in-memory kit and on RabbitMQ (a private vhost),
and both must give the same outcome, outcome for outcome. How long the kit's half takes is
printed (``-rP`` shows it) and measured by ``bench/kit.py``, never asserted.

What is compared leaves out what differs by nature: job ids, timestamps, the worker's host
name and tracebacks (their presence is compared, not their text).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from jobsys.app import App, JobContext
from jobsys.errors import JobFailed, JobsysError, Reject
from jobsys.publish.prepare import JobRequest
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text
from tests.contract.sides import Side, on_both

pytestmark = pytest.mark.timeout(60)

TOPOLOGY = """\
version: 1
exchanges:
  c.direct: {type: direct}
  c.fanout: {type: fanout}
  c.topic: {type: topic}
  c.headers: {type: headers}
queues:
  c.a: {type: classic}
  c.b: {type: classic}
  c.hash: {type: classic}
  c.star: {type: classic}
  c.mixed: {type: classic}
  c.prio: {type: classic, max_priority: 10}
  c.small: {type: quorum, max_length: 2, overflow: reject-publish}
  c.smalldlx: {type: classic, max_length: 2, overflow: reject-publish-dlx}
  c.drop: {type: classic, max_length: 2}
  c.work: {type: classic}
bindings:
  - {exchange: c.direct, queue: c.a, routing_key: a}
  - {exchange: c.direct, queue: c.b, routing_key: b}
  - {exchange: c.direct, queue: c.prio, routing_key: prio}
  - {exchange: c.direct, queue: c.small, routing_key: small}
  - {exchange: c.direct, queue: c.smalldlx, routing_key: smalldlx}
  - {exchange: c.direct, queue: c.drop, routing_key: drop}
  - {exchange: c.direct, queue: c.work, routing_key: work}
  - {exchange: c.fanout, queue: c.a}
  - {exchange: c.fanout, queue: c.b}
  - {exchange: c.topic, queue: c.hash, routing_key: "#"}
  - {exchange: c.topic, queue: c.a, routing_key: "a.#"}
  - {exchange: c.topic, queue: c.star, routing_key: "*.b"}
  - {exchange: c.topic, queue: c.mixed, routing_key: "a.*.#.c"}
  - {exchange: c.topic, queue: c.b, routing_key: "#.b.#"}
  - {exchange: c.headers, queue: c.a, headers: {kind: x, region: eu}, match: all}
  - {exchange: c.headers, queue: c.b, headers: {kind: x, region: us}, match: any}
job_types:
  d_a: {exchange: c.direct, routing_key: a}
  d_b: {exchange: c.direct, routing_key: b}
  fan: {exchange: c.fanout}
  t_empty: {exchange: c.topic, routing_key: ""}
  t_a: {exchange: c.topic, routing_key: a}
  t_ab: {exchange: c.topic, routing_key: a.b}
  t_b: {exchange: c.topic, routing_key: b}
  t_abc: {exchange: c.topic, routing_key: a.b.c}
  t_axyc: {exchange: c.topic, routing_key: a.x.y.c}
  t_ac: {exchange: c.topic, routing_key: a.c}
  t_abb: {exchange: c.topic, routing_key: a.b.b}
  t_dots: {exchange: c.topic, routing_key: a..b}
  h_eu: {exchange: c.headers, headers: {kind: x, region: eu}}
  h_us: {exchange: c.headers, headers: {kind: y, region: us}}
  h_kind: {exchange: c.headers, headers: {kind: x}}
  prio: {exchange: c.direct, routing_key: prio}
  small: {exchange: c.direct, routing_key: small}
  smalldlx: {exchange: c.direct, routing_key: smalldlx}
  drop: {exchange: c.direct, routing_key: drop}
  fails:
    exchange: c.direct
    routing_key: work
    timeout: 10s
    retry: {max_attempts: 3, delays: [1s, 2s]}
  rejects: {exchange: c.direct, routing_key: work, retry: {max_attempts: 3, delays: [1s]}}
  typed: {exchange: c.direct, routing_key: work, retry: {max_attempts: 3, delays: [1s]}}
  answer: {exchange: c.direct, routing_key: work, retry: {max_attempts: 2, delays: [1s]}}
"""
ROUTED = [
    "d_a", "d_b", "fan", "t_empty", "t_a", "t_ab", "t_b", "t_abc", "t_axyc", "t_ac", "t_abb",
    "t_dots", "h_eu", "h_us", "h_kind",
]  # fmt: skip
QUEUES = ["c.a", "c.b", "c.hash", "c.star", "c.mixed"]
#: Dead-letter headers that differ by nature between two runs.
VOLATILE = {
    "jobsys-job-id",
    "jobsys-failed-at-ms",
    "jobsys-first-failed-at-ms",
    "jobsys-published-at-ms",
    "jobsys-due-at-ms",
    "jobsys-worker-host",
    "jobsys-traceback",
    "traceparent",
    "tracestate",
}


class Typed(BaseModel):
    n: int


@pytest.fixture(scope="module")
def loaded() -> LoadedTopology:
    return load_topology_text(TOPOLOGY, "contract.yaml")


async def _same(
    scenario: Callable[[Side], Any], app: App, loaded: LoadedTopology, settings: Settings
) -> Any:
    in_memory, on_broker, kit_s = await on_both(scenario, app, loaded, settings)
    print(f"the kit's half took {kit_s:.3f}s")
    assert in_memory == on_broker, f"kit: {in_memory!r}\nrabbitmq: {on_broker!r}"
    return in_memory


def _names(error: object) -> str:
    return type(error).__name__


def _stable(headers: dict[str, Any]) -> dict[str, Any]:
    """The headers that must agree: jobsys's own and the broker's first-death record, less
    what differs by nature; tracebacks by presence only."""
    kept = {
        name: value
        for name, value in headers.items()
        if (name.startswith("jobsys-") or name.startswith("x-first-death")) and name not in VOLATILE
    }
    kept["has traceback"] = "jobsys-traceback" in headers
    return kept


# -- routing -------------------------------------------------------------------------------------


async def test_routing_for_every_exchange_type_matches_the_broker(
    loaded: LoadedTopology, vhost_settings: Settings
) -> None:
    async def scenario(side: Side) -> dict[str, list[str]]:
        for job_type in ROUTED:
            await side.producer.publish(job_type, {})
        return {queue: sorted(str(m.job_type) for m in await side.read(queue)) for queue in QUEUES}

    routed = await _same(scenario, App(), loaded, vhost_settings)
    # The topic edge cases the broker decides, stated so a reader sees them:
    assert "t_empty" in routed["c.hash"]  # '#' matches the empty key
    assert "t_a" in routed["c.a"]  # 'a.#' matches 'a' ('#' is zero or more words)
    assert "t_b" not in routed["c.star"]  # '*' is exactly one word
    assert "t_abb" not in routed["c.star"]
    assert "t_axyc" in routed["c.mixed"] and "t_ac" not in routed["c.mixed"]
    assert "t_dots" not in routed["c.star"]  # 'a..b' is three words, one of them empty
    assert routed["c.b"].count("t_abb") == 1  # one copy per queue, however many bindings match


# -- priority --------------------------------------------------------------------------------


async def test_priority_order_matches_the_broker(
    loaded: LoadedTopology, vhost_settings: Settings
) -> None:
    app = App()
    order: list[int] = []

    @app.handler("prio")
    async def prio(payload: dict[str, int]) -> None:
        order.append(payload["n"])

    priorities = [1, 5, None, 10, 0, 5, 9, 1]

    async def scenario(side: Side) -> list[int]:
        order.clear()
        for n, priority in enumerate(priorities):
            await side.producer.publish("prio", {"n": n}, priority=priority)
        await side.run_until(lambda: len(order) == len(priorities), max_s=10)
        return list(order)

    ran = await _same(scenario, app, loaded, vhost_settings)
    assert ran == [3, 6, 1, 5, 0, 7, 2, 4]


# -- retries and dead letters ----------------------------------------------------------------


async def test_retry_counts_delays_and_dead_letter_headers_match_the_broker(
    loaded: LoadedTopology, vhost_settings: Settings
) -> None:
    app = App()
    runs: list[tuple[str, int, float]] = []

    @app.handler("fails")
    async def fails(payload: Any, ctx: JobContext) -> None:
        from jobsys.wire.headers import now_ms

        runs.append((ctx.job_type, ctx.attempt, now_ms() / 1000))
        raise ConnectionError("the service is down")

    @app.handler("rejects")
    async def rejects(payload: Any, ctx: JobContext) -> None:
        from jobsys.wire.headers import now_ms

        runs.append((ctx.job_type, ctx.attempt, now_ms() / 1000))
        raise Reject("never valid")

    @app.handler("typed")
    async def typed(payload: Typed, ctx: JobContext) -> None:
        runs.append((ctx.job_type, ctx.attempt, 0.0))

    gaps: dict[str, list[float]] = {}

    async def scenario(side: Side) -> Any:
        runs.clear()
        await side.producer.publish("fails", {"n": 1})
        await side.producer.publish("rejects", {"n": 2})
        # A payload the producer's own check would refuse reaches the worker anyway when it
        # was published by something that does not know the model: it is dead-lettered at once.
        raw = await _raw_publish(side, "typed", {"n": "not a number"})
        await side.run_until(lambda: len(runs) >= 4, max_s=15)
        times = [t for job_type, _, t in runs if job_type == "fails"]
        gaps[side.name] = [b - a for a, b in itertools.pairwise(times)]
        dead = await side.read("c.work.dead")
        return (
            sorted((job_type, attempt) for job_type, attempt, _ in runs),
            sorted((str(m.job_type), sorted(_stable(m.headers).items())) for m in dead),
            raw,
        )

    attempts, dead, _ = await _same(scenario, app, loaded, vhost_settings)
    assert attempts == [("fails", 1), ("fails", 2), ("fails", 3), ("rejects", 1)]
    assert [d[0] for d in dead] == ["fails", "rejects", "typed"]
    # The kit's delays are exact; the broker's are at least as long, and late by under 1.5 s.
    assert gaps["kit"] == [1.0, 2.0]
    for planned, measured in zip(gaps["kit"], gaps["rabbitmq"], strict=True):
        assert planned <= measured + 0.05 < planned + 1.5, gaps


async def _raw_publish(side: Side, job_type: str, payload: Any) -> str:
    # Without the app's payload models: what another service would send.
    async with side.modelless() as producer:
        await producer.publish(job_type, payload)
    return "sent"


# -- publish errors --------------------------------------------------------------------------


async def test_queue_full_errors_and_overflow_match_the_broker(
    loaded: LoadedTopology, vhost_settings: Settings
) -> None:
    async def scenario(side: Side) -> Any:
        outcomes = {}
        for job_type in ("small", "smalldlx", "drop"):
            results = await side.producer.publish_many(
                [JobRequest(job_type, {"n": n}) for n in range(4)], window=1
            )
            outcomes[job_type] = [
                _names(r) if isinstance(r, JobsysError) else "Receipt" for r in results
            ]
        kept = {
            queue: [m.body for m in await side.read(queue)]
            for queue in ("c.small", "c.smalldlx", "c.drop")
        }
        dead = {
            queue: [(m.body, _stable(m.headers)) for m in await side.read(f"{queue}.dead")]
            for queue in ("c.small", "c.smalldlx", "c.drop")
        }
        return outcomes, kept, dead

    outcomes, kept, dead = await _same(scenario, App(), loaded, vhost_settings)
    # A classic queue holds its limit exactly; a quorum queue (3.10) takes one past it.
    assert outcomes["smalldlx"] == ["Receipt", "Receipt", "QueueFullError", "QueueFullError"]
    assert outcomes["small"] == ["Receipt", "Receipt", "Receipt", "QueueFullError"]
    assert outcomes["drop"] == ["Receipt"] * 4
    assert len(kept["c.drop"]) == 2 and len(dead["c.drop"]) == 2
    assert dead["c.drop"][0][1]["x-first-death-reason"] == "maxlen"


async def test_unroutable_and_payload_errors_match_the_broker(
    loaded: LoadedTopology, vhost_settings: Settings
) -> None:
    app = App()

    @app.handler("typed")
    async def typed(payload: Typed) -> None:
        pass

    async def scenario(side: Side) -> list[str]:
        errors = []
        await side.unbind("c.direct", "c.b", "b")  # the broker lost a binding: drift
        await side.delete_exchange("c.fanout")  # and an exchange
        for job_type, payload in (
            ("d_b", {}),
            ("fan", {}),
            ("typed", {"n": "x"}),
            ("no_such_type", {}),
            ("typed", {"n": 1, "pad": "x" * 2_000_000}),
            ("d_a", {"n": float("nan")}),
        ):
            try:
                await side.producer.publish(job_type, payload)
                errors.append("Receipt")
            except JobsysError as exc:
                errors.append(_names(exc))
        return errors

    errors = await _same(scenario, app, loaded, vhost_settings)
    assert errors[:4] == [
        "UnroutableError",
        "UnroutableError",
        "PayloadValidationError",
        "UnknownJobTypeError",
    ]


# -- delays and results ----------------------------------------------------------------------


async def test_delayed_jobs_and_call_results_match_the_broker(
    loaded: LoadedTopology, vhost_settings: Settings
) -> None:
    app = App()
    order: list[str] = []

    @app.handler("answer")
    async def answer(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        order.append(payload["name"])
        if payload.get("fail"):
            raise ValueError(f"no answer for {payload['name']}")
        return {"name": payload["name"], "attempt": ctx.attempt}

    async def scenario(side: Side) -> Any:
        order.clear()
        # Published in this order; the delays decide the order they run in.
        for name, delay in (("late", 3), ("soon", 1), ("now", None), ("at-once", 0)):
            await side.producer.publish("answer", {"name": name}, delay_s=delay)
        await side.run_until(lambda: len(order) == 4, max_s=10)
        ran = list(order)
        async with side.working():
            result = await side.producer.call("answer", {"name": "q"}, timeout_s=10)
            try:
                await side.producer.call("answer", {"name": "f", "fail": True}, timeout_s=10)
                failed: Any = None
            except JobFailed as exc:
                failed = (exc.error_type, exc.error_message, exc.attempts, exc.reason)
        return ran, result, failed

    ran, result, failed = await _same(scenario, app, loaded, vhost_settings)
    assert ran == ["now", "at-once", "soon", "late"]
    assert result == {"name": "q", "attempt": 1}
    assert failed == (
        "ValueError",
        "no answer for f",
        2,
        "gave up after 2 attempts: ValueError",
    )
