"""What both inbox stores share: the result, and the checks of a table name and a job id."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Generic, TypeVar

from jobsys.app import JobContext

T = TypeVar("T")

#: A table name an inbox accepts: a plain SQL identifier, optionally schema-qualified. Anything
#: else (quotes, spaces, semicolons) is refused rather than quoted into SQL.
_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?")
_MAX_JOB_ID_CHARS = 255


@dataclass(frozen=True)
class Once(Generic[T]):
    """What ``once`` did: ``ran`` is True when the effect ran and was committed with the job
    id, False when the id was recorded already (the effect did not run; ``result`` is None)."""

    ran: bool
    result: T | None = None


def check_table(table: str) -> str:
    """``table`` when it is a plain identifier (or ``schema.table``); ``ValueError`` else."""
    if not isinstance(table, str) or not _TABLE.fullmatch(table):
        raise ValueError(
            "an inbox table must be a plain SQL identifier (letters, digits, _; optionally "
            f"schema.table, at most 63 characters each), got {table!r:.80}"
        )
    return table


def job_id_of(job: JobContext | str) -> str:
    """The job id of ``job`` (a ``JobContext`` or the id itself); ``ValueError`` for one that
    cannot be a jobsys job id."""
    job_id = job.job_id if isinstance(job, JobContext) else job
    if (
        not isinstance(job_id, str)
        or not job_id
        or len(job_id) > _MAX_JOB_ID_CHARS
        or not job_id.isprintable()
    ):
        raise ValueError(f"not a job id: {job_id!r:.80}")
    return job_id
