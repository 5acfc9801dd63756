"""``jobsys jobs cancel ID``: cancel a job that has not started; ``jobs show ID``: its history."""

from __future__ import annotations

import click

from jobsys.cli.common import build_settings, connection_options, run, topology_option
from jobsys.cli.jobs_show import show_command, tail_command
from jobsys.cli.topology_file import load_or_exit
from jobsys.publish.producer import Producer
from jobsys.wire.display import escape
from jobsys.wire.envelope import check_job_id


@click.group(name="jobs")
def jobs_group() -> None:
    """Act on single jobs by their job id."""


@jobs_group.command(name="cancel")
@click.argument("job_id")
@topology_option(required=True, help="The topology file (its namespace names the stream).")
@connection_options
@run
async def cancel_command(
    job_id: str, topology_file: str, url: str | None, ca_file: str | None, insecure: bool
) -> None:
    """Cancel job JOB_ID if it has not started: workers ack it without running it when it
    arrives (waiting, delayed, or fired later by a schedule). jobsys keeps no index of jobs,
    so it cannot tell whether the job exists or already ran; the cancellation is recorded
    either way (for as long as delays.max_delay). A running job is not stopped."""
    checked = check_job_id(job_id)  # a malformed or oversized id: exit 2, nothing sent
    loaded = load_or_exit(topology_file)
    settings = build_settings(url, ca_file, insecure)
    async with Producer(settings, loaded) as producer:
        await producer.cancel(checked)
    click.echo(
        f"cancellation of job {escape(checked)} recorded; workers will not run it if it has "
        "not started"
    )


show_command(jobs_group)
tail_command(jobs_group)
