"""The SQLite inbox (stdlib, no server): the effect and the job id commit together, once."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from jobsys.app import JobContext
from jobsys.inbox import Once, SQLiteInbox


@pytest.fixture
def inbox(tmp_path: Path) -> SQLiteInbox:
    inbox = SQLiteInbox(tmp_path / "app.db")
    inbox.setup()
    inbox.setup()  # twice is fine
    with sqlite3.connect(inbox.path) as conn:
        conn.execute("CREATE TABLE effects (job_id TEXT, amount INTEGER)")
    return inbox


def _effects(inbox: SQLiteInbox) -> list[tuple[str, int]]:
    with sqlite3.connect(inbox.path) as conn:
        return list(conn.execute("SELECT job_id, amount FROM effects ORDER BY job_id"))


def _credit(job_id: str, amount: int):  # type: ignore[no-untyped-def]
    def effect(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO effects VALUES (?, ?)", (job_id, amount))
        return amount

    return effect


def test_the_effect_runs_once_per_job_id(inbox: SQLiteInbox) -> None:
    ctx = JobContext("job-1", "credit", 1, {}, "q", False)
    assert inbox.once(ctx, _credit("job-1", 5)) == Once(ran=True, result=5)
    assert inbox.once(ctx, _credit("job-1", 5)) == Once(ran=False)
    assert inbox.once("job-2", _credit("job-2", 7)).ran
    assert _effects(inbox) == [("job-1", 5), ("job-2", 7)]
    assert inbox.done(ctx) and not inbox.done("job-3")


@pytest.mark.parametrize("raised", [RuntimeError("boom"), SystemExit(1), KeyboardInterrupt()])
def test_an_effect_that_raises_rolls_back_its_writes_and_the_id(
    inbox: SQLiteInbox, raised: BaseException
) -> None:
    def effect(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO effects VALUES ('job-1', 1)")
        raise raised

    with pytest.raises(type(raised)):
        inbox.once("job-1", effect)
    assert _effects(inbox) == []
    assert not inbox.done("job-1")
    assert inbox.once("job-1", _credit("job-1", 2)).ran  # the retry runs


def test_concurrent_runs_of_one_job_apply_its_effect_once(inbox: SQLiteInbox) -> None:
    results: list[bool] = []
    start = threading.Barrier(8)

    def run() -> None:
        start.wait()
        results.append(inbox.once("job-1", _credit("job-1", 1)).ran)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert _effects(inbox) == [("job-1", 1)]


@pytest.mark.parametrize(
    "table", ['inbox"; DROP TABLE effects; --', "in box", "", "a" * 64, "x.y.z", 3]
)
def test_a_table_name_that_is_not_a_plain_identifier_is_refused(table: object) -> None:
    with pytest.raises(ValueError, match="plain SQL identifier"):
        SQLiteInbox("x.db", table=table)  # type: ignore[arg-type]


@pytest.mark.parametrize("job_id", ["", "a\nb", "x" * 300, None, b"id"])
def test_a_value_that_is_not_a_job_id_is_refused(inbox: SQLiteInbox, job_id: object) -> None:
    with pytest.raises(ValueError, match="not a job id"):
        inbox.once(job_id, _credit("x", 1))  # type: ignore[arg-type]
    assert _effects(inbox) == []
