"""Lifecycle hooks under a real worker (``jobsys worker`` in a subprocess) on real RabbitMQ:
state reaches handlers, a failing startup hook stops the worker (and a supervisor) with exit
code 5 and one message, shutdown hooks run after the drain on SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology
from tests.apps import hook_apps
from tests.apps.worker_apps import apply, publish, queue_depth, wait_until
from tests.harness.worker_subprocess import WorkerSubprocess

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def applied(vhost_settings: Settings, tmp_path: Path) -> LoadedTopology:
    file = tmp_path / "topology.yaml"
    file.write_text(hook_apps.TOPOLOGY_YAML, encoding="utf-8")
    loaded = load_topology(file)
    await apply(vhost_settings, loaded)
    return loaded


@pytest.fixture
def workers() -> Iterator[list[WorkerSubprocess]]:
    started: list[WorkerSubprocess] = []
    yield started
    for worker in started:
        worker.kill()


def _start(
    tmp_path: Path,
    settings: Settings,
    workers: list[WorkerSubprocess],
    *args: str,
    hook: str = "ok",
    shutdown: str = "ok",
) -> WorkerSubprocess:
    worker = WorkerSubprocess(
        "tests.apps.hook_apps:app",
        tmp_path / "topology.yaml",
        tmp_path / "worker.stderr",
        {
            "JOBSYS_URL": settings.url,
            "JOBSYS_TEST_RECORD": str(tmp_path / "record.txt"),
            "JOBSYS_TEST_HOOK": hook,
            "JOBSYS_TEST_SHUTDOWN": shutdown,
        },
        args,
    )
    workers.append(worker)
    return worker


def _records(tmp_path: Path) -> list[str]:
    path = tmp_path / "record.txt"
    if not path.exists():
        return []
    return [line.rsplit(" ", 1)[0] for line in path.read_text().splitlines()]


async def test_handlers_see_the_state_startup_opened_and_shutdown_runs_after_the_drain_on_sigterm(
    vhost_settings: Settings,
    applied: LoadedTopology,
    tmp_path: Path,
    workers: list[WorkerSubprocess],
) -> None:
    worker = _start(tmp_path, vhost_settings, workers)
    await worker.wait_for_output(f"consuming {hook_apps.WORK}")
    ids = await publish(vhost_settings, applied, "use_pool", [{}, {}, {}])
    await wait_until(lambda: len(_records(tmp_path)) >= 4, 20, what="3 jobs run")
    worker.signal(signal.SIGTERM)

    assert await worker.wait_exit() == 0, worker.stderr
    records = _records(tmp_path)
    assert records[0] == "startup"
    assert sorted(records[1:4]) == sorted(f"job {job_id} pool-open" for job_id in ids)
    assert records[4:] == ["shutdown pool-open", "shutdown-after"]


async def test_a_failing_shutdown_hook_is_logged_and_the_next_one_still_runs(
    vhost_settings: Settings,
    applied: LoadedTopology,
    tmp_path: Path,
    workers: list[WorkerSubprocess],
) -> None:
    worker = _start(tmp_path, vhost_settings, workers, shutdown="raise")
    await worker.wait_for_output(f"consuming {hook_apps.WORK}")
    worker.signal(signal.SIGTERM)

    assert await worker.wait_exit() == 0, worker.stderr
    assert (
        "shutdown hook tests.apps.hook_apps.close_pool failed: ValueError: pool already closed"
    ) in worker.stderr
    assert _records(tmp_path) == ["startup", "shutdown pool-open", "shutdown-after"]


@pytest.mark.parametrize(
    ("hook", "args", "expected"),
    [
        (
            "raise",
            (),
            "startup hook tests.apps.hook_apps.open_pool failed: RuntimeError: database at "
            "db.invalid:5432 refused the connection",
        ),
        ("exit", (), "startup hook tests.apps.hook_apps.open_pool failed: SystemExit: 3"),
        ("interrupt", (), "startup hook tests.apps.hook_apps.open_pool failed: KeyboardInterrupt"),
        (
            "block",
            ("--hook-timeout", "1s"),
            "startup hook tests.apps.hook_apps.blocking_check failed: it did not finish within "
            "1s (--hook-timeout)",
        ),
    ],
)
async def test_a_failing_startup_hook_exits_5_with_one_message_and_takes_no_job(
    vhost_settings: Settings,
    applied: LoadedTopology,
    tmp_path: Path,
    workers: list[WorkerSubprocess],
    hook: str,
    args: tuple[str, ...],
    expected: str,
) -> None:
    await publish(vhost_settings, applied, "use_pool", [{}])
    worker = _start(tmp_path, vhost_settings, workers, *args, hook=hook)

    assert await worker.wait_exit() == 5, worker.stderr
    errors = [line for line in worker.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {expected}; the worker stopped before taking any job"]
    assert "Traceback" not in worker.stderr
    assert "shutdown" not in " ".join(_records(tmp_path))
    assert await queue_depth(vhost_settings, hook_apps.WORK) == 1


async def test_a_supervisor_stops_at_once_with_exit_5_when_startup_fails_and_restarts_nothing(
    vhost_settings: Settings,
    applied: LoadedTopology,
    tmp_path: Path,
    workers: list[WorkerSubprocess],
) -> None:
    worker = _start(tmp_path, vhost_settings, workers, "--processes", "2", hook="raise")

    assert await worker.wait_exit(40) == 5, worker.stderr
    stderr = worker.stderr
    assert "startup hook tests.apps.hook_apps.open_pool failed: RuntimeError" in stderr
    assert "restarting" not in stderr
    assert "a restart would fail the same way" in stderr
