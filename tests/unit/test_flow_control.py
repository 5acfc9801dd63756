"""Flow control in the topology: weighted pools (``pools:``) and ``max_running``: located
refusals of every hostile value, the prefetch each queue gets, what the plan shows, and
``--pool`` refused where it cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from jobsys.app import App
from jobsys.cli import main
from jobsys.consume.options import WorkerOptions
from jobsys.consume.pools import HOLD_S, Pool, describe_pools, plan_pools, runner_groups
from jobsys.errors import ConfigError, TopologyLoadError, TopologyValidationError
from jobsys.process.child import ChildSpec
from jobsys.topology.entities import desired_entities
from jobsys.topology.flow import flow_json, flow_lines
from jobsys.topology.loader import load_topology_text

BASE = """\
version: 1
exchanges:
  ex: {type: direct}
queues:
  a: {type: classic}
  b: {type: classic}
bindings:
  - {exchange: ex, queue: a, routing_key: a}
  - {exchange: ex, queue: b, routing_key: b}
job_types:
  ja: {exchange: ex, routing_key: a}
  jb: {exchange: ex, routing_key: b}
pools:
  p:
POOL
"""


def with_pool(pool: str) -> str:
    return BASE.replace("POOL", "\n".join("    " + line for line in pool.splitlines()))


def problems_of(text: str) -> list[str]:
    with pytest.raises((TopologyLoadError, TopologyValidationError)) as caught:
        load_topology_text(text, "t.yaml")
    return caught.value.problems


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        ("0", "greater than or equal to 1"),
        ("-3", "greater than or equal to 1"),
        ("1001", "less than or equal to 1000"),
        ("99999999999999999999999999", "less than or equal to 1000"),
        (".nan", "valid integer"),
        (".inf", "valid integer"),
        ("2.5", "valid integer"),
        ('"6"', "valid integer"),
        ("true", "valid integer"),
        ("[1]", "valid integer"),
        ("null", "valid integer"),
        ('"6/fortnight"', "valid integer"),
    ],
)
def test_a_hostile_weight_is_refused_at_its_line_and_column(weight: str, message: str) -> None:
    problems = problems_of(with_pool(f"queues: {{a: 1, b: {weight}}}"))
    assert len(problems) == 1, problems
    assert problems[0].startswith("t.yaml:15:20: pools.p.queues.b: "), problems
    assert message in problems[0]


@pytest.mark.parametrize(
    ("pool", "where", "message"),
    [
        ("queues: {}", "15:5: pools.p.queues", "at least 1 item"),
        ("concurrency: 3", "14:3: pools.p.queues", "required key is missing"),
        ("queues: {a: 1}\nconcurrency: 0", "16:5: pools.p.concurrency", "greater than or equal"),
        ('queues: {a: 1}\nconcurrency: "4"', "16:5: pools.p.concurrency", "valid integer"),
        ("queues: {a: 1}\nprefetch: 70000", "16:5: pools.p.prefetch", "less than or equal"),
        (
            "queues: {a: 1}\nconcurrency: 10\nprefetch: 4",
            "14:3: pools.p",
            "prefetch (4) is below concurrency (10)",
        ),
        ("queues: {a: 1}\nweights: {a: 2}", "16:5: pools.p.weights", "unknown key 'weights'"),
        ("queues: {a: 1, c: 2}", "15:23: pools.p.queues.c", "queue 'c' is not declared"),
        ("queues: {a: 1, 'x y': 2}", "15:20: pools.p.queues.x y", "should match pattern"),
    ],
)
def test_a_malformed_pool_is_refused_with_its_position(pool: str, where: str, message: str) -> None:
    problems = problems_of(with_pool(pool))
    assert any(p.startswith(f"t.yaml:{where}: ") and message in p for p in problems), problems


def test_a_pool_naming_a_queue_that_is_itself_malformed_says_only_what_is_wrong_with_it() -> None:
    text = with_pool("queues: {a: 1, b: 2}").replace("b: {type: classic}", "b: {type: clasic}")
    problems = problems_of(text)
    assert len(problems) == 1 and "queues.b.type" in problems[0], problems


def test_each_queue_prefetches_by_its_weight_and_never_below_the_concurrency() -> None:
    loaded = load_topology_text(with_pool("concurrency: 4\nqueues: {a: 100, b: 1}"))
    pool = loaded.topology.pools["p"]
    assert pool.heaviest_prefetch == 32
    assert (pool.prefetch_of("a"), pool.prefetch_of("b")) == (32, 4)
    explicit = load_topology_text(with_pool("concurrency: 4\nprefetch: 50\nqueues: {a: 2, b: 1}"))
    assert explicit.topology.pools["p"].prefetch_of("b") == 25


def test_the_plan_shows_each_queue_weight_share_and_prefetch() -> None:
    loaded = load_topology_text(with_pool("concurrency: 10\nqueues: {a: 6, b: 2}"))
    assert flow_lines(loaded.topology) == [
        "pool p (concurrency 10): a weight 6 = 75.0% (prefetch 40), "
        "b weight 2 = 25.0% (prefetch 14)"
    ]
    assert flow_json(loaded.topology)["pools"]["p"]["queues"]["b"] == {
        "weight": 2,
        "share": 0.25,
        "prefetch": 14,
    }


def test_a_worker_plans_one_runner_group_for_the_queues_of_a_pool() -> None:
    loaded = load_topology_text(with_pool("concurrency: 4\nqueues: {a: 3, b: 1}"))
    pools = plan_pools(App(), loaded.topology, WorkerOptions(pool="p"))
    assert [p.queue for p in pools] == ["a", "b"]
    [group] = runner_groups(pools)
    assert group.concurrency == 4 and group.picker.weights == [3, 1]
    assert describe_pools(pools) == "pool p (concurrency 4): a 3 (prefetch 32), b 1 (prefetch 11)"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (WorkerOptions(pool="nope"), "pool 'nope' is not in the topology (pools: p)"),
        (WorkerOptions(pool="p", queues=("a",)), "either a weighted pool or queues"),
        (WorkerOptions(pool="p", concurrency=50, prefetch=10), "below concurrency"),
    ],
)
def test_a_worker_refuses_a_pool_it_cannot_serve(options: WorkerOptions, message: str) -> None:
    loaded = load_topology_text(with_pool("queues: {a: 3, b: 1}"))
    with pytest.raises(ConfigError) as caught:
        plan_pools(App(), loaded.topology, options)
    assert message in str(caught.value)


def test_the_pool_reaches_a_supervised_child() -> None:
    spec = ChildSpec("m:app", "/t.yaml", WorkerOptions(pool="mixed", concurrency=3))
    assert ChildSpec.from_json(spec.command()[3]).options.pool == "mixed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pool", "nope"], "pool 'nope' is not in the topology (pools: p)"),
        (["--pool", "p\x1b[31m"], "pool 'p\\x1b[31m' is not in the topology"),
        (["--pool", "p", "--queue", "a"], "either --pool or --queue"),
    ],
)
def test_the_worker_command_refuses_a_pool_it_cannot_serve(
    tmp_path: Path, args: list[str], message: str
) -> None:
    file = tmp_path / "t.yaml"
    file.write_text(with_pool("queues: {a: 3, b: 1}"), encoding="utf-8")
    result = CliRunner().invoke(
        main, ["worker", "tests.apps.worker_apps:app", "--topology", str(file), *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "\x1b" not in result.output


def _group(weights: str) -> list[Pool]:
    loaded = load_topology_text(with_pool(f"concurrency: 2\nqueues: {weights}"))
    return plan_pools(App(), loaded.topology, WorkerOptions(pool="p"))


def test_a_busy_queue_with_nothing_waiting_keeps_its_turn_for_the_hold_then_loses_it() -> None:
    a, b = _group("{a: 3, b: 1}")
    b.waiting.append(object())  # type: ignore[arg-type]
    a.busy_at = 100.0  # a delivered while busy at t=100; its next jobs are on their way
    assert a.runners.next_pool(100.0 + HOLD_S / 2) is a
    assert a.runners.next_pool(100.0 + HOLD_S * 1.01) is b


def test_a_queue_of_its_own_is_never_waited_for() -> None:
    loaded = load_topology_text(with_pool("queues: {a: 1}"))
    [pool] = plan_pools(App(), loaded.topology, WorkerOptions(queues=("a",)))
    pool.busy_at = 100.0
    assert pool.runners.next_pool(100.0) is None


MAX_RUNNING = """\
version: 1
exchanges:
  ex: {type: direct}
