"""A plan fitted to the broker's version and cluster (pure), from server properties: captured
from the 3.10.8 broker here, written from the RabbitMQ docs for 3.12, 3.13, 4.0 and 4.1
(``fixtures/server_properties``, each file says which). What changes by version: the quorum
delivery limit of 20 (>= 4.0) never reaches jobsys's dead-letter and scheduler queues, quorum
priorities need no argument (>= 4.0), a queue's consumer timeout needs 3.12; and by cluster:
classic queues that would hold jobs are refused, replica counts are checked against members."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobsys.errors import TopologyValidationError
from jobsys.topology.broker_facts import (
    NO_DELIVERY_LIMIT,
    BrokerFacts,
    accept_unlifted_limits,
    cluster_problems,
    fit_to_broker,
    parse_version,
)
from jobsys.topology.entities import desired_entities
from jobsys.topology.loader import LoadedTopology, load_topology_text

FIXTURES = Path(__file__).parent / "fixtures" / "server_properties"

TOPOLOGY = """\
version: 1
exchanges:
  jobs: {type: topic}
queues:
  billing:
    type: quorum
    max_priority: 3
    replicas: 3
  reports:
    type: quorum
    delivery_limit: 5
  scratch:
    type: classic
delays:
  queue_type: quorum
  replicas: 3
schedules:
  nightly: {every: 1h, job_type: report}
job_types:
  charge: {exchange: jobs, routing_key: billing, priority: 2}
  report: {exchange: jobs, routing_key: reports}
  note: {exchange: jobs, routing_key: scratch}
bindings:
  - {exchange: jobs, queue: billing, routing_key: billing}
  - {exchange: jobs, queue: reports, routing_key: reports}
  - {exchange: jobs, queue: scratch, routing_key: scratch}
