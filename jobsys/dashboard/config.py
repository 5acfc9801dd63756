"""What ``jobsys dashboard`` is started with, and the rules that keep it safe to start (pure).

- It binds loopback unless told otherwise; an address another machine can reach needs a token.
- The token guards every page when it is set, and every write action (replay, purge) always:
  without a token the dashboard is read-only.
- A token is printable ASCII without spaces (it travels in a cookie, a form and a header) and
  at least ``MIN_TOKEN_LENGTH`` characters long.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from jobsys.errors import ConfigError

DEFAULT_BIND = "127.0.0.1:8080"
#: Shortest token accepted: 16 characters of a password generator are ~95 bits.
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 512
#: Bytes of a dead-lettered job's body shown with ``--show-payloads``.
DEFAULT_PAYLOAD_LIMIT = 4096
#: Jobs one dead-letter page lists, and the deepest a page may start.
PAGE_SIZE = 50
MAX_BROWSE_DEPTH = 1000
#: Replays one confirmation may do at most (a bigger queue takes several, or the CLI).
MAX_REPLAY = 10_000


@dataclass(frozen=True)
class DashboardConfig:
    """How the dashboard serves: where, with which token, refreshing how often."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    show_payloads: bool = False
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    #: Seconds between two reads of the broker, however many pages poll.
    refresh_s: float = 5.0
    use_management: bool = True

    def __post_init__(self) -> None:
        if self.token is not None:
            check_token(self.token)
        if not is_loopback(self.host) and self.token is None:
            raise ConfigError(
                f"binding {self.host} lets other machines reach the dashboard: give a token "
                "(--token or JOBSYS_DASHBOARD_TOKEN), or bind 127.0.0.1"
            )
        if not math.isfinite(self.refresh_s) or not 1.0 <= self.refresh_s <= 3600:
            raise ConfigError("the refresh interval must be from 1 to 3600 seconds")
        if not 1 <= self.payload_limit <= 1024 * 1024:
            raise ConfigError("the payload limit must be from 1 byte to 1 MiB")

    @property
    def loopback(self) -> bool:
        """True when only this machine can reach the dashboard."""
        return is_loopback(self.host)

    @property
    def writes_enabled(self) -> bool:
        """Replay and purge are offered only when a token can guard them."""
        return self.token is not None


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) taken apart; ``ConfigError`` when it is not."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"--bind must be HOST:PORT, e.g. {DEFAULT_BIND}; got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"--bind needs a port from 1 to 65535; got {text!r}")
    if not host.isascii() or not host.isprintable() or " " in host:
        raise ConfigError(f"--bind has an odd host name: {text!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def check_token(token: str) -> None:
    """``ConfigError`` unless ``token`` is usable: printable ASCII, no spaces, long enough.
    The message never quotes the token."""
    if not token:
        raise ConfigError("the dashboard token is empty; give one of at least 16 characters")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(
            "the dashboard token must be printable ASCII without spaces (it is sent in a "
            "cookie, a form field and an Authorization header)"
        )
    if not MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH:
        raise ConfigError(
            f"the dashboard token must be {MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH} characters "
            f"long (it has {len(token)})"
        )
