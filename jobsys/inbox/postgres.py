"""The inbox in PostgreSQL, with psycopg 3 (async): ``pip install 'jobsys[postgres]'``.

psycopg is typed, speaks both sync and async, and ships binary wheels; its ``transaction()``
commits on success and rolls back on any exception, which is the whole contract here.

``once`` inserts the job id first, ``ON CONFLICT DO NOTHING``: a second run of the same job
that overlaps the first (a redelivery while it still runs) waits on the row lock until the
first commits, then finds the id and skips; if the first rolled back, it runs.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from jobsys.app import JobContext
from jobsys.inbox.common import Once, check_table, job_id_of

T = TypeVar("T")
Connection = psycopg.AsyncConnection[Any]


class PostgresInbox:
    """Job ids recorded in ``table`` (optionally ``schema.table``), in the same transaction
    as the effect of the job. ``conninfo`` is a libpq connection string or URL, used when
    ``once`` is not given a connection of yours (from your pool, say)."""

    def __init__(self, conninfo: str = "", *, table: str = "jobsys_inbox") -> None:
        self.conninfo = conninfo
        self.table = check_table(table)
        self._name = sql.Identifier(*table.split("."))

    async def setup(self, connection: Connection | None = None) -> None:
        """Create the inbox table if it does not exist."""
        statement = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (job_id text PRIMARY KEY, done_at_ms bigint NOT NULL)"
        ).format(self._name)
        async with _connection(self, connection) as conn, conn.transaction():
            await conn.execute(statement)

    async def once(
        self,
        job: JobContext | str,
        effect: Callable[[Connection], Awaitable[T]],
        *,
        connection: Connection | None = None,
    ) -> Once[T]:
        """Run ``await effect(conn)`` and record the job id, in one transaction, unless the id
        is recorded already. What ``effect`` raises rolls everything back and is raised.
        ``connection``: run on yours (inside a transaction of yours it becomes a savepoint)."""
        job_id = job_id_of(job)
        insert = sql.SQL(
            "INSERT INTO {} (job_id, done_at_ms) VALUES (%s, %s) ON CONFLICT (job_id) DO NOTHING"
        ).format(self._name)
        async with _connection(self, connection) as conn, conn.transaction():
            cursor = await conn.execute(insert, (job_id, int(time.time() * 1000)))
            if cursor.rowcount == 0:
                return Once(ran=False)  # the empty transaction commits: nothing was written
            result = await effect(conn)
        return Once(ran=True, result=result)

    async def done(self, job: JobContext | str, connection: Connection | None = None) -> bool:
        """Whether the job's effect was committed."""
        query = sql.SQL("SELECT 1 FROM {} WHERE job_id = %s").format(self._name)
        async with _connection(self, connection) as conn:
            cursor = await conn.execute(query, (job_id_of(job),))
            return await cursor.fetchone() is not None


class _connection:
    """The caller's connection as it is, or a new one closed at the end."""

    def __init__(self, inbox: PostgresInbox, given: Connection | None) -> None:
        self.inbox = inbox
        self.given = given
        self.opened: Connection | None = None

    async def __aenter__(self) -> Connection:
        if self.given is not None:
            return self.given
        self.opened = await psycopg.AsyncConnection.connect(self.inbox.conninfo)
        return self.opened

    async def __aexit__(self, *_: object) -> None:
        if self.opened is not None:
            await self.opened.close()
