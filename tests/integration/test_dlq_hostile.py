"""``jobsys dlq list`` and ``dlq show`` with dead-lettered jobs whose headers are hostile: odd
values never break the look at the whole queue (they are shown as well as they can be, marked),
and control characters never reach the terminal raw, so no header can clear the screen, retitle
the window, overwrite a line or forge a table row or a header line.

The CLI runs with ``color=True``: click then leaves escape sequences in, as it does on a
terminal (it strips some of them only when the output is not a terminal).
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import re
from typing import Any

import aio_pika
import pytest
from click.testing import CliRunner, Result

from jobsys.broker.connection import BrokerConnection
from jobsys.cli import main
from jobsys.settings import Settings
from jobsys.topology.model import DEAD_LETTER_EXCHANGE
from jobsys.wire.headers import (
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_FAILED_AT_MS,
    HEADER_FIRST_FAILED_AT_MS,
    HEADER_JOB_ID,
    HEADER_ORIGINAL_QUEUE,
    HEADER_REPLAYS,
    HEADER_TRACEBACK,
)
from tests.apps.dead_letters import (
    DLQ,
    QUEUE,
    apply,
    dead_letter_headers,
    drain,
    job_ids,
    topology_path,
)

#: What must never reach a terminal raw: ESC (CSI and OSC sequences), BEL, CR, backspace, a C1
#: CSI, and the line breaks other than the ones jobsys writes itself.
RAW_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]")


class RawText(str):
    """A header value that pamqp writes as a long string of exactly these bytes (UTF-8 or not):
    what a client that does not check its strings can put on the wire."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawText:
        text = super().__new__(cls, raw.decode("utf-8", "replace"))
        text.raw = raw
        return text

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


async def plant(settings: Settings, jobs: list[tuple[str | None, dict[str, Any]]]) -> None:
    """Publish ``(job type, headers)`` straight into the dead-letter queue, confirmed."""
    async with BrokerConnection(settings) as connection:
        channel = await connection.channel(confirms=True)
        exchange = await channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
        for job_type, headers in jobs:
            message = aio_pika.Message(
                b'{"secret": "BODY"}', type=job_type, headers=headers, message_id="m"
            )
            await exchange.publish(message, DLQ, mandatory=True)
        await channel.close()


def dlq(settings: Settings, *args: str) -> Result:
    return CliRunner(env={"JOBSYS_TOPOLOGY": topology_path()}).invoke(
        main, ["dlq", *args, "--url", settings.url], catch_exceptions=False, color=True
    )


def _assert_safe(result: Result) -> None:
    assert result.exit_code == 0, result.output
    raw = RAW_CONTROLS.search(result.output)
    assert raw is None, f"raw control character {raw.group()!r} in:\n{result.output}"
    assert "BODY" not in result.output


def test_a_failure_time_far_out_of_range_does_not_break_list_or_show(
    vhost_settings: Settings,
) -> None:
    asyncio.run(apply(vhost_settings))
    odd = {**dead_letter_headers("far-future"), HEADER_FAILED_AT_MS: 2**62}
    asyncio.run(
        plant(
            vhost_settings,
            [
                ("send_email", dead_letter_headers("before")),
                ("send_email", odd),
                ("send_email", dead_letter_headers("after")),
            ],
        )
    )

    listed = dlq(vhost_settings, "list", QUEUE)
    shown = dlq(vhost_settings, "show", QUEUE, "far-future")

    _assert_safe(listed)
    assert "3 jobs shown; 3 in work.dead" in listed.stdout
    [row] = [line for line in listed.stdout.splitlines() if line.startswith("far-future")]
    assert "<out of range: 4611686018427387904>" in row
    _assert_safe(shown)
    assert "jobsys-failed-at-ms: 4611686018427387904 (out of range)" in shown.stdout
    assert job_ids(asyncio.run(drain(vhost_settings, DLQ))) == ["before", "far-future", "after"]


ODD_VALUES: dict[str, Any] = {
    "huge": 2**63 - 1,
    "most-negative": -(2**63),
    "negative-ms-at-ms": -(10**15),
    "text-at-ms": "yesterday",
    "bytes-at-ms": bytearray(b"\x01\x02"),
    "float": 1.5,
    "decimal": decimal.Decimal("3.14"),
    "timestamp": datetime.datetime(2026, 11, 29, 12, 0, tzinfo=datetime.UTC),
    "nothing": None,
    "flag": True,
    "nested": {"list": [1, "two", {"three": bytearray(b"3")}], "esc": "\x1b[31mred"},
    "not-utf8-bytes": bytearray(b"\xff\xfe\x1b[2J"),
    "not-utf8-text": RawText(b"caf\xe9 \xff\x1b]0;pwned\x07"),
    "long": "x" * 10_240,
}