"""


def properties(version: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / f"rabbitmq-{version}.json").read_text(encoding="utf-8"))
    data.pop("_source")
    return dict(data)


def facts(version: str, members: int | None = None) -> BrokerFacts:
    return BrokerFacts.from_server_properties(properties(version), members, "test")


def loaded(text: str = TOPOLOGY) -> LoadedTopology:
    return load_topology_text(text, "cluster.yaml")


def fitted_arguments(version: str, members: int | None = None) -> dict[str, dict[str, Any]]:
    topology = loaded().topology
    fitted = fit_to_broker(desired_entities(topology), topology, facts(version, members))
    return {spec.name: spec.arguments for spec in fitted.entities.queues}


# -- reading the server properties -------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("3.10.8", (3, 10, 8)),
        ("3.12.14", (3, 12, 14)),
        ("3.13.7", (3, 13, 7)),
        ("4.0.5", (4, 0, 5)),
        ("4.1.4", (4, 1, 4)),
    ],
)
def test_the_version_is_read_from_each_captured_or_written_set_of_properties(
    version: str, expected: tuple[int, ...]
) -> None:
    read = facts(version)
    assert read.version == expected
    assert read.product == "RabbitMQ"
    assert read.cluster_name


def test_the_3_10_8_properties_were_captured_here_and_the_4_x_ones_say_they_were_written() -> None:
    captured = json.loads((FIXTURES / "rabbitmq-3.10.8.json").read_text(encoding="utf-8"))
    assert captured["_source"].startswith("captured")
    for version in ("3.12.14", "3.13.7", "4.0.5", "4.1.4"):
        written = json.loads((FIXTURES / f"rabbitmq-{version}.json").read_text(encoding="utf-8"))
        assert written["_source"].startswith("written, not captured")


def test_properties_as_aiormq_may_hand_them_over_as_bytes_read_the_same() -> None:
    raw = {key: str(value).encode() for key, value in properties("4.1.4").items()}
    assert BrokerFacts.from_server_properties(raw).version == (4, 1, 4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3.13.0-rc.2", (3, 13, 0)),
        ("4.0.0+beta.1", (4, 0, 0)),
        ("4.2", (4, 2)),
        ("", ()),
        ("garbage", ()),
        ("\x1b[31m4.0", ()),
        ("4.x.1", (4, 0)),
    ],
)
def test_odd_version_strings_read_safely(text: str, expected: tuple[int, ...]) -> None:
    assert parse_version(text) == expected


def test_missing_or_hostile_properties_give_an_unknown_broker_not_an_error() -> None:
    odd = BrokerFacts.from_server_properties({"version": None, "product": b"\xff\xfe"})
    assert odd.version == ()
    assert odd.quorum_delivery_limit_default is None
    assert "\ufffd" in odd.product


def test_the_description_names_the_broker_and_where_the_member_count_comes_from() -> None:
    assert facts("3.10.8", 3).describe() == ("RabbitMQ 3.10.8, cluster rabbit@vm of 3 nodes (test)")
    assert facts("3.10.8").describe() == "RabbitMQ 3.10.8, cluster rabbit@vm"


# -- by version --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["3.10.8", "3.12.14", "3.13.7"])
def test_before_4_0_nothing_is_added_and_quorum_priorities_are_refused(version: str) -> None:
    args = fitted_arguments(version)
    plain = {spec.name: spec.arguments for spec in desired_entities(loaded().topology).queues}
    assert args == plain
    with pytest.raises(TopologyValidationError, match=r"cluster\.yaml:7:\d+: .*needs 4.0"):
        loaded().check_broker_version(facts(version).version)


@pytest.mark.parametrize("version", ["4.0.5", "4.1.4"])
def test_what_is_fitted_for_4_x_passes_the_check_apply_runs_before_declaring(version: str) -> None:
    # apply fits the entities, then refuses any it could not declare: -1 (no delivery limit)
    # is what 4.x wants and must not be refused as "not an AMQP count".
    topology = loaded()
    fitted = fit_to_broker(desired_entities(topology.topology), topology.topology, facts(version))

    topology.check_declarable(fitted.entities)


@pytest.mark.parametrize("version", ["4.0.5", "4.1.4"])
def test_from_4_0_dead_letter_and_scheduler_queues_get_no_delivery_limit(version: str) -> None:
    args = fitted_arguments(version)
    for name in ("billing.dead", "reports.dead", "jobsys.scheduler.leader"):
        assert args[name]["x-delivery-limit"] == NO_DELIVERY_LIMIT, name
    # A work queue keeps the broker's default, or the file's own limit.
    assert "x-delivery-limit" not in args["billing"]
    assert args["reports"]["x-delivery-limit"] == 5
    # Classic queues have no delivery limit to lift.
    assert "x-delivery-limit" not in args["scratch.dead"]


def test_from_4_0_a_work_queue_without_a_limit_is_named_in_a_note() -> None:
    topology = loaded().topology
    notes = fit_to_broker(desired_entities(topology), topology, facts("4.0.5")).notes
    assert any("queue billing" in n and "requeued 20 times" in n for n in notes)
    assert not any("queue reports" in n and "requeued" in n for n in notes)


@pytest.mark.parametrize("version", ["4.0.5", "4.1.4"])
def test_from_4_0_quorum_priorities_are_planned_without_x_max_priority(version: str) -> None:
    loaded().check_broker_version(facts(version).version)  # no longer refused
    topology = loaded().topology
    fitted = fit_to_broker(desired_entities(topology), topology, facts(version))
    billing = fitted.entities.queue("billing").arguments
    assert "x-max-priority" not in billing
    assert any("two levels" in note for note in fitted.notes)


def test_a_classic_queue_keeps_its_x_max_priority_on_4_x() -> None:
    text = TOPOLOGY.replace(
        "  scratch:\n    type: classic\n", "  scratch:\n    type: classic\n    max_priority: 5\n"
    )
    topology = loaded(text).topology
    fitted = fit_to_broker(desired_entities(topology), topology, facts("4.1.4"))
    assert fitted.entities.queue("scratch").arguments["x-max-priority"] == 5


def test_a_queue_consumer_timeout_is_refused_before_3_12_and_planned_from_it() -> None:
    text = TOPOLOGY.replace(
        "    delivery_limit: 5\n", "    delivery_limit: 5\n    consumer_timeout: 2h\n"
    )
    text = text.replace("routing_key: reports}", "routing_key: reports, timeout: 90m}", 1)
    with pytest.raises(TopologyValidationError, match=r"needs 3\.12"):
        loaded(text).check_broker_version(facts("3.10.8").version)
    with pytest.raises(TopologyValidationError) as caught:  # only the quorum priority is left
        loaded(text).check_broker_version(facts("3.12.14").version)
    assert [p for p in caught.value.problems if "consumer_timeout" in p] == []
    args = {s.name: s.arguments for s in desired_entities(loaded(text).topology).queues}
    assert args["reports"]["x-consumer-timeout"] == 2 * 3600 * 1000


def test_a_job_timeout_past_its_queues_consumer_timeout_is_refused_with_file_line_column() -> None:
    text = TOPOLOGY.replace(
        "    delivery_limit: 5\n", "    delivery_limit: 5\n    consumer_timeout: 1h\n"
    )
    text = text.replace("routing_key: reports}", "routing_key: reports, timeout: 2h}", 1)
    with pytest.raises(TopologyValidationError, match=r"cluster\.yaml:\d+:\d+: .*below 1h"):
        loaded(text)


def test_without_a_consumer_timeout_a_job_timeout_stays_below_30m() -> None:
    text = TOPOLOGY.replace("routing_key: reports}", "routing_key: reports, timeout: 45m}", 1)
    with pytest.raises(TopologyValidationError, match="below 30m"):
        loaded(text)


# -- by cluster --------------------------------------------------------------------------------


def test_on_one_node_classic_queues_are_fine() -> None:
    assert cluster_problems(loaded().topology, facts("3.10.8", 1)) == []
    assert cluster_problems(loaded().topology, facts("3.10.8", None)) == []
    loaded().check_cluster(facts("3.10.8", 1))


def test_on_a_cluster_a_classic_work_queue_is_refused_with_file_line_column() -> None:
    with pytest.raises(TopologyValidationError) as caught:
        loaded().check_cluster(facts("3.10.8", 3))
    (message,) = caught.value.problems
    assert message.startswith("cluster.yaml:13:11: queues.scratch.type:")
    assert "on a cluster of 3 nodes" in message and "type: quorum" in message


def test_on_a_cluster_classic_delay_levels_are_refused() -> None:
    text = (
        TOPOLOGY.replace("  scratch:\n    type: classic\n", "")
        .replace("  note: {exchange: jobs, routing_key: scratch}\n", "")
        .replace("  - {exchange: jobs, queue: scratch, routing_key: scratch}\n", "")
    )
    text = text.replace("delays:\n  queue_type: quorum\n  replicas: 3\n", "")
    # Left out, the type is chosen by the broker's shape; written as classic, it is refused.
    loaded(text).check_cluster(facts("3.10.8", 3))
    classic = text.replace("schedules:", "delays: {queue_type: classic}\nschedules:")
    with pytest.raises(TopologyValidationError) as caught:
        loaded(classic).check_cluster(facts("3.10.8", 3))
    (message,) = caught.value.problems
    assert message.startswith("cluster.yaml:12:22: delays.queue_type: on a cluster of 3 nodes")
    assert "queue_type: quorum" in message and "leave queue_type out" in message


def _levels_and_scheduler(text: str, members: int | None) -> dict[str, dict[str, Any]]:
    topology = loaded(text).topology
    cluster = facts("3.10.8", members)
    fitted = fit_to_broker(
        desired_entities(topology, cluster=cluster.is_cluster), topology, cluster
    )
    return {
        spec.name: spec.arguments
        for spec in fitted.entities.queues
        if spec.role in ("delay", "scheduler")
    }


@pytest.mark.parametrize(
    ("delays", "members", "expected"),
    [
        ("", None, "classic"),  # one node, unknown size: classic, as before
        ("", 1, "classic"),
        ("", 3, "quorum"),  # a cluster: quorum without being asked
        ("delays: {replicas: 3}\n", 1, "quorum"),  # replicas ask for copies
        ("delays: {queue_type: quorum}\n", 1, "quorum"),
        ("delays: {queue_type: classic}\n", 1, "classic"),
    ],
)
def test_delay_levels_without_a_type_are_quorum_on_a_cluster_and_classic_on_one_node(
    delays: str, members: int | None, expected: str
) -> None:
    text = (
        TOPOLOGY.replace("  scratch:\n    type: classic\n", "")
        .replace("  note: {exchange: jobs, routing_key: scratch}\n", "")
        .replace("  - {exchange: jobs, queue: scratch, routing_key: scratch}\n", "")
        .replace("delays:\n  queue_type: quorum\n  replicas: 3\n", delays)
    )
    queues = _levels_and_scheduler(text, members)
    assert len(queues) == 29 + 3  # every level, and the scheduler's election, state, status
    assert {args["x-queue-type"] for args in queues.values()} == {expected}
    level = queues["jobsys.wait.00"]
    if expected == "quorum":
        # A quorum level dead-letters at least once, which needs reject-publish.
        assert level["x-dead-letter-strategy"] == "at-least-once"
        assert level["x-overflow"] == "reject-publish"
    else:
        assert "x-dead-letter-strategy" not in level and "x-overflow" not in level
    topology = loaded(text).topology
    notes = fit_to_broker(
        desired_entities(topology, cluster=members == 3), topology, facts("3.10.8", members)
    ).notes
    chosen = [note for note in notes if "delays.queue_type is not set" in note]
    assert len(chosen) == (1 if members == 3 and not delays else 0)
    unknown = [note for note in notes if "node count is unknown" in note]
    assert len(unknown) == (1 if members is None and not delays else 0)


def test_replicas_become_x_quorum_initial_group_size_on_queues_levels_and_scheduler() -> None:
    args = fitted_arguments("3.10.8", 3)
    assert args["billing"]["x-quorum-initial-group-size"] == 3
    assert args["billing.dead"]["x-quorum-initial-group-size"] == 3
    assert args["jobsys.wait.00"]["x-quorum-initial-group-size"] == 3
    assert args["jobsys.scheduler.leader"]["x-quorum-initial-group-size"] == 3
    assert "x-quorum-initial-group-size" not in args["reports"]  # the broker's default


def test_more_replicas_than_members_or_an_even_count_gets_a_note() -> None:
    topology = loaded().topology
    notes = fit_to_broker(desired_entities(topology), topology, facts("3.10.8", 2)).notes
    assert any("3 replicas asked for, but the cluster runs 2 nodes" in n for n in notes)
    even = loaded(TOPOLOGY.replace("replicas: 3\n  reports", "replicas: 4\n  reports")).topology
    notes = fit_to_broker(desired_entities(even), even, facts("3.10.8", 5)).notes
    assert any("4 replicas tolerate" in n for n in notes)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("    type: classic\n", "replicas needs a quorum queue"),
    ],
)
def test_replicas_on_a_classic_queue_are_refused(bad: str, message: str) -> None:
    text = TOPOLOGY.replace("  scratch:\n" + bad, "  scratch:\n" + bad + "    replicas: 3\n")
    with pytest.raises(TopologyValidationError, match=message):
        loaded(text)


@pytest.mark.parametrize("value", ["0", "-1", "100", "three", "true", "1.5", '"3\\u0000"'])
def test_a_replica_count_that_is_not_1_to_99_is_refused(value: str) -> None:
    text = TOPOLOGY.replace("    replicas: 3\n  reports", f"    replicas: {value}\n  reports")
    with pytest.raises(Exception, match=r"cluster\.yaml:\d+:\d+"):
        loaded(text)


def test_a_dead_letter_queue_declared_before_4_0_is_a_match_with_a_note_not_a_conflict() -> None:
    from jobsys.topology.plan import Difference, Plan, PlanItem

    lacking = PlanItem(
        "conflict", "queue", "billing.dead", None, (Difference("x-delivery-limit", None, -1),)
    )
    other = PlanItem(
        "conflict", "queue", "billing", None, (Difference("x-message-ttl", 1000, 2000),)
    )
    plan = accept_unlifted_limits(Plan((lacking, other), "management", True))
    assert [item.action for item in plan.items] == ["match", "conflict"]
    assert plan.has_conflicts  # a real difference still stops apply
    assert any("billing.dead exists without x-delivery-limit: -1" in n for n in plan.notes)
    untouched = Plan((other,), "management", True)
    assert accept_unlifted_limits(untouched) is untouched


_FLOW = """
version: 1
exchanges:
  ex: {type: direct}
queues:
  q: {type: quorum}
bindings:
  - {exchange: ex, queue: q, routing_key: k}
job_types:
  j: {exchange: ex, routing_key: k, max_running: 5, rate_limit: 10/s, breaker: {failures: 5}}
delays: {queue_type: quorum}
"""


@pytest.mark.parametrize(("members", "noted"), [(3, True), (1, False), (None, False)])
def test_on_a_cluster_the_plan_says_the_flow_control_queues_live_on_one_node(
    members: int | None, noted: bool
) -> None:
    topology = load_topology_text(_FLOW, "flow.yaml").topology
    fitted = fit_to_broker(desired_entities(topology), topology, facts("3.10.8", members))

    said = [n for n in fitted.notes if "flow-control queues" in n]
    assert bool(said) is noted
    if noted:
        assert "jobsys.permits.j.5" in said[0] and "jobsys.tokens.j" in said[0]
        assert "jobsys.breaker.j" in said[0] and "never jobs" in said[0]
