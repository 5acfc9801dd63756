"""Exactly-once effects in your own database: an inbox of job ids.

Delivery is at least once: a job may run again after a crash between its effect and its ack.
An inbox makes the effect happen once all the same. ``once`` opens a transaction, records the
job id in the inbox table, runs your writes in that same transaction and commits them
together; when the id is already recorded (the job ran before, whatever happened to its ack),
nothing runs and ``Once.ran`` is False, so the handler returns and the job is acked.

Two stores, same contract: ``SQLiteInbox`` (the standard library's ``sqlite3``, for sync
handlers) and ``PostgresInbox`` (psycopg 3, async; ``pip install 'jobsys[postgres]'``). Both
create their table with ``setup()``. The writes must go through the connection ``once`` hands
to your function, and that function must not commit on its own.

The anchor is NServiceBus's inbox (the receiving half of its outbox). This room never touches
the broker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jobsys.inbox.common import Once
from jobsys.inbox.sqlite import SQLiteInbox

if TYPE_CHECKING:
    from jobsys.inbox.postgres import PostgresInbox

__all__ = ["Once", "PostgresInbox", "SQLiteInbox"]


def __getattr__(name: str) -> Any:
    # psycopg is an optional extra: loaded only when PostgresInbox is asked for.
    if name == "PostgresInbox":
        return importlib.import_module("jobsys.inbox.postgres").PostgresInbox
    raise AttributeError(f"module 'jobsys.inbox' has no attribute {name!r}")
