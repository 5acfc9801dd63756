"""``jobsys publish``: publish one job, or one job per line of a JSON Lines file, confirmed.

Prints the job id of a confirmed job on stdout (never a payload), or with ``--json`` one
object per job; problems go to stderr, each with its line number in ``--file`` mode
(``jobsys.cli.publish_file``). Exits 0 only when every job was confirmed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime
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
from jobsys.cli.output import json_option, print_json
from jobsys.cli.publish_file import (
    Defaults,
    LineFormat,
    parse_json,
    publish_file,
    read_lines,
)
from jobsys.cli.publish_wait import DEFAULT_WAIT_S, call_one, check_wait_usage
from jobsys.cli.topology_file import load_or_exit
from jobsys.duration import format_duration, parse_duration_s
from jobsys.errors import ConfigError, JobsysError, MessageError
from jobsys.observe.telemetry_env import telemetry_from_env
from jobsys.publish.producer import JobRequest, Producer
from jobsys.settings import Settings
from jobsys.topology.model import Topology
from jobsys.wire.display import escape, utc_time
from jobsys.wire.envelope import check_header_name

_SAME_ID = (
    "Publishing the same id again queues another copy; handlers that deduplicate by "
    "ctx.job_id run it once."
)


def _moment(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"'{escape(value)}' is not an ISO 8601 moment, e.g. 2026-12-24T09:00:00+01:00"
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(
            f"'{escape(value)}' has no UTC offset, so the moment it names is unknown: add one, "
            "e.g. +01:00 or Z"
        )
    return moment


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
            raise click.BadParameter(f"{escape(item)!r} is not NAME=VALUE")
        try:
            check_header_name(name)
        except MessageError as exc:
            raise click.BadParameter(str(exc)) from None
        headers[name] = value
    return headers


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
@click.option(
    "--lines",
    "line_format",
    type=click.Choice(["payloads", "jobs"]),
    default="payloads",
    show_default=True,
    help="What a line of --file is: a payload, or a job object "
    '{"payload": ..., "job_id", "priority", "delay", "headers"}.',
)
@click.option("--priority", type=click.IntRange(0, 255), help="Priority (default: the job type's).")
@click.option(
    "--delay", callback=_delay, metavar="DURATION", help="Deliver after, e.g. 90s, 1h30m."
)
@click.option(
    "--at",
    "run_at",
    callback=_moment,
    metavar="ISO-8601",
    help="Deliver at this moment, with its UTC offset (e.g. 2026-12-24T09:00:00+01:00); a "
    "moment already past runs now.",
)
@click.option("--job-id", help=f"The job id (default: a new UUID). {_SAME_ID}")
@click.option(
    "--header",
    "headers",
    multiple=True,
    callback=_headers,
    metavar="NAME=VALUE",
    help="A message header (repeatable).",
)
@click.option(
    "--publish-timeout",
    callback=_delay,
    metavar="DURATION",
    help="How long to wait for a confirm. Env: JOBSYS_PUBLISH_TIMEOUT_S (default 30s).",
)
@click.option(
    "--max-payload-bytes",
    type=click.IntRange(1, 128 * 1024 * 1024),
    help="Largest encoded payload. Env: JOBSYS_MAX_PAYLOAD_BYTES (default 1 MiB).",
)
@click.option(
    "--wait",
    is_flag=True,
    default=False,
    help="Wait for the job's outcome and print its result (exit 6: it failed; 7: no outcome "
    "in time, it may still run).",
)
@click.option(
    "--timeout",
    "wait_timeout",
    callback=_delay,
    metavar="DURATION",
    help=f"How long --wait waits (default {DEFAULT_WAIT_S:g}s).",
)
@json_option
@connection_options
def publish(
    job_type: str,
    payload_json: str | None,
    topology_file: str,
    jobs_file: str | None,
    line_format: LineFormat,
    priority: int | None,
    delay: float | None,
    run_at: datetime | None,
    job_id: str | None,
    headers: dict[str, Any],
    publish_timeout: float | None,
    max_payload_bytes: int | None,
    wait: bool,
    wait_timeout: float | None,
    as_json: bool,
    url: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Publish JOB_TYPE with PAYLOAD_JSON, or every line of --file, and wait for the broker
    to confirm each job.

    Prints the job id of each confirmed job (with --file: LINE<TAB>JOB_ID, as each is
    confirmed); refused jobs and jobs whose outcome is unknown go to stderr with their line.
    """
    if payload_json is None and jobs_file is None:
        raise click.UsageError("give the payload as PAYLOAD_JSON (e.g. '{}'), or --file FILE")
    if payload_json is not None and jobs_file is not None:
        raise click.UsageError("give either PAYLOAD_JSON or --file, not both")
    if jobs_file is not None and job_id is not None:
        raise click.UsageError(
            "--job-id names one job; give each line its id with --lines jobs instead"
        )
    if delay is not None and run_at is not None:
        raise click.UsageError("give either --delay or --at, not both")
    check_wait_usage(wait, wait_timeout, jobs_file)
    loaded = load_or_exit(topology_file)
    try:
        settings = build_settings(url, ca_file, insecure).with_overrides(
            publish_timeout_s=publish_timeout, max_payload_bytes=max_payload_bytes
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if payload_json is not None:
        try:
            payload = parse_json(payload_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="PAYLOAD_JSON") from None
        request = JobRequest(job_type, payload, priority, delay, job_id, headers, run_at)
        if wait:
            timeout_s = wait_timeout or DEFAULT_WAIT_S
            code = _guard(lambda: call_one(settings, loaded.topology, request, timeout_s, as_json))
        else:
            code = _guard(lambda: _publish_one(settings, loaded.topology, request, as_json))
    else:
        assert jobs_file is not None
        lines = read_lines(jobs_file)
        defaults = Defaults(priority, delay, headers, run_at)

        async def body() -> int:
            tally = await publish_file(
                settings, loaded.topology, job_type, lines, line_format, defaults, as_json=as_json
            )
            click.secho(tally.summary(), fg="red" if tally.failed else "green", err=True)
            return EXIT_FAILED if tally.failed else EXIT_OK

        code = _guard(body)
    raise click.exceptions.Exit(code)


def _guard(body: Any) -> int:
    """Run a command body; a ``JobsysError`` becomes one message and an exit code."""
    try:
        with telemetry_from_env("jobsys-publish"):
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


async def _publish_one(
    settings: Settings, topology: Topology, request: JobRequest, as_json: bool
) -> int:
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
            run_at=request.run_at,
        )
    due = None
    if receipt.delay_s:
        due = utc_time(int((time.time() + receipt.delay_s) * 1000))
    if as_json:
        print_json(
            {
                "job_id": receipt.job_id,
                "job_type": receipt.job_type,
                "status": "confirmed",
                "delay_s": receipt.delay_s,
                "due_at": None if due is None else due.replace(" ", "T") + "Z",
            }
        )
        return EXIT_OK
    click.echo(escape(receipt.job_id))
    if receipt.delay_s:
        click.echo(f"delayed {format_duration(receipt.delay_s)}: due about {due} UTC", err=True)
    return EXIT_OK
