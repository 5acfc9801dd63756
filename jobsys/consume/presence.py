"""How a worker presents itself: the name its connection carries on the broker (so the
connection list and the dashboard tell workers apart), and the one-line banner it logs when it
is ready."""

from __future__ import annotations

import os
import socket
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version

from jobsys.broker.connection import BrokerConnection
from jobsys.consume.pools import Pool, describe_pools
from jobsys.settings import Settings

__all__ = ["banner", "worker_settings"]


def banner(
    pools: list[Pool], threads: int | None, settings: Settings, connection: BrokerConnection
) -> str:
    """One line an operator reads at a glance: what this process serves, and where."""
    return (
        f"jobsys {_jobsys_version()} worker ready (pid {os.getpid()}): {describe_pools(pools)}; "
        f"{f'{threads} handler threads' if threads is not None else 'no sync handlers'}; "
        f"broker {connection.node} "
        f"(RabbitMQ {'.'.join(map(str, connection.server_version))}"
        f"{_of_nodes(settings)})"
    )


def _of_nodes(settings: Settings) -> str:
    count = len(settings.urls)
    return f"; node of {count} given, fails over to the others" if count > 1 else ""


def worker_settings(settings: Settings) -> Settings:
    """``settings`` with the connection named after this worker (``jobsys worker HOST pid
    N``), so the broker's connection list (and the dashboard's workers page) tells workers
    apart; a name the user chose is kept."""
    if settings.client_name != "jobsys":
        return settings
    return settings.with_overrides(
        client_name=f"jobsys worker {socket.gethostname()} pid {os.getpid()}"
    )


def _jobsys_version() -> str:
    try:
        return distribution_version("jobsys")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(source)"
