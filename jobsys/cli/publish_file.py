"""``jobsys publish --file``: one job per line of a JSON Lines file, each result as it is known.

A line is a payload (``--lines payloads``, the default) or a job (``--lines jobs``): an object
with ``payload`` and optionally ``job_id``, ``priority``, ``delay`` and ``headers``, which
override the command's options for that line. Every job gets its id before it is sent, so a
job whose outcome is unknown can be resubmitted with its id.

Each result names its input line: ``LINE<TAB>JOB_ID`` on stdout for a confirmed job,
``line N: ...`` on stderr for a refused one or one whose outcome is unknown; with ``--json``,
one object per line on stdout for every job. Results stream as the broker confirms them, so
they come roughly, not strictly, in line order.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import click

from jobsys.cli.output import print_json_line
from jobsys.duration import parse_duration_s
from jobsys.errors import MessageError, PublishOutcomeUnknown
from jobsys.publish.producer import JobRequest, Producer, PublishResult, Receipt
from jobsys.settings import Settings
from jobsys.topology.model import Topology
from jobsys.wire.display import escape
from jobsys.wire.envelope import check_header_name, new_job_id

LineFormat = Literal["payloads", "jobs"]
#: Jobs read and handed to ``publish_many`` at a time: bounds memory for a file of any size.
CHUNK = 1000
_JOB_KEYS = frozenset({"payload", "job_id", "priority", "delay", "headers"})


@dataclass(frozen=True)
class Defaults:
    """What the command's options say for every line."""

    priority: int | None
    delay_s: float | None
    headers: dict[str, Any]
    run_at: datetime | None = None  # --at: the moment every line is due (a line's delay wins)


@dataclass
class Tally:
    """How the jobs of a file fared."""

    confirmed: int = 0
    refused: int = 0
    unknown: int = 0
    unknown_ids: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.refused + self.unknown

    def summary(self) -> str:
        text = f"{self.confirmed} confirmed, {self.refused} refused, {self.unknown} unknown"
        if self.unknown:
            text += (
                "; a job with an unknown outcome may be queued: publishing it again with its "
                "job id may queue a second copy, which handlers that deduplicate by "
                "ctx.job_id run once"
            )
        return text


def read_lines(path: str) -> list[bytes]:
    """The lines of ``path`` (``-``: stdin) as bytes, each decoded on its own later so one bad
    line cannot stop the others. Split on \\n, \\r\\n and \\r only: JSON text may hold
    other line separators (U+2028) inside a string."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as handle:
                data = handle.read()
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror}", param_hint="--file"
        ) from None
    return data.splitlines()


def parse_json(text: str) -> Any:
    """``text`` parsed as JSON; ``ValueError`` says why it is not (nested too deeply too)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def request_of(line: bytes, job_type: str, fmt: LineFormat, defaults: Defaults) -> JobRequest:
    """The job one line asks for; ``ValueError`` says why the line is not one."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    try:
        value = parse_json(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if fmt == "payloads":
        return JobRequest(
            job_type,
            value,
            defaults.priority,
            defaults.delay_s,
            new_job_id(),
            defaults.headers,
            defaults.run_at,
        )
    return _job_line(value, job_type, defaults)


def _job_line(value: Any, job_type: str, defaults: Defaults) -> JobRequest:
    if not isinstance(value, dict):
        raise ValueError(f"a job line is a JSON object with 'payload', not {_json_type(value)}")
    if "payload" not in value:
        raise ValueError(
            "a job line needs 'payload' (for lines that are payloads: --lines payloads)"
        )
    unknown = sorted(set(value) - _JOB_KEYS)
    if unknown:
        raise ValueError(
            f"unknown key {escape(unknown[0])!r} (a job line may hold: "
            f"{', '.join(sorted(_JOB_KEYS))})"
        )
    job_id = value.get("job_id", new_job_id())
    if not isinstance(job_id, str):
        raise ValueError(f"'job_id' must be a string, not {_json_type(job_id)}")
    priority = value.get("priority", defaults.priority)
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise ValueError(f"'priority' must be an integer, not {_json_type(priority)}")
    delay_s, run_at = defaults.delay_s, defaults.run_at
    if "delay" in value:
        delay_s = parse_duration_s(value["delay"])  # its ValueError says what to write
        run_at = None
    headers = dict(defaults.headers)
    headers.update(_headers(value.get("headers", {})))
    return JobRequest(job_type, value["payload"], priority, delay_s, job_id, headers, run_at)


def _headers(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"'headers' must be an object, not {_json_type(value)}")
    for name in value:
        try:
            check_header_name(name)
        except MessageError as exc:
            raise ValueError(str(exc)) from None
    return value


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


async def publish_file(
    settings: Settings,
    topology: Topology,
    job_type: str,
    lines: list[bytes],
    fmt: LineFormat,
    defaults: Defaults,
    *,
    as_json: bool,
) -> Tally:
    """Publish a job per non-blank line, printing each result as it is known."""
    tally = Tally()
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    async with Producer(settings, topology) as producer:
        with _Progress(len(numbered)) as bar:
            for start in range(0, len(numbered), CHUNK):
                chunk: list[tuple[int, JobRequest]] = []
                for number, line in numbered[start : start + CHUNK]:
                    try:
                        chunk.append((number, request_of(line, job_type, fmt, defaults)))
                    except ValueError as exc:
                        _report(tally, number, None, str(exc), "refused", as_json)
                        bar.update(1)

                def heard(index: int, result: PublishResult, chunk: Any = chunk) -> None:
                    number, request = chunk[index]
                    _result(tally, number, request, result, as_json)
                    bar.update(1)

                await producer.publish_many([r for _, r in chunk], on_result=heard)
    return tally


def _result(
    tally: Tally, number: int, request: JobRequest, result: PublishResult, as_json: bool
) -> None:
    if isinstance(result, Receipt):
        tally.confirmed += 1
        if as_json:
            print_json_line({"line": number, "status": "confirmed", "job_id": result.job_id})
        else:
            click.echo(f"{number}\t{escape(result.job_id)}")
        return
    status: Literal["refused", "unknown"] = (
        "unknown" if isinstance(result, PublishOutcomeUnknown) else "refused"
    )
    _report(tally, number, request.job_id, str(result), status, as_json)


def _report(
    tally: Tally,
    number: int,
    job_id: str | None,
    reason: str,
    status: Literal["refused", "unknown"],
    as_json: bool,
) -> None:
    if status == "unknown":
        tally.unknown += 1
    else:
        tally.refused += 1
    if as_json:
        print_json_line({"line": number, "status": status, "job_id": job_id, "error": reason})
        return
    who = f" (job id {escape(job_id)})" if job_id is not None and status == "unknown" else ""
    click.echo(f"line {number}: {status}{who}: {escape(reason)}", err=True)


class _Progress:
    """A progress bar on stderr when it is a terminal (result lines print above it); nothing
    in a log file or a pipe."""

    def __init__(self, length: int) -> None:
        self._progress: Any = None
        self._task: Any = None
        if sys.stderr.isatty():
            from rich.progress import Progress

            from jobsys.cli.output import console

            # Result lines print above the bar when both go to the terminal; stdout sent to a
            # file or a pipe is left alone.
            self._progress = Progress(
                console=console(stderr=True),
                transient=True,
                redirect_stdout=sys.stdout.isatty(),
            )
            self._task = self._progress.add_task("publishing", total=length)

    def update(self, steps: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, steps)

    def __enter__(self) -> _Progress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
