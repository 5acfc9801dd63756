"""Every ``JOBSYS_*`` variable the code reads is in docs/cli.md's table (and no stale one)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Set by jobsys for its own child processes, not by users.
INTERNAL = {"JOBSYS_SUPERVISOR_FD"}


def test_the_environment_table_lists_every_variable_the_code_reads() -> None:
    code = {
        name
        for path in (ROOT / "jobsys").rglob("*.py")
        for name in re.findall(r"JOBSYS_[A-Z_]+[A-Z]", path.read_text(encoding="utf-8"))
    } - INTERNAL
    section = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    table = section.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(JOBSYS_[A-Z_]+)`", table, re.MULTILINE))

    assert code - documented == set(), "read by the code, missing from docs/cli.md"
    assert documented - code == set(), "in docs/cli.md, read by nothing"
