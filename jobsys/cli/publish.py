"""``jobsys publish``: publish one job, or one job per line of a JSON Lines file, confirmed.

Prints the job id of every confirmed job on stdout (never a payload); problems go to stderr,
each with its line number in ``--file`` mode. Exits 0 only when every job was confirmed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from jobsys.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    build_settings,
    connection_options,
    exit_code_for,
    fail,
    topology_option,
)
from jobsys.cli.topology import load_or_exit
from jobsys.duration import parse_duration_s
from jobsys.errors import JobsysError, MessageError, PublishOutcomeUnknown
from jobsys.publish.producer import JobRequest, Producer, Receipt
from jobsys.settings import Settings
from jobsys.topology.model import Topology
from jobsys.wire.display import escape
from jobsys.wire.envelope import check_header_name

#: Jobs handed to ``publish_many`` at a time in ``--file`` mode (the progress bar's step).
CHUNK = 500


@dataclass(frozen=True)
class _Options:
    priority: int | None
    delay_s: float | None
    headers: dict[str, Any]


def _delay(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration_s(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _headers(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE")
        try:
            check_header_name(name)
        except MessageError as exc:
            raise click.BadParameter(str(exc)) from None
        headers[name] = value
    return headers


def _payload(text: str) -> Any:
    """``text`` parsed as JSON; ``ValueError`` says why it is not (nested too deeply too)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


@click.command("publish")
@click.argument("job_type")
@click.argument("payload_json", required=False)
@topology_option(required=True, help="The topology file that defines the job type.")
@click.option(
    "--file",
    "jobs_file",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="Publish one job per line of this JSON Lines file (- for stdin); blank lines skipped.",
)
@click.option("--priority", type=click.IntRange(0, 255), help="Priority (default: the job type's).")
@click.option("--delay", callback=_delay, metavar="DURATION", help="Deliver after, e.g. 90s, 5m.")
@click.option("--job-id", help="The job id (default: a new UUID); resubmitting with it is safe.")
@click.option(
    "--header",
    "headers",
    multiple=True,
    callback=_headers,
    metavar="NAME=VALUE",
    help="A message header (repeatable).",
)
@connection_options
def publish(
    job_type: str,
    payload_json: str | None,
    topology_file: str,
    jobs_file: str | None,
    priority: int | None,
    delay: float | None,
    job_id: str | None,
    headers: dict[str, Any],
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Publish JOB_TYPE with PAYLOAD_JSON, or every line of --file, and wait for the broker
    to confirm each job; prints the job ids of the confirmed jobs."""
    if payload_json is None and jobs_file is None:
        raise click.UsageError("give the payload as PAYLOAD_JSON (e.g. '{}'), or --file FILE")
    if payload_json is not None and jobs_file is not None:
        raise click.UsageError("give either PAYLOAD_JSON or --file, not both")
    if jobs_file is not None and job_id is not None:
        raise click.UsageError("--job-id names one job; it cannot be used with --file")
    loaded = load_or_exit(topology_file)
    settings = build_settings(url, ca_file, insecure)
    options = _Options(priority, delay, headers)
    if payload_json is not None:
        try:
            payload = _payload(payload_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="PAYLOAD_JSON") from None
        request = JobRequest(job_type, payload, priority, delay, job_id, headers)
        code = _guard(lambda: _publish_one(settings, loaded.topology, request))
    else:
        assert jobs_file is not None
        lines = _read_lines(jobs_file)
        code = _guard(lambda: _publish_file(settings, loaded.topology, job_type, lines, options))
    raise click.exceptions.Exit(code)


def _guard(body: Any) -> int:
    """Run a command body; a ``JobsysError`` becomes one message and an exit code."""
    # Imported here: the OpenTelemetry SDK is only loaded by a command that publishes.
    from jobsys.observe.telemetry_setup import configure_from_env

    try:
        with configure_from_env("jobsys-publish"):
            return int(asyncio.run(body()))
    except JobsysError as exc:
        # A bad job is bad input (2); the rest as every command maps them.
        code = EXIT_INVALID if isinstance(exc, MessageError) else exit_code_for(exc)
        return fail(f"error: {exc}", code)
    except KeyboardInterrupt:
        click.secho(
            "interrupted; jobs not reported as confirmed may or may not be queued", err=True
        )
        return 130


async def _publish_one(settings: Settings, topology: Topology, request: JobRequest) -> int:
    producer = Producer(settings, topology)
    producer.prepare(request)  # refuse a bad job before connecting
    async with producer:
        receipt = await producer.publish(
            request.job_type,
            request.payload,
            priority=request.priority,
            delay_s=request.delay_s,
            job_id=request.job_id,
            headers=request.headers,
        )
    click.echo(escape(receipt.job_id))
    return EXIT_OK


def _read_lines(path: str) -> list[bytes]:
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


def _parse_line(line: bytes) -> Any:
    """One line of a JSON Lines file parsed; ``ValueError`` says why it cannot be."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    try:
        return _payload(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None


async def _publish_file(
    settings: Settings, topology: Topology, job_type: str, lines: list[bytes], options: _Options
) -> int:
    numbered: list[tuple[int, JobRequest]] = []
    failures = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            payload = _parse_line(line)
        except ValueError as exc:
            failures += _report(number, str(exc))
            continue
        request = JobRequest(
            job_type, payload, options.priority, options.delay_s, None, options.headers
        )
        numbered.append((number, request))
    confirmed = unknown = 0
    async with Producer(settings, topology) as producer:
        with click.progressbar(
            length=len(numbered), label="publishing", file=sys.stderr, show_pos=True
        ) as bar:
            for start in range(0, len(numbered), CHUNK):
                chunk = numbered[start : start + CHUNK]
                results = await producer.publish_many([request for _, request in chunk])
                for (number, _), result in zip(chunk, results, strict=True):
                    if isinstance(result, Receipt):
                        confirmed += 1
                        click.echo(escape(result.job_id))
                    else:
                        failures += _report(number, str(result))
                        unknown += isinstance(result, PublishOutcomeUnknown)
                bar.update(len(chunk))
    summary = f"{confirmed} confirmed, {failures} failed"
    if unknown:
        summary += f" ({unknown} with unknown outcome: resubmitting them is safe)"
    click.secho(summary, fg="green" if failures == 0 else "red", err=True)
    return EXIT_OK if failures == 0 else EXIT_FAILED


def _report(number: int, reason: str) -> int:
    click.echo(f"line {number}: {escape(reason)}", err=True)
    return 1
