"""The log lines jobsys programs write: one record is one line, whatever a job id or job type
holds, and a traceback keeps its own lines (pure: a logger and a string buffer)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from jobsys.process.serve import configure_logging

HOSTILE_ID = "job\x1b[2J\x1b]0;owned\x07\r\nFAKE 2099-01-01 ERROR jobsys.worker: spoofed\u2028x"


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What ``configure_logging`` writes, from a clean root logger."""
    buffer = io.StringIO()
    monkeypatch.setattr("sys.stderr", buffer)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers.clear()
    try:
        configure_logging(1)
        yield buffer
    finally:
        root.handlers[:], root.level = saved


def test_a_job_id_with_control_characters_cannot_forge_a_log_line(stderr: io.StringIO) -> None:
    logging.getLogger("jobsys.worker").warning(
        "job %s (%s) dead-lettered to %s", HOSTILE_ID, "type\x1b[8m", "q.dead"
    )

    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1
    assert "\x1b" not in lines[0] and "\r" not in lines[0] and "\u2028" not in lines[0]
    assert lines[0].endswith(
        "WARNING jobsys.worker: job job\\x1b[2J\\x1b]0;owned\\x07\\r\\nFAKE 2099-01-01 ERROR "
        "jobsys.worker: spoofed\\u2028x (type\\x1b[8m) dead-lettered to q.dead"
    )


def test_a_traceback_keeps_its_lines_with_other_control_characters_escaped(
    stderr: io.StringIO,
) -> None:
    try:
        raise ValueError("bad job \x1b[2J\rid")
    except ValueError:
        logging.getLogger("jobsys.worker").exception("a job runner of %s failed", "q\nx")

    lines = stderr.getvalue().splitlines()
    assert lines[0].endswith("ERROR jobsys.worker: a job runner of q\\nx failed")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad job \\x1b[2J\\rid"
    assert "\x1b" not in stderr.getvalue()


def test_the_formatter_leaves_the_record_as_other_handlers_see_it(stderr: io.StringIO) -> None:
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("jobsys.test-keep")
    logger.addHandler(Keep())
    try:
        logger.warning("job %s", "a\nb")
    finally:
        logger.handlers.clear()

    assert seen == ["job a\nb"]
    assert "job a\\nb" in stderr.getvalue()
