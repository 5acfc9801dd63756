"""The error types jobsys writes into ``jobsys-error-type`` are stable and documented: each row
of the table in docs/concepts.md names a class that exists under that name, and is the exact
text a dead-letter record carries for it; every error the consuming side raises itself has a
row (pure)."""

from __future__ import annotations

import builtins
import re
from pathlib import Path

import pytest

import jobsys.errors
from jobsys.wire.deadletter import error_type_name

CONCEPTS = Path(__file__).resolve().parents[2] / "docs" / "concepts.md"

#: What the worker raises on its own when it dead-letters a job (the decoder, the deadline, the
#: loop watchdog, the handler threads); handlers' own exceptions are "anything else".
RAISED_BY_JOBSYS = {
    jobsys.errors.DecodeError,
    jobsys.errors.ContentTypeError,
    jobsys.errors.PayloadTooLargeError,
    jobsys.errors.PayloadValidationError,
    jobsys.errors.UnknownJobTypeError,
    jobsys.errors.LoopBlocked,
    jobsys.errors.HandlerThreadsBusy,
    # Raised by handlers, but jobsys's own class: its name in a record is as stable as the rest.
    jobsys.errors.Reject,
    TimeoutError,
}


def documented() -> list[str]:
    """The error types in the first column of the table after "The ones jobsys itself raises"."""
    text = CONCEPTS.read_text(encoding="utf-8")
    table = text.split("The\nones jobsys itself raises are stable:", 1)[1].split("\n\n", 2)[1]
    return re.findall(r"^\| `([\w.]+)` \|", table, re.MULTILINE)


def test_the_table_is_found_and_lists_each_type_once() -> None:
    names = documented()
    assert len(names) >= len(RAISED_BY_JOBSYS)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", documented())
def test_each_documented_error_type_is_the_name_a_record_carries(name: str) -> None:
    module, _, qualname = name.rpartition(".")
    cls = getattr(jobsys.errors if module == "jobsys.errors" else builtins, qualname, None)
    assert isinstance(cls, type) and issubclass(cls, BaseException), name
    assert error_type_name(cls("x")) == name


def test_every_error_the_worker_raises_itself_is_documented() -> None:
    assert {error_type_name(cls("x")) for cls in RAISED_BY_JOBSYS} <= set(documented())
