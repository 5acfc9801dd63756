"""Serving the dashboard with uvicorn, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from jobsys.dashboard.app import DashboardApp
from jobsys.dashboard.config import DashboardConfig
from jobsys.errors import ConfigError

log = logging.getLogger(__name__)


def serve(app: DashboardApp, config: DashboardConfig) -> None:
    """Serve ``app`` on the configured address; ``ConfigError`` when it cannot be bound."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            lifespan="on",
        )
    )
    asyncio.run(_serve(server, config))


async def _serve(server: uvicorn.Server, config: DashboardConfig) -> None:
    # Bind first, so a taken port is one clear error rather than uvicorn's exit.
    import socket

    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot serve the dashboard on {config.host}:{config.port}: {exc.strerror}"
        ) from None
    await server.serve(sockets=[sock])
