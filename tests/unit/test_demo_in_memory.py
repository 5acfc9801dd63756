"""``jobsys demo --in-memory`` on a machine without a broker, and ``jobsys demo`` pointing at
one when no broker answers."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobsys.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def in_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the demo's topology/example.yaml
    # No broker anywhere: the in-memory demo must not need one.
    monkeypatch.setenv("JOBSYS_URL", "amqp://guest:guest@127.0.0.1:1/")


def test_the_in_memory_demo_runs_every_job_to_its_end_without_a_broker() -> None:
    result = CliRunner().invoke(main, ["demo", "--in-memory"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("jobsys demo: topology/example.yaml IN MEMORY")
    # The flaky card: two gateway timeouts, retried after 2 s and then 6 s of backoff (with the
    # topology's default 10 % jitter, rounded to whole seconds: 5-7 s), then charged.
    assert re.search(r"\+  2\.00s\] charge_card +\w+ attempt 2 FAILED", out), out
    assert re.search(r"\+  [789]\.00s\] charge_card +\w+ attempt 3 ok +charged 5\.00", out), out
    assert re.search(r"\+  3\.00s\] send_newsletter .* ok .*3s delay", out), out
    dead = [line for line in out.splitlines() if ".dead " in line]
    assert len(dead) == 3
    assert any("DecodeError" in line for line in dead)  # the body that is not JSON
    assert any("CardDeclined" in line and "after 1 attempt" in line for line in dead)
    assert "9 done, 3 dead-lettered, 0 requeued" in out


def test_the_demo_quiets_the_workers_warnings_only_while_it_runs() -> None:
    # It runs in-process (a test run, a notebook): the process's log keeps jobsys's warnings.
    logger = logging.getLogger("jobsys.consume")
    logger.setLevel(logging.WARNING)
    try:
        result = CliRunner().invoke(main, ["demo", "--in-memory"])
        assert result.exit_code == 0, result.output
        assert logger.level == logging.WARNING
    finally:
        logger.setLevel(logging.NOTSET)


def test_the_demo_offers_the_in_memory_mode_in_one_line_when_no_broker_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBSYS_CONNECT_DEADLINE_S", "1")
    monkeypatch.setenv("JOBSYS_CONNECT_TIMEOUT_S", "1")
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code != 0
    hints = [line for line in result.output.splitlines() if "--in-memory" in line]
    assert hints == ["no broker? `jobsys demo --in-memory` runs the same demo without one"]
