"""``jobsys topology export --for-version V [--cluster-nodes N]``: definitions fitted to the
broker that will load them, as ``plan``/``apply`` fit them to the broker they connect to (the
fit itself is ``broker_facts.fit_to_broker``, tested in test_broker_facts.py). Offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

JOBSYS = str(Path(sys.executable).with_name("jobsys"))

QUORUM = """
version: 1
exchanges:
  q.jobs: {type: direct}
queues:
  q.work: {type: quorum, max_priority: 9}
bindings:
  - {exchange: q.jobs, queue: q.work, routing_key: work}
job_types:
  work: {exchange: q.jobs, routing_key: work}
delays: {queue_type: quorum}
"""


def export(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "topology.yaml"
    path.write_text(text, encoding="utf-8")
    return subprocess.run(
        [JOBSYS, "topology", "export", str(path), "--vhost", "v", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )


def queues(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return {q["name"]: q["arguments"] for q in json.loads(result.stdout)["queues"]}


def test_for_rabbitmq_4_the_dead_letter_queue_has_no_delivery_limit_and_notes_say_why(
    tmp_path: Path,
) -> None:
    # A 4.x broker gives quorum queues a delivery limit of 20: `dlq peek` requeues, so a dead
    # letter peeked 20 times would be dropped from definitions loaded unfitted.
    result = export(tmp_path, QUORUM, "--for-version", "4.1.4")

    fitted = queues(result)
    assert fitted["q.work.dead"]["x-delivery-limit"] == -1
    assert "x-max-priority" not in fitted["q.work"]  # 4.x prioritises quorum queues itself
    assert "prioritises quorum queues without x-max-priority" in result.stderr
    assert "dead-letters a job requeued 20 times" in result.stderr


def test_without_a_version_the_definitions_are_as_the_file_says(tmp_path: Path) -> None:
    plain = queues(export(tmp_path, QUORUM))

    assert "x-delivery-limit" not in plain["q.work.dead"]
    assert plain["q.work"]["x-max-priority"] == 9


def test_for_rabbitmq_3_10_the_definitions_are_unchanged(tmp_path: Path) -> None:
    text = QUORUM.replace(", max_priority: 9", "")
    assert queues(export(tmp_path, text, "--for-version", "3.10.8")) == queues(
        export(tmp_path, text)
    )


def test_quorum_priorities_for_a_broker_before_4_0_are_a_located_problem(tmp_path: Path) -> None:
    result = export(tmp_path, QUORUM, "--for-version", "3.13.7")

    assert result.returncode == 2
    assert "topology.yaml:6:" in result.stderr and "needs 4.0" in result.stderr


def test_a_feature_the_version_lacks_is_a_located_problem(tmp_path: Path) -> None:
    text = QUORUM.replace("max_priority: 9}", "max_priority: 9, consumer_timeout: 1h}")

    result = export(tmp_path, text, "--for-version", "3.10.8")

    assert result.returncode == 2, result.stderr
    assert "topology.yaml:6:" in result.stderr and "consumer_timeout" in result.stderr
    assert result.stdout == ""


def test_classic_queues_for_a_cluster_are_refused_like_apply_refuses_them(tmp_path: Path) -> None:
    text = QUORUM.replace("type: quorum, max_priority: 9", "type: classic")

    result = export(tmp_path, text, "--for-version", "3.10.8", "--cluster-nodes", "3")

    assert result.returncode == 2, result.stderr
    assert "on a cluster of 3 nodes" in result.stderr
    assert result.stdout == ""


def test_delay_levels_without_a_type_are_exported_quorum_for_a_cluster_only(
    tmp_path: Path,
) -> None:
    text = QUORUM.replace("delays: {queue_type: quorum}\n", "").replace(", max_priority: 9", "")

    for_cluster = export(tmp_path, text, "--for-version", "3.10.8", "--cluster-nodes", "3")
    single = export(tmp_path, text, "--for-version", "3.10.8")
    unfitted = export(tmp_path, text)

    assert queues(for_cluster)["jobsys.wait.07"]["x-queue-type"] == "quorum"
    assert queues(for_cluster)["jobsys.wait.07"]["x-dead-letter-strategy"] == "at-least-once"
    assert "delays.queue_type is not set" in for_cluster.stderr
    assert queues(single)["jobsys.wait.07"]["x-queue-type"] == "classic"
    assert queues(unfitted)["jobsys.wait.07"]["x-queue-type"] == "classic"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--for-version", "banana"), "not a RabbitMQ version"),
        (("--for-version", ""), "not a RabbitMQ version"),
        (("--for-version", "v4.1"), "not a RabbitMQ version"),
        (("--for-version", "4.1\n"), "'4.1\\n' is not a RabbitMQ version"),
        (("--for-version", "4.1 "), "not a RabbitMQ version"),
        (("--for-version", "4.\x1b[31m1"), "\\x1b"),
        (("--for-version", "9" * 5000), "not a RabbitMQ version"),
        (("--cluster-nodes", "3"), "--cluster-nodes needs --for-version"),
        (("--for-version", "4.1.4", "--cluster-nodes", "0"), "0 is not in the range"),
        (("--for-version", "4.1.4", "--cluster-nodes", "x"), "is not a valid integer"),
    ],
)
def test_a_bad_version_or_node_count_exits_2_and_says_so(
    tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    result = export(tmp_path, QUORUM, *args)

    assert result.returncode == 2, result.stderr
    assert said in result.stderr
    assert "\x1b" not in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("target", ["/nonexistent/dir/definitions.json", "/dev/full"])
def test_an_output_file_that_cannot_be_written_is_one_error_with_exit_2(
    tmp_path: Path, target: str
) -> None:
    result = export(tmp_path, QUORUM, "-o", target)

    assert result.returncode == 2, result.stderr
    assert f"error: cannot write {target}" in result.stderr
    assert "Traceback" not in result.stderr
