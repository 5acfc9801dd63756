"""The ``jobsys`` command line."""

from __future__ import annotations

import click

from jobsys.cli.common import add_verbose_option, configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="jobsys")
def main(verbose: int) -> None:
    """jobsys: jobs on RabbitMQ, with the topology, delays and retries kept in the broker."""
    configure_logging(verbose)


def _register() -> None:
    # Each command group lives in its own module; importing them here keeps `jobsys.cli`
    # the only place that knows them all.
    from jobsys.cli import dashboard as dashboard_cli
    from jobsys.cli import delays as delays_cli
    from jobsys.cli import demo as demo_cli
    from jobsys.cli import dlq as dlq_cli
    from jobsys.cli import jobs as jobs_cli
    from jobsys.cli import publish as publish_cli
    from jobsys.cli import schedules as schedules_cli
    from jobsys.cli import status as status_cli
    from jobsys.cli import teardown as _teardown_cli  # noqa: F401  (adds `topology delete`)
    from jobsys.cli import topology as topology_cli
    from jobsys.cli import worker as worker_cli

    main.add_command(topology_cli.topology)
    main.add_command(publish_cli.publish)
    main.add_command(worker_cli.worker)
    main.add_command(dlq_cli.dlq_group)
    main.add_command(delays_cli.delays_group)
    main.add_command(status_cli.status)
    main.add_command(schedules_cli.scheduler)
    main.add_command(schedules_cli.schedules_group)
    main.add_command(jobs_cli.jobs_group)
    main.add_command(demo_cli.demo)
    main.add_command(dashboard_cli.dashboard)
    for command in main.commands.values():
        add_verbose_option(command)


_register()
