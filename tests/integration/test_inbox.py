"""The inbox against a real PostgreSQL (and SQLite under a real worker): the effect and the job
id commit together, a second run skips, and kill -9 between the commit and the ack leaves the
effect applied once."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobsys.inbox import Once, PostgresInbox
from jobsys.settings import Settings
from jobsys.topology.loader import load_topology
from tests.apps import inbox_apps, worker_apps
from tests.apps.worker_apps import queue_depth, wait_until
from tests.conftest import POSTGRES_URL
from tests.harness.worker_subprocess import WorkerSubprocess

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def tables() -> AsyncIterator[tuple[str, str]]:
    """An inbox table name and an effects table (created) of this test's own; dropped after."""
    token = uuid.uuid4().hex[:8]
    inbox, effects = f"inbox_{token}", f"effects_{token}"
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(f"CREATE TABLE {effects} (job_id text, amount int)")
        try:
            yield inbox, effects
        finally:
            await conn.execute(f"DROP TABLE IF EXISTS {inbox}, {effects}")


async def _effects(effects: str) -> list[tuple[str, int]]:
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        cursor = await conn.execute(f"SELECT job_id, amount FROM {effects} ORDER BY job_id")
        return await cursor.fetchall()


def _credit(effects: str, job_id: str, amount: int, *, fail: bool = False) -> Any:
    async def effect(conn: psycopg.AsyncConnection[Any]) -> int:
        await conn.execute(f"INSERT INTO {effects} VALUES (%s, %s)", (job_id, amount))
        if fail:
            raise RuntimeError("after the write")
        return amount

    return effect


@pytest.mark.postgres
async def test_postgres_runs_the_effect_once_per_job_id_and_rolls_back_a_failure(
    tables: tuple[str, str],
) -> None:
    inbox_table, effects = tables
    inbox = PostgresInbox(POSTGRES_URL, table=inbox_table)
    await inbox.setup()
    await inbox.setup()

    with pytest.raises(RuntimeError):
        await inbox.once("job-1", _credit(effects, "job-1", 1, fail=True))
    assert await _effects(effects) == [] and not await inbox.done("job-1")

    assert await inbox.once("job-1", _credit(effects, "job-1", 5)) == Once(ran=True, result=5)
    assert await inbox.once("job-1", _credit(effects, "job-1", 5)) == Once(ran=False)
    # On the caller's own connection, inside its transaction: a savepoint.
    async with (
        await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn,
        conn.transaction(),
    ):
        assert (await inbox.once("job-2", _credit(effects, "job-2", 7), connection=conn)).ran
    assert await _effects(effects) == [("job-1", 5), ("job-2", 7)]


@pytest.mark.postgres
async def test_postgres_concurrent_runs_of_one_job_apply_it_once(
    tables: tuple[str, str],
) -> None:
    inbox_table, effects = tables
    inbox = PostgresInbox(POSTGRES_URL, table=inbox_table)
    await inbox.setup()

    async def slow(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(f"INSERT INTO {effects} VALUES ('job-1', 1)")
        await asyncio.sleep(0.2)  # the others wait on the row lock meanwhile

    results = await asyncio.gather(*(inbox.once("job-1", slow) for _ in range(5)))
    assert sorted(r.ran for r in results) == [False] * 4 + [True]
    assert await _effects(effects) == [("job-1", 1)]


# -- kill -9 between the commit and the ack ------------------------------------------------------


@pytest.fixture
def workers() -> Iterator[list[WorkerSubprocess]]:
    started: list[WorkerSubprocess] = []
    yield started
    for worker in started:
        worker.kill()


async def _kill_between_commit_and_ack(
    settings: Settings,
    tmp_path: Path,
    workers: list[WorkerSubprocess],
    job_type: str,
    env: dict[str, str],
) -> list[str]:
    """Publish 3 jobs; a worker that dies after the first commit, then one that finishes;
    returns the record lines."""
    file = tmp_path / "topology.yaml"
    file.write_text(inbox_apps.TOPOLOGY_YAML, encoding="utf-8")
    loaded = load_topology(file)
    await worker_apps.apply(settings, loaded)
    ids = await worker_apps.publish(settings, loaded, job_type, [{"amount": n} for n in (1, 2, 3)])
    record = tmp_path / "record.txt"
    base = {
        "JOBSYS_URL": settings.url,
        "JOBSYS_TEST_RECORD": str(record),
        "JOBSYS_TEST_POSTGRES_URL": POSTGRES_URL,
        "JOBSYS_TEST_SQLITE": str(tmp_path / "app.db"),
        **env,
    }
    first = WorkerSubprocess(
        "tests.apps.inbox_apps:app",
        file,
        tmp_path / "first.stderr",
        {**base, "JOBSYS_TEST_KILL": "1"},
        (),
    )
    workers.append(first)
    assert await first.wait_exit(30) == -signal.SIGKILL, first.stderr
    second = WorkerSubprocess(
        "tests.apps.inbox_apps:app", file, tmp_path / "second.stderr", base, ()
    )
    workers.append(second)
    await wait_until(
        lambda: record.exists() and record.read_text().count("done ") >= 3,
        30,
        what="every job done",
    )
    second.signal(signal.SIGTERM)
    assert await second.wait_exit() == 0, second.stderr
    assert await queue_depth(settings, inbox_apps.WORK) == 0
    lines = record.read_text().splitlines()
    # The first job was committed, then the worker died before acking it: it ran again and
    # its inbox said so; the other two ran once.
    assert f"done {ids[0]} skipped" in lines
    assert sorted(line for line in lines if line.endswith(" ran")) == sorted(
        f"done {job_id} ran" for job_id in ids[1:]
    )
    assert lines.count(f"start {ids[0]}") == 2
    return ids


@pytest.mark.postgres
async def test_kill_9_between_the_postgres_commit_and_the_ack_applies_the_effect_once(
    vhost_settings: Settings, tmp_path: Path, workers: list[WorkerSubprocess]
) -> None:
    token = uuid.uuid4().hex[:8]
    inbox_table, effects = f"inbox_{token}", f"effects_{token}"
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(f"CREATE TABLE {effects} (job_id text, amount int)")
        await PostgresInbox(table=inbox_table).setup(conn)
        try:
            ids = await _kill_between_commit_and_ack(
                vhost_settings,
                tmp_path,
                workers,
                "credit",
                {"INBOX": inbox_table, "EFFECTS": effects},
            )
            assert await _effects(effects) == sorted(zip(ids, (1, 2, 3), strict=True))
        finally:
            await conn.execute(f"DROP TABLE IF EXISTS {inbox_table}, {effects}")


async def test_kill_9_between_the_sqlite_commit_and_the_ack_applies_the_effect_once(
    vhost_settings: Settings, tmp_path: Path, workers: list[WorkerSubprocess]
) -> None:
    from jobsys.inbox import SQLiteInbox

    database = tmp_path / "app.db"
    SQLiteInbox(database, table="inbox").setup()
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE effects (job_id TEXT, amount INTEGER)")
    ids = await _kill_between_commit_and_ack(
        vhost_settings,
        tmp_path,
        workers,
        "credit_sqlite",
        {"INBOX": "inbox", "EFFECTS": "effects"},
    )
    with sqlite3.connect(database) as conn:
        rows = list(conn.execute("SELECT job_id, amount FROM effects ORDER BY job_id"))
    assert rows == sorted(zip(ids, (1, 2, 3), strict=True))
