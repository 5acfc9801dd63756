"""The app of the inbox crash tests, run by ``jobsys worker``.

``credit`` (async, PostgreSQL) and ``credit_sqlite`` (sync, SQLite) add the job's amount to an
effects table through the inbox, recording "start <id>" before and "done <id> ran|skipped"
after in the file named by ``JOBSYS_TEST_RECORD``. With ``JOBSYS_TEST_KILL=1`` the handler
kills its own process with SIGKILL right after the inbox committed: after the commit, before
the ack. Table names and the database come from the environment, one set per test.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from typing import Any

from jobsys.app import App, JobContext
from jobsys.inbox import PostgresInbox, SQLiteInbox

TOPOLOGY_YAML = """\
version: 1
exchanges:
  ib.jobs: {type: direct}
queues:
  ib.work: {type: classic, consumer: {concurrency: 1, prefetch: 1}}
bindings:
  - {exchange: ib.jobs, queue: ib.work, routing_key: work}
job_types:
  credit: {exchange: ib.jobs, routing_key: work, timeout: 30s}
  credit_sqlite: {exchange: ib.jobs, routing_key: work, timeout: 30s}
"""
WORK = "ib.work"

app = App()


def _record(line: str) -> None:
    with open(os.environ["JOBSYS_TEST_RECORD"], "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def _after_commit() -> None:
    if os.environ.get("JOBSYS_TEST_KILL") == "1":
        os.kill(os.getpid(), signal.SIGKILL)


@app.on_startup
async def open_inboxes(state: Any) -> None:
    """One inbox of each kind per process, on the state."""
    state.pg = PostgresInbox(os.environ["JOBSYS_TEST_POSTGRES_URL"], table=os.environ["INBOX"])
    state.sqlite = SQLiteInbox(os.environ["JOBSYS_TEST_SQLITE"], table=os.environ["INBOX"])


@app.handler("credit")
async def credit(payload: dict[str, Any], ctx: JobContext) -> None:
    """Adds ``amount`` to the effects table, once."""
    _record(f"start {ctx.job_id}")
    effects = os.environ["EFFECTS"]

    async def effect(conn: Any) -> None:
        await conn.execute(
            f"INSERT INTO {effects} (job_id, amount) VALUES (%s, %s)",
            (ctx.job_id, payload["amount"]),
        )

    once = await ctx.state.pg.once(ctx, effect)
    if once.ran:
        _after_commit()
    _record(f"done {ctx.job_id} {'ran' if once.ran else 'skipped'}")


@app.handler("credit_sqlite")
def credit_sqlite(payload: dict[str, Any], ctx: JobContext) -> None:
    """The same in SQLite, from a sync handler."""
    _record(f"start {ctx.job_id}")
    effects = os.environ["EFFECTS"]

    def effect(conn: sqlite3.Connection) -> None:
        conn.execute(
            f"INSERT INTO {effects} (job_id, amount) VALUES (?, ?)",
            (ctx.job_id, payload["amount"]),
        )

    once = ctx.state.sqlite.once(ctx, effect)
    if once.ran:
        _after_commit()
    _record(f"done {ctx.job_id} {'ran' if once.ran else 'skipped'}")
