"""The topology model's own rules and the cross-checks of check.py, as a user meets them:
through the loader, with positions."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from jobsys.errors import TopologyLoadError, TopologyValidationError
from jobsys.topology import model, schedules
from jobsys.topology.loader import load_topology_text
from jobsys.topology.model import Topology, dead_letter_queue_name
from jobsys.topology.routing import route_job_type

BASE = """\
version: 1
exchanges:
  jobs: {type: topic}
  fmt: {type: headers}
queues:
  q: {type: classic}
bindings:
  - {exchange: jobs, queue: q, routing_key: "#"}
"""


def queue(spec: str) -> str:
    return BASE.replace("q: {type: classic}", f"q: {spec}")


def problems_of(text: str) -> list[str]:
    with pytest.raises(TopologyLoadError) as caught:
        load_topology_text(text, "t.yaml")
    return caught.value.problems


def validation_problems_of(text: str) -> list[str]:
    with pytest.raises(TopologyValidationError) as caught:
        load_topology_text(text, "t.yaml")
    return caught.value.problems


# -- defaults ----------------------------------------------------------------------------------


def test_defaults_are_durable_classic_delays_up_to_thirty_days_and_three_attempts() -> None:
    topology = load_topology_text(
        BASE + "job_types:\n  j: {exchange: jobs, routing_key: a}\n"
    ).topology

    assert topology.exchanges["jobs"].durable is True
    assert topology.queues["q"].durable is True
    assert topology.queues["q"].consumer.concurrency == 10
    assert topology.queues["q"].consumer.prefetch == 20
    assert topology.delays.max_delay == 30 * 86400
    assert topology.delays.queue_type is None  # chosen by the broker's shape
    assert topology.delays.resolved_type(cluster=False) == "classic"
    job = topology.job_types["j"]
    assert (job.timeout, job.retry.max_attempts, job.priority) == (300.0, 3, None)
    assert job.retry.backoff is None and job.retry.delays is None


def test_every_queue_has_a_dead_letter_queue_named_after_it() -> None:
    topology = load_topology_text(queue("{type: classic}\n  r: {type: quorum}")).topology

    assert topology.dead_letter_queues() == {"q": "q.dead", "r": "r.dead"}
    assert dead_letter_queue_name("emails.high") == "emails.high.dead"


def test_durations_are_read_in_seconds() -> None:
    text = BASE + (
        "job_types:\n  j:\n    exchange: jobs\n    timeout: 1500ms\n"
        "    retry: {delays: [250ms, 90, 5m, 1.5h]}\n"
    )

    job = load_topology_text(text).topology.job_types["j"]

    assert job.timeout == 1.5
    assert job.retry.delays == [0.25, 90.0, 300.0, 5400.0]


def test_the_model_is_frozen() -> None:
    topology = load_topology_text(BASE).topology

    with pytest.raises(ValueError, match="frozen"):
        topology.queues["q"].type = "quorum"  # type: ignore[misc]


def test_a_topology_can_be_built_in_code_without_a_file() -> None:
    topology = Topology.model_validate(
        {"version": 1, "queues": {"q": {"type": "quorum", "message_ttl": "1m"}}}
    )

    assert topology.queues["q"].message_ttl == 60.0


# -- shape rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (
            "{type: stream}",
            "t.yaml:6:7: queues.q.type: Input should be 'classic' or 'quorum'",
        ),
        (
            "{type: classic, max_priority: 256}",
            "t.yaml:6:22: queues.q.max_priority: Input should be less than or equal to 255",
        ),
        (
            "{type: classic, max_priority: 0}",
            "t.yaml:6:22: queues.q.max_priority: Input should be greater than or equal to 1",
        ),
        (
            "{type: classic, overflow: drop-tail}",
            "t.yaml:6:22: queues.q.overflow: Input should be 'drop-head', 'reject-publish' or "
            "'reject-publish-dlx'",
        ),
        (
            "{type: classic, consumer: {concurrency: 0}}",
            "t.yaml:6:33: queues.q.consumer.concurrency: Input should be greater than or equal "
            "to 1",
        ),
    ],
)
def test_a_queue_value_out_of_range_is_refused_at_its_key(spec: str, problem: str) -> None:
    assert problems_of(queue(spec)) == [problem]


def test_a_name_with_characters_rabbitmq_names_should_not_have_is_refused() -> None:
    text = queue("{type: classic}\n  'bad name': {type: classic}")

    assert problems_of(text) == [
        "t.yaml:7:3: queues.bad name: String should match pattern '^[A-Za-z0-9_.:\\-]+$'"
    ]


def test_retry_with_both_backoff_and_delays_is_refused() -> None:
    text = BASE + "job_types:\n  j: {exchange: jobs, retry: {delays: [1s], backoff: {}}}\n"

    assert problems_of(text) == [
        "t.yaml:10:23: job_types.j.retry: give either backoff or delays, not both"
    ]


def test_a_backoff_whose_max_is_below_its_initial_delay_is_refused() -> None:
    text = BASE + "job_types:\n  j: {exchange: jobs, retry: {backoff: {initial: 2m, max: 5s}}}\n"

    assert problems_of(text) == [
        "t.yaml:10:31: job_types.j.retry.backoff: max (5s) is below initial (2m)"
    ]


def test_an_empty_list_of_retry_delays_is_refused() -> None:
    text = BASE + "job_types:\n  j: {exchange: jobs, retry: {delays: []}}\n"

    assert problems_of(text) == [
        "t.yaml:10:31: job_types.j.retry.delays: List should have at least 1 item after "
        "validation, not 0"
    ]


def test_delay_levels_must_cover_at_least_thirty_days() -> None:
    assert problems_of(BASE + "delays: {max_delay: 7d}\n") == [
        "t.yaml:9:1: delays: max_delay must be at least 30d"
    ]


# -- cross-checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (
            "{type: quorum, durable: false}",
            "t.yaml:6:30: queues.q.durable: quorum queues are always durable",
        ),
        (
            "{type: classic, delivery_limit: 3}",
            "t.yaml:6:38: queues.q.delivery_limit: delivery_limit needs a quorum queue",
        ),
        (
            "{type: classic, overflow: reject-publish, max_length: 5}",
            "t.yaml:6:32: queues.q.overflow: a full classic queue under reject-publish silently "
            "drops the delayed jobs and retries that reach it; use reject-publish-dlx (refused "
            "publishes still fail with QueueFullError, and the broker keeps a copy in the "
            "dead-letter queue), drop-head, or a quorum queue",
        ),
        (
            "{type: quorum, overflow: reject-publish-dlx, max_length: 5}",
            "t.yaml:6:31: queues.q.overflow: quorum queues do not support reject-publish-dlx; "
            "use reject-publish",
        ),
        (
            "{type: classic, dead_letter_strategy: at-least-once}",
            "t.yaml:6:44: queues.q.dead_letter_strategy: at-least-once dead-lettering needs a "
            "quorum queue",
        ),
        (
            "{type: quorum, dead_letter_strategy: at-least-once}",
            "t.yaml:6:43: queues.q.dead_letter_strategy: at-least-once dead-lettering needs "
            "overflow: reject-publish",
        ),
        (
            "{type: classic, overflow: drop-head}",
            "t.yaml:6:32: queues.q.overflow: overflow has no effect without max_length or "
            "max_length_bytes",
        ),
    ],
)
def test_a_queue_option_its_type_cannot_honour_is_refused(spec: str, problem: str) -> None:
    assert validation_problems_of(queue(spec)) == [problem]


def test_a_binding_on_a_headers_exchange_needs_headers() -> None:
    assert validation_problems_of(BASE + "  - {exchange: fmt, queue: q}\n") == [
        "t.yaml:9:5: bindings.1: binding on headers exchange 'fmt' needs headers"
    ]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (
            "headers: {a: 1}",
            "t.yaml:9:41: bindings.1.headers: headers and match only apply to headers "
            "exchanges; 'jobs' is topic",
        ),
        (
            "match: any",
            "t.yaml:9:39: bindings.1.match: headers and match only apply to headers exchanges; "
            "'jobs' is topic",
        ),
    ],
)
def test_headers_or_match_on_another_exchange_type_is_refused(extra: str, problem: str) -> None:
    text = BASE + f"  - {{exchange: jobs, queue: q, {extra}}}\n"

    assert validation_problems_of(text) == [problem]


def test_a_job_timeout_must_end_before_the_brokers_consumer_timeout() -> None:
    text = BASE + (
        "job_types:\n"
        "  j: {exchange: jobs, timeout: 30m}\n"
        "  k: {exchange: jobs, timeout: 0}\n"
        "  ok: {exchange: jobs, timeout: 29m}\n"
    )

    assert validation_problems_of(text) == [
        "t.yaml:10:32: job_types.j.timeout: timeout must be above 0 and below 30m, the broker's "
        "default consumer_timeout",
        "t.yaml:11:32: job_types.k.timeout: timeout must be above 0 and below 30m, the broker's "
        "default consumer_timeout",
    ]


def test_dont_retry_takes_dotted_exception_names_only() -> None:
    text = BASE + (
        "job_types:\n  j: {exchange: jobs, retry: {dont_retry: [ValueError, 'not a name', "
        "a.b.C, 1x]}}\n"
    )

    assert validation_problems_of(text) == [
        "t.yaml:10:56: job_types.j.retry.dont_retry.1: 'not a name' is not an exception name "
        "(e.g. myapp.errors.Permanent)",
        "t.yaml:10:77: job_types.j.retry.dont_retry.3: '1x' is not an exception name "
        "(e.g. myapp.errors.Permanent)",
    ]


def test_a_retry_delay_longer_than_the_delay_levels_allow_is_refused() -> None:
    text = BASE + (
        "job_types:\n"
        "  j: {exchange: jobs, retry: {delays: [1s, 31d]}}\n"
        "  k: {exchange: jobs, retry: {backoff: {max: 40d}}}\n"
    )

    assert validation_problems_of(text) == [
        "t.yaml:10:30: job_types.j.retry: a retry delay of 31d is longer than delays.max_delay "
        "(30d)",
        "t.yaml:11:30: job_types.k.retry: a retry delay of 40d is longer than delays.max_delay "
        "(30d)",
    ]


def test_a_longer_max_delay_admits_longer_retry_delays() -> None:
    text = BASE + (
        "delays: {max_delay: 60d}\njob_types:\n  j: {exchange: jobs, retry: {delays: [31d]}}\n"
    )

    load_topology_text(text)


def test_a_name_reserved_for_rabbitmq_is_refused() -> None:
    text = BASE.replace("  fmt: {type: headers}", "  amq.topic: {type: topic}")

    assert validation_problems_of(text) == [
        "t.yaml:4:14: exchanges.amq.topic: name 'amq.topic' is reserved (names starting with "
        "'jobsys.' or 'amq.' belong to jobsys and RabbitMQ)"
    ]


def test_a_headers_job_type_is_routed_by_its_headers() -> None:
    text = BASE + (
        "  - {exchange: fmt, queue: q, headers: {format: pdf}}\n"
        "job_types:\n"
        "  pdf: {exchange: fmt, headers: {format: pdf}}\n"
        "  csv: {exchange: fmt, headers: {format: csv}}\n"
    )

    assert validation_problems_of(text) == [
        "t.yaml:12:8: job_types.csv: job type 'csv' reaches no queue (exchange 'fmt', headers "
        "{'format': 'csv'}); bindings on 'fmt': {'format': 'pdf'} -> q"
    ]


def test_route_job_type_lists_the_queues_a_job_reaches() -> None:
    text = queue("{type: classic}\n  r: {type: classic}") + (
        "  - {exchange: jobs, queue: r, routing_key: 'a.*'}\n"
        "job_types:\n"
        "  j: {exchange: jobs, routing_key: a.b}\n"
        "  k: {exchange: jobs, routing_key: a}\n"
    )
    topology = load_topology_text(text).topology

    assert route_job_type(topology, topology.job_types["j"]) == ["q", "r"]
    assert route_job_type(topology, topology.job_types["k"]) == ["q"]


def test_docs_topology_md_documents_every_key_of_the_model() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "topology.md").read_text("utf-8")
    models = [
        value
        for module in (model, schedules)
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, BaseModel)
        and value.__module__ == module.__name__
    ]

    assert len(models) >= 8
    missing = {
        f"{cls.__name__}.{name}"
        for cls in models
        for name in cls.model_fields
        if f"`{name}`" not in docs
    }
    assert missing == set()


def test_a_namespace_allows_the_apps_own_names_under_it_but_not_the_names_jobsys_derives() -> None:
    ok = load_topology_text(
        "version: 1\nnamespace: app\nqueues:\n  app.work: {type: classic}\n"
        "exchanges:\n  app.jobs: {type: direct}\n"
    )
    assert ok.topology.dead_letter_exchange == "app.dead-letter"
    for taken in ("app.due", "app.dead-letter", "app.wait.03"):
        with pytest.raises(TopologyLoadError, match="is one jobsys derives for namespace 'app'"):
            load_topology_text(
                f"version: 1\nnamespace: app\nexchanges:\n  {taken}: {{type: topic}}\n"
            )


@pytest.mark.parametrize("namespace", ["App", "1app", "a.b", "", "x" * 41, "jobs ys"])
def test_a_namespace_is_a_short_lowercase_name(namespace: str) -> None:
    with pytest.raises(TopologyLoadError, match="namespace"):
        load_topology_text(f"version: 1\nnamespace: '{namespace}'\n")
