"""Worker failures under the ledger: ``kill -9`` mid-job, a SIGTERM drain, a job longer than
the grace period. Each worker is ``jobsys worker`` in a subprocess; a second worker finishes
what the first left, and the checker accounts for every job.

(Exit codes and the stop summary of these cases are tested in ``test_worker_shutdown.py``.)
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from tests.apps import failure_apps
from tests.apps.failure_apps import (
    WORK,
    WORK_DEAD,
    FailureWorker,
    handler_lines,
    in_flight,
    publish_into,
    wait_until,
)
from tests.harness.ledger import Ledger

pytestmark = pytest.mark.timeout(120)
PREFETCH = 8


@pytest.fixture
async def loaded(vhost_settings: Settings, tmp_path: Path) -> LoadedTopology:
    topology = failure_apps.write_topology(tmp_path)
    await failure_apps.apply(vhost_settings, topology)
    return topology


@pytest.fixture
def workers() -> Iterator[list[FailureWorker]]:
    started: list[FailureWorker] = []
    yield started
    for worker in started:
        worker.kill()


async def _publish(
    ledger: Ledger, settings: Settings, loaded: LoadedTopology, n: int, sleep_s: float
) -> list[str]:
    async with Producer(settings, loaded.topology) as producer:
        return await publish_into(
            ledger, producer, "task", [{"sleep_s": sleep_s}] * n, prefix="job"
        )


async def _finish_with_second_worker(
    tmp_path: Path, settings: Settings, ledger: Ledger, workers: list[FailureWorker]
) -> FailureWorker:
    """Run worker "b" until every confirmed job is done, stop it, read everything."""
    second = FailureWorker(tmp_path, settings, "--concurrency", "4", name="b")
    workers.append(second)
    first_done = set(handler_lines(tmp_path / "a.record", "done"))

    def all_done() -> bool:
        return first_done | set(handler_lines(second.record, "done")) >= ledger.confirmed

    await wait_until(all_done, timeout_s=60, what="every confirmed job done")
    second.signal(signal.SIGTERM)
    assert await second.wait_exit(30) == 0, second.stderr
    for name in ("a", "b"):
        ledger.read_runs(tmp_path / f"{name}.record")
    await ledger.read_queue(settings.url, WORK)
    await ledger.read_queue(settings.url, WORK_DEAD, dead=True)
    return second


async def test_a_worker_killed_mid_job_loses_nothing_and_reruns_only_what_it_held(
    vhost_settings: Settings, loaded: LoadedTopology, tmp_path: Path, workers: list[FailureWorker]
) -> None:
    ledger = Ledger()
    first = FailureWorker(
        tmp_path, vhost_settings, "--concurrency", "4", "--prefetch", str(PREFETCH), name="a"
    )
    workers.append(first)
    await first.wait_for_output("consuming ft.work")
    await _publish(ledger, vhost_settings, loaded, 200, sleep_s=0.05)
    await wait_until(lambda: len(handler_lines(first.record, "done")) >= 30, what="30 done")
    first.signal(signal.SIGKILL)
    assert await first.wait_exit(10) == -signal.SIGKILL
    held = in_flight(first.record)
    assert held, "the kill should have caught jobs mid-run"
    started_by_first = set(handler_lines(first.record, "start"))

    await _finish_with_second_worker(tmp_path, vhost_settings, ledger, workers)
    result = ledger.check()
    print(f"worker kill -9: {result.summary()} in_flight_at_kill={len(held)}")
    # Only what the killed worker held unacked may run twice: jobs mid-run, and jobs finished
    # whose ack had not left yet. That is at most the prefetch, and every job mid-run reran.
    result.assert_ok(allowed_duplicates=started_by_first)
    assert held <= result.duplicated
    assert len(result.duplicated) <= PREFETCH
    assert len(result.ok) == 200


async def test_a_sigterm_drain_hands_back_unstarted_jobs_and_nothing_runs_twice(
    vhost_settings: Settings, loaded: LoadedTopology, tmp_path: Path, workers: list[FailureWorker]
) -> None:
    ledger = Ledger()
    first = FailureWorker(
        tmp_path, vhost_settings, "--concurrency", "2", "--prefetch", "6", name="a"
    )
    workers.append(first)
    await first.wait_for_output("consuming ft.work")
    await _publish(ledger, vhost_settings, loaded, 12, sleep_s=1.0)
    await wait_until(lambda: len(handler_lines(first.record, "start")) == 2, what="2 started")
    first.signal(signal.SIGTERM)
    assert await first.wait_exit(30) == 0, first.stderr
    assert not in_flight(first.record), "a drain finishes what it started"

    await _finish_with_second_worker(tmp_path, vhost_settings, ledger, workers)
    result = ledger.check()
    print(f"sigterm drain: {result.summary()}")
    result.assert_ok()  # no duplicates at all
    assert len(result.ok) == 12


async def test_a_job_longer_than_the_grace_period_is_rerun_by_the_next_worker_and_only_it(
    vhost_settings: Settings, loaded: LoadedTopology, tmp_path: Path, workers: list[FailureWorker]
) -> None:
    ledger = Ledger()
    first = FailureWorker(
        tmp_path, vhost_settings, "--concurrency", "1", "--prefetch", "3", "--grace", "1s",
        name="a",
    )  # fmt: skip
    workers.append(first)
    await first.wait_for_output("consuming ft.work")
    await _publish(ledger, vhost_settings, loaded, 3, sleep_s=3.0)
    await wait_until(lambda: len(handler_lines(first.record, "start")) == 1, what="one started")
    first.signal(signal.SIGTERM)
    assert await first.wait_exit(20) == 1, first.stderr
    [cut_short] = in_flight(first.record)

    await _finish_with_second_worker(tmp_path, vhost_settings, ledger, workers)
    result = ledger.check()
    print(f"longer than grace: {result.summary()}")
    result.assert_ok(allowed_duplicates={cut_short})
    assert result.duplicated == {cut_short}
    assert len(result.ok) == 3