def test_odd_header_values_of_every_type_are_shown_marked_and_break_nothing(
    vhost_settings: Settings,
) -> None:
    asyncio.run(apply(vhost_settings))
    headers = {
        **dead_letter_headers("odd"),
        **ODD_VALUES,
        HEADER_FIRST_FAILED_AT_MS: -1,
        HEADER_REPLAYS: 10**18,
    }
    int_id = {**dead_letter_headers("x"), HEADER_JOB_ID: 12345, HEADER_FAILED_AT_MS: "soon"}
    asyncio.run(plant(vhost_settings, [("send_email", headers), (None, int_id)]))

    listed = dlq(vhost_settings, "list", QUEUE)
    shown = dlq(vhost_settings, "show", QUEUE, "odd")

    _assert_safe(listed)
    assert "2 jobs shown" in listed.stdout
    assert "<int: 12345>" in listed.stdout and "<not a time: soon>" in listed.stdout
    _assert_safe(shown)
    out = shown.stdout
    for line in (
        f"  huge: {2**63 - 1}",
        f"  most-negative: {-(2**63)}",
        "  negative-ms-at-ms: -1000000000000000 (out of range)",
        "  text-at-ms: yesterday",
        "  jobsys-first-failed-at-ms: -1 (1969-12-31 23:59:59 UTC)",
        "replays:      1000000000000000000",
        "  float: 1.5",
        "  decimal: 3.14",
        "  nothing: None",
        "  flag: True",
    ):
        assert line in out, f"{line!r} not in:\n{out}"
    # Bytes show their bad bytes as \xNN, marked as bytes where the reader kept them as bytes.
    for name, shown in (
        ("not-utf8-bytes", "\\xff\\xfe\\x1b[2J"),
        ("not-utf8-text", "caf\\xe9 \\xff\\x1b]0;pwned\\x07"),
        ("bytes-at-ms", "\\x01\\x02"),
    ):
        line = f"  {name}: {shown}"
        assert re.search(f"^{re.escape(line)}( \\(bytes(, not UTF-8)?\\))?$", out, re.M), out
    assert "\\x1b[31mred" in out
    [long_line] = [line for line in out.splitlines() if line.startswith("  long: ")]
    assert long_line.endswith("... (10240 characters; cut)") and len(long_line) < 5000


def test_control_characters_in_headers_never_reach_the_terminal_or_forge_rows_or_headers(
    vhost_settings: Settings,
) -> None:
    asyncio.run(apply(vhost_settings))
    forged_id = "evil\x1b[2J\x1b]0;owned\x07\rFAKE-ROW  send_email  3\nFAKE-LINE"
    headers = {
        **dead_letter_headers(forged_id),
        HEADER_ERROR_TYPE: "Boom\x1b[5m\x9b2J\u202eright-to-left",
        HEADER_ERROR_MESSAGE: "line one\rOVERWRITE\nline two\x08\x08\x1b[8mhidden",
        HEADER_ORIGINAL_QUEUE: "work\u2028forged",
        HEADER_TRACEBACK: "Traceback:\n  jobsys-error-type: forged\r\n\x1b[1mbold\n  File 'x'",
        "name\n  jobsys-attempts: 999": "value",
        "plain": "a\x00b\x7fc",
    }
    asyncio.run(plant(vhost_settings, [("send\x1b[1memail\r", headers)]))

    listed = dlq(vhost_settings, "list", QUEUE)
    shown = dlq(vhost_settings, "show", QUEUE, forged_id)

    _assert_safe(listed)
    lines = listed.stdout.splitlines()
    assert len(lines) == 4, listed.stdout  # the header row, its rule, one job, the summary
    assert lines[0].startswith("JOB ID") and "FAILED AT (UTC)" in lines[0]
    assert lines[2].startswith("evil\\x1b[2J\\x1b]0;owned\\x07\\rFAKE-ROW")
    assert "send\\x1b[1m" in lines[2]  # a long cell is cut to fit, with an ellipsis
    _assert_safe(shown)
    out = shown.stdout
    assert (
        "job id:       evil\\x1b[2J\\x1b]0;owned\\x07\\rFAKE-ROW  send_email  3\\nFAKE-LINE" in out
    )
    assert "  name\\n  jobsys-attempts: 999: value" in out
    # A carriage return is a line break like the newline: both start an indented line.
    assert (
        "  jobsys-error-message:\n    line one\n    OVERWRITE\n"
        "    line two\\x08\\x08\\x1b[8mhidden\n" in out
    )
    assert "  plain: a\\x00b\\x7fc" in out
    # The traceback keeps its lines, each indented past the header lines: none can pass for one.
    assert "  jobsys-traceback:\n    Traceback:\n      jobsys-error-type: forged\n" in out
    header_lines = [line for line in out.splitlines() if re.match(r"  \S", line)]
    names = [line[2:].split(": ", 1)[0].rstrip(":") for line in header_lines]
    assert names.count("jobsys-error-type") == 1
    assert "jobsys-attempts" in names and names.count("jobsys-attempts") == 1


def test_list_and_show_label_their_times_as_utc(vhost_settings: Settings) -> None:
    asyncio.run(apply(vhost_settings))
    asyncio.run(plant(vhost_settings, [("send_email", dead_letter_headers("utc"))]))

    listed = dlq(vhost_settings, "list", QUEUE)
    shown = dlq(vhost_settings, "show", QUEUE, "utc")

    assert "FAILED AT (UTC)" in listed.stdout.splitlines()[0]
    assert "2023-11-14 22:13:29" in listed.stdout
    assert "jobsys-failed-at-ms: 1700000009000 (2023-11-14 22:13:29 UTC)" in shown.stdout


@pytest.mark.parametrize("job_id", ["gone\x1b[2J\nFAKE", "\udcff"], ids=["escape", "surrogate"])
def test_show_of_a_missing_job_names_it_escaped(vhost_settings: Settings, job_id: str) -> None:
    asyncio.run(apply(vhost_settings))

    result = CliRunner(env={"JOBSYS_TOPOLOGY": topology_path()}).invoke(
        main, ["dlq", "show", QUEUE, job_id, "--url", vhost_settings.url], color=True
    )

    assert result.exit_code == 1, result.output
    # The message is red: those two escape sequences are jobsys's own.
    message = result.stderr.replace("\x1b[31m", "").replace("\x1b[0m", "")
    assert RAW_CONTROLS.search(message) is None, message
    assert "is not in work.dead" in message
