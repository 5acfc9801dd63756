"""The inbox in SQLite (the standard library's ``sqlite3``), for sync handlers.

``once`` opens its own connection per call (SQLite connections do not cross threads, and sync
handlers run on several) and takes the write lock at once (``BEGIN IMMEDIATE``): two runs of
the same job, or of two jobs, never interleave their writes, and the second run of a job sees
the first one's id. An async handler calls it with ``await asyncio.to_thread(inbox.once, ...)``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from jobsys.app import JobContext
from jobsys.inbox.common import Once, check_table, job_id_of

T = TypeVar("T")


class SQLiteInbox:
    """Job ids recorded in ``table`` of the SQLite database at ``path``, in the same
    transaction as the effect of the job."""

    def __init__(
        self, path: str | Path, *, table: str = "jobsys_inbox", timeout_s: float = 30.0
    ) -> None:
        self.path = str(path)
        self.table = check_table(table)
        #: How long to wait for another writer's lock before ``sqlite3.OperationalError``.
        self.timeout_s = timeout_s

    def connect(self) -> sqlite3.Connection:
        """A connection in autocommit mode: ``once`` opens and ends its transaction itself."""
        return sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)

    def setup(self) -> None:
        """Create the inbox table if it does not exist."""
        with _closing(self.connect()) as conn:
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{self.table}" ('
                "job_id TEXT PRIMARY KEY, done_at_ms INTEGER NOT NULL)"
            )

    def once(self, job: JobContext | str, effect: Callable[[sqlite3.Connection], T]) -> Once[T]:
        """Run ``effect(connection)`` and record the job id, in one transaction, unless the id
        is recorded already. What ``effect`` raises rolls everything back and is raised."""
        job_id = job_id_of(job)
        with _closing(self.connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                inserted = conn.execute(
                    f'INSERT INTO "{self.table}" (job_id, done_at_ms) VALUES (?, ?) '
                    "ON CONFLICT (job_id) DO NOTHING",
                    (job_id, int(time.time() * 1000)),
                ).rowcount
                if inserted == 0:
                    conn.execute("ROLLBACK")
                    return Once(ran=False)
                result = effect(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return Once(ran=True, result=result)

    def done(self, job: JobContext | str) -> bool:
        """Whether the job's effect was committed."""
        with _closing(self.connect()) as conn:
            row = conn.execute(
                f'SELECT 1 FROM "{self.table}" WHERE job_id = ?', (job_id_of(job),)
            ).fetchone()
        return row is not None


class _closing:
    """``contextlib.closing`` typed for a connection (a sqlite3 connection's own ``with``
    commits or rolls back but does not close)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *_: object) -> None:
        self.conn.close()
