"""Every topology file shipped in ``topology/`` loads, routes every job type and suits the
broker versions jobsys supports (a glob, so files added later are covered too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobsys.topology.entities import desired_entities
from jobsys.topology.loader import load_topology
from jobsys.topology.routing import route_job_type

TOPOLOGY_DIR = Path(__file__).resolve().parents[2] / "topology"
FILES = sorted(TOPOLOGY_DIR.glob("*.yaml")) + sorted(TOPOLOGY_DIR.glob("*.yml"))


def test_the_topology_directory_has_files_to_check() -> None:
    assert [path.name for path in FILES if path.name == "example.yaml"] == ["example.yaml"]


@pytest.mark.parametrize("path", FILES, ids=[path.name for path in FILES])
def test_a_shipped_topology_file_loads_and_every_job_type_reaches_a_queue(path: Path) -> None:
    topology = load_topology(path).topology

    for name, job_type in topology.job_types.items():
        assert route_job_type(topology, job_type), f"{path.name}: {name} reaches no queue"
    entities = desired_entities(topology)
    assert {q.name for q in entities.queues} >= set(topology.queues)


@pytest.mark.parametrize("path", FILES, ids=[path.name for path in FILES])
def test_a_shipped_topology_file_suits_rabbitmq_4(path: Path) -> None:
    load_topology(path).check_broker_version((4, 0, 0))


def test_the_example_routes_its_job_types_as_its_comments_say() -> None:
    topology = load_topology(TOPOLOGY_DIR / "example.yaml").topology

    routes = {name: route_job_type(topology, spec) for name, spec in topology.job_types.items()}

    assert routes == {
        "send_email": ["demo.emails"],
        "send_newsletter": ["demo.emails"],  # 'email.#' also matches 'email'
        "charge_card": ["demo.billing"],
        "build_report": ["demo.reports"],
        "render_pdf": ["demo.reports"],
        "audit_event": ["demo.audit"],
    }


def test_the_example_suits_the_rabbitmq_on_these_machines() -> None:
    load_topology(TOPOLOGY_DIR / "example.yaml").check_broker_version((3, 10, 8))
