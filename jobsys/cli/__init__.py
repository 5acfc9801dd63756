"""The ``jobsys`` command line."""

from __future__ import annotations

import importlib

import click

from jobsys.cli.common import add_verbose_option, configure_logging

# Each command lives in its own module, imported when the command is used: `jobsys worker`
# then loads neither the dashboard, the planner's views nor the DLQ browser (548 -> 512
# modules at a worker's start-up). name -> (module, attribute, modules that add subcommands).
_COMMANDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "topology": ("jobsys.cli.topology", "topology", ("jobsys.cli.teardown",)),
    "publish": ("jobsys.cli.publish", "publish", ()),
    "worker": ("jobsys.cli.worker", "worker", ()),
    "dlq": ("jobsys.cli.dlq", "dlq_group", ()),
    "delays": ("jobsys.cli.delays", "delays_group", ()),
    "status": ("jobsys.cli.status", "status", ()),
    "scheduler": ("jobsys.cli.schedules", "scheduler", ()),
    "schedules": ("jobsys.cli.schedules", "schedules_group", ()),
    "jobs": ("jobsys.cli.jobs", "jobs_group", ()),
    "demo": ("jobsys.cli.demo", "demo", ()),
    "dashboard": ("jobsys.cli.dashboard", "dashboard", ()),
}


class _CommandsOnUse(click.Group):
    """A group that imports a command's module the first time the command is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _COMMANDS:
            module_name, attribute, extensions = _COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module_name), attribute)
            for extension in extensions:
                importlib.import_module(extension)
            add_verbose_option(command)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_CommandsOnUse,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="jobsys")
def main(verbose: int) -> None:
    """jobsys: jobs on RabbitMQ, with the topology, delays and retries kept in the broker."""
    configure_logging(verbose)
