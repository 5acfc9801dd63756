"""``jobsys topology`` offline: the file named like everywhere else (``--topology``,
``JOBSYS_TOPOLOGY`` or FILE first), ``-v`` after the subcommand, ``--json``, plurals and
"did you mean" (no broker needed: validate, route and export never connect)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from jobsys.cli import main

TOPOLOGY = """
version: 1
exchanges:
  c.jobs: {type: topic}
queues:
  c.reports: {type: classic}
bindings:
  - {exchange: c.jobs, queue: c.reports, routing_key: "report.#"}
job_types:
  build_report: {exchange: c.jobs, routing_key: report.build}
"""


@pytest.fixture
def file(tmp_path: Path) -> str:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY)
    return str(path)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    environ = {"JOBSYS_TOPOLOGY": None, "JOBSYS_URL": None, **(env or {})}
    return CliRunner().invoke(main, list(args), env=environ, catch_exceptions=False)


@pytest.mark.parametrize(
    "how",
    [
        lambda f: (["topology", "validate", f], {}),
        lambda f: (["topology", "validate", "--topology", f], {}),
        lambda f: (["topology", "validate"], {"JOBSYS_TOPOLOGY": f}),
    ],
    ids=["FILE", "--topology", "JOBSYS_TOPOLOGY"],
)
def test_validate_finds_its_file_the_three_ways(file: str, how: object) -> None:
    args, env = how(file)  # type: ignore[operator]
    result = invoke(*args, env=env)

    assert result.exit_code == 0, result.output
    assert result.output == (f"{file}: valid (1 exchange, 1 queue, 1 binding, 1 job type)\n")


def test_no_file_at_all_is_a_usage_error_that_names_the_three_ways() -> None:
    result = invoke("topology", "plan")

    assert result.exit_code == 2
    assert "--topology FILE, JOBSYS_TOPOLOGY, or FILE first" in result.output


def test_file_and_a_different_topology_option_are_refused(file: str, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(TOPOLOGY)

    result = invoke("topology", "validate", file, "--topology", str(other))

    assert result.exit_code == 2
    assert "name different files" in result.output


def test_file_wins_over_the_environment(file: str, tmp_path: Path) -> None:
    result = invoke("topology", "validate", file, env={"JOBSYS_TOPOLOGY": str(tmp_path / "x")})

    assert result.exit_code == 0, result.output


def test_route_takes_the_job_type_alone_when_the_file_comes_from_the_environment(
    file: str,
) -> None:
    alone = invoke("topology", "route", "build_report", env={"JOBSYS_TOPOLOGY": file})
    first = invoke("topology", "route", file, "build_report")

    assert alone.exit_code == first.exit_code == 0, alone.output + first.output
    assert alone.output == first.output == "c.reports\n"


def test_route_of_a_misspelt_job_type_suggests_the_near_one(file: str) -> None:
    result = invoke("topology", "route", file, "build_reprot")

    assert result.exit_code == 2
    assert "unknown job type 'build_reprot'; did you mean 'build_report'?" in result.output


def test_route_with_no_job_type_or_too_many_arguments_is_a_usage_error(file: str) -> None:
    assert invoke("topology", "route", env={"JOBSYS_TOPOLOGY": file}).exit_code == 2
    assert invoke("topology", "route", file, "a", "b").exit_code == 2


def test_validate_and_route_print_json(file: str) -> None:
    validated = json.loads(invoke("topology", "validate", file, "--json").output)
    routed = json.loads(invoke("topology", "route", file, "build_report", "--json").output)

    assert validated == {
        "file": file,
        "valid": True,
        "counts": {"exchanges": 1, "queues": 1, "bindings": 1, "job_types": 1},
    }
    assert routed == {"job_type": "build_report", "queues": ["c.reports"]}


def test_verbose_is_accepted_after_the_subcommand_too(file: str) -> None:
    assert invoke("topology", "validate", file, "-v").exit_code == 0
    assert invoke("-v", "topology", "validate", file, "-vv").exit_code == 0


def test_export_takes_its_vhost_from_the_url_unless_given(file: str) -> None:
    from_url = invoke("topology", "export", file, env={"JOBSYS_URL": "amqp://u:p@h:5672/shop"})
    given = invoke("topology", "export", file, "--vhost", "other")

    assert from_url.exit_code == given.exit_code == 0, from_url.output + given.output
    assert {q["vhost"] for q in json.loads(from_url.output)["queues"]} == {"shop"}
    assert {q["vhost"] for q in json.loads(given.output)["queues"]} == {"other"}
    assert "p@" not in from_url.output
