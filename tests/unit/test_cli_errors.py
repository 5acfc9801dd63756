"""A command's error message is printed so that nothing quoted in it (a job id, a header, the
broker's text) can act on the terminal or pass for a message of its own (no broker)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from jobsys.cli.common import run
from jobsys.errors import BrokerError, JobsysError, TopologyConflictError


def _failing_command(error: JobsysError) -> click.Command:
    @click.command()
    @run
    async def command() -> None:
        raise error

    return command


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            BrokerError("job a\x1b[2J\x1b]0;t\x07\rb failed"),
            "error: job a\\x1b[2J\\x1b]0;t\\x07\\rb failed\n",
        ),
        (
            BrokerError("job a\nerror: forged\n  kept as is"),
            "error: job a\n  error: forged\n  kept as is\n",
        ),
        (
            TopologyConflictError(["~ queue 'q': x-max-length is 1 on the broker, 2 in the file"]),
            "error: the broker's topology differs from the file; nothing was changed:\n"
            "  ~ queue 'q': x-max-length is 1 on the broker, 2 in the file\n",
        ),
        (BrokerError("job \udcff"), "error: job \\udcff\n"),
    ],
    ids=["escapes", "forged-line", "multi-line-kept", "surrogate"],
)
def test_an_error_message_is_escaped_and_its_later_lines_indented(
    error: JobsysError, expected: str
) -> None:
    result = CliRunner().invoke(_failing_command(error), [], color=False)

    assert result.exit_code != 0
    assert result.stderr == expected