queues:
  a: {type: classic}
bindings:
  - {exchange: ex, queue: a, routing_key: a}
job_types:
  ja:
    exchange: ex
    routing_key: a
    max_running: VALUE
"""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "greater than or equal to 1"),
        ("-1", "greater than or equal to 1"),
        ("10001", "less than or equal to 10000"),
        ("99999999999999999999999999999", "less than or equal to 10000"),
        (".nan", "valid integer"),
        ("3.0", "valid integer"),
        ('"3"', "valid integer"),
        ("true", "valid integer"),
        ('"50/fortnight"', "valid integer"),
        ("{n: 3}", "valid integer"),
    ],
)
def test_a_hostile_max_running_is_refused_at_its_line_and_column(value: str, message: str) -> None:
    problems = problems_of(MAX_RUNNING.replace("VALUE", value))
    assert len(problems) == 1, problems
    assert problems[0].startswith("t.yaml:12:5: job_types.ja.max_running: "), problems
    assert message in problems[0]


def test_max_running_is_a_permits_queue_under_the_namespace_and_shown_by_the_plan() -> None:
    loaded = load_topology_text(MAX_RUNNING.replace("VALUE", "3"))
    queues = {q.name: q for q in desired_entities(loaded.topology).queues}
    permits = queues["jobsys.permits.ja.3"]
    assert (permits.role, permits.arguments) == ("permits", {"x-queue-type": "classic"})
    assert flow_lines(loaded.topology) == [
        "job type ja: at most 3 running across every worker (permits in jobsys.permits.ja.3)"
    ]
    assert flow_json(loaded.topology)["max_running"] == {"ja": 3}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"50/fortnight"', "is not a rate limit"),
        ('"0/s"', "above 0"),
        ('"-5/s"', "is not a rate limit"),
        ('"nan/s"', "is not a rate limit"),
        ('"20000/s"', "at most 10000/s"),
        ('"9999999999/s"', "is not a rate limit"),
        ('"50 / s"', "is not a rate limit"),
        ("50", "written as a count per unit"),
        (".nan", "written as a count per unit"),
        ("true", "written as a count per unit"),
        ("[50, s]", "written as a count per unit"),
        ('"50/s\\u0007"', "is not a rate limit"),
    ],
)
def test_a_hostile_rate_limit_is_refused_at_its_line_and_column(value: str, message: str) -> None:
    problems = problems_of(MAX_RUNNING.replace("max_running: VALUE", f"rate_limit: {value}"))
    assert len(problems) == 1, problems
    assert problems[0].startswith("t.yaml:12:5: job_types.ja.rate_limit: "), problems
    assert message in problems[0]
    assert "\x07" not in problems[0]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "greater than or equal to 1"),
        ('"5"', "valid integer"),
        ("100001", "less than or equal"),
    ],
)
def test_a_hostile_rate_burst_is_refused_at_its_line_and_column(value: str, message: str) -> None:
    text = MAX_RUNNING.replace("max_running: VALUE", f"rate_limit: 5/s\n    rate_burst: {value}")
    problems = problems_of(text)
    assert len(problems) == 1 and "job_types.ja.rate_burst" in problems[0], problems
    assert message in problems[0]


def test_a_rate_limit_is_a_bucket_of_its_burst_and_an_election_queue_shown_by_the_plan() -> None:
    loaded = load_topology_text(MAX_RUNNING.replace("max_running: VALUE", "rate_limit: 120/m"))
    job_type = loaded.topology.job_types["ja"]
    assert (job_type.rate_limit, job_type.burst) == (2.0, 2)
    queues = {q.name: q for q in desired_entities(loaded.topology).queues}
    assert queues["jobsys.tokens.ja"].arguments == {
        "x-queue-type": "classic",
        "x-max-length": 2,
        "x-overflow": "drop-head",
    }
    assert queues["jobsys.refiller"].arguments["x-single-active-consumer"] is True
    assert flow_json(loaded.topology)["rate_limits"] == {"ja": {"per_s": 2.0, "burst": 2}}
    assert "at most 2 starts/s across every worker, bursts of 2" in flow_lines(loaded.topology)[0]
