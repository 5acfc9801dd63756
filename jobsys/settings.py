"""Connection settings and limits. Nothing here reads the environment until ``from_env()``."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from jobsys.errors import ConfigError

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
MiB = 1024 * 1024
KiB = 1024
#: The default limit on a job's own headers, encoded (``max_header_bytes``).
DEFAULT_MAX_HEADER_BYTES = 16 * KiB
#: The highest ``max_header_bytes`` allowed. All of a message's properties, headers included,
#: must fit one frame (frame_max, 128 KiB by default), and a dead-lettered job carries its
#: headers plus the record of its failure (up to ~24 KiB) and jobsys's own headers: 64 KiB
#: leaves that room with a margin (docs/operations.md has the broker's figures).
MAX_HEADER_BYTES_LIMIT = 64 * KiB

# aiormq turns every TLS check off when it sees this query option: refuse it unless asked.
_INSECURE_QUERY_KEYS = frozenset({"no_verify_ssl"})


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``; safe for logs and errors."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        # An unbalanced bracket: the URL cannot be taken apart, and it may hold a password.
        return "<unparseable URL>"
    if password is None:
        return url
    # Rebuild from the raw netloc: parts.username is still percent-encoded, and quoting it
    # again would show a different user name.
    userinfo, _, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Settings:
    """How to reach RabbitMQ, and the limits jobsys enforces before any I/O.

    ``repr()`` and ``str()`` never show the password.
    """

    url: str = DEFAULT_URL
    ca_file: str | None = None
    insecure_tls: bool = False
    connect_timeout_s: float = 10.0
    # How long the first connection attempt may keep retrying a broker that is not up yet.
    connect_deadline_s: float = 30.0
    publish_timeout_s: float = 30.0
    heartbeat_s: int = 20
    max_payload_bytes: int = 1 * MiB
    #: Largest encoded size of the headers a caller gives one job (jobsys's own come on top).
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    management_url: str | None = None
    client_name: str = field(default="jobsys")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` for settings that cannot work."""
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
        except ValueError as exc:
            raise ConfigError(f"broker URL is not valid ({exc}): {mask_url(self.url)}") from exc
        if parts.scheme not in ("amqp", "amqps"):
            raise ConfigError(
                f"broker URL must start with amqp:// or amqps://, got {mask_url(self.url)}"
            )
        if not parts.hostname:
            raise ConfigError(f"broker URL has no host: {mask_url(self.url)}")
        query = dict(parse_qsl(parts.query))
        if _INSECURE_QUERY_KEYS & query.keys() and not self.insecure_tls:
            raise ConfigError(
                "the broker URL turns TLS verification off (no_verify_ssl); pass "
                "--insecure (JOBSYS_INSECURE_TLS=1) if you really mean it"
            )
        if self.ca_file is not None and parts.scheme != "amqps":
            raise ConfigError("a CA file was given but the broker URL is not amqps://")
        if self.ca_file is not None and not os.path.isfile(self.ca_file):
            raise ConfigError(f"CA file not found: {self.ca_file}")
        for name in ("connect_timeout_s", "connect_deadline_s", "publish_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        if self.max_payload_bytes <= 0:
            raise ConfigError("max_payload_bytes must be positive")
        if not 0 < self.max_header_bytes <= MAX_HEADER_BYTES_LIMIT:
            raise ConfigError(
                f"max_header_bytes must be from 1 to {MAX_HEADER_BYTES_LIMIT} bytes: a job's "
                "headers and its dead-letter record must fit one AMQP frame"
            )
        if not 0 <= self.heartbeat_s <= 600:
            raise ConfigError("heartbeat_s must be between 0 and 600")

    @property
    def masked_url(self) -> str:
        """The broker URL with the password masked."""
        return mask_url(self.url)

    @property
    def vhost(self) -> str:
        """The virtual host named by the URL (``/`` when the path is empty)."""
        path = urlsplit(self.url).path
        return "/" if path in ("", "/") else _unquote(path[1:])

    def with_overrides(self, **changes: object) -> Settings:
        """Return a copy with ``changes`` applied (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return (
            f"Settings(url={self.masked_url!r}, ca_file={self.ca_file!r}, "
            f"insecure_tls={self.insecure_tls}, heartbeat_s={self.heartbeat_s}, "
            f"max_payload_bytes={self.max_payload_bytes})"
        )

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``JOBSYS_*`` environment variables (explicit, never at import)."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, object] = {}
        if "JOBSYS_URL" in env:
            kwargs["url"] = env["JOBSYS_URL"]
        if env.get("JOBSYS_CA_FILE"):
            kwargs["ca_file"] = env["JOBSYS_CA_FILE"]
        if env.get("JOBSYS_INSECURE_TLS", "").lower() in ("1", "true", "yes"):
            kwargs["insecure_tls"] = True
        if env.get("JOBSYS_MANAGEMENT_URL"):
            kwargs["management_url"] = env["JOBSYS_MANAGEMENT_URL"]
        for key, name, kind in (
            ("JOBSYS_CONNECT_TIMEOUT_S", "connect_timeout_s", float),
            ("JOBSYS_CONNECT_DEADLINE_S", "connect_deadline_s", float),
            ("JOBSYS_PUBLISH_TIMEOUT_S", "publish_timeout_s", float),
            ("JOBSYS_HEARTBEAT_S", "heartbeat_s", int),
            ("JOBSYS_MAX_PAYLOAD_BYTES", "max_payload_bytes", int),
            ("JOBSYS_MAX_HEADER_BYTES", "max_header_bytes", int),
        ):
            if env.get(key):
                try:
                    kwargs[name] = kind(env[key])
                except ValueError as exc:
                    raise ConfigError(f"{key} must be a number, got {env[key]!r}") from exc
        return cls(**kwargs)  # type: ignore[arg-type]


def _unquote(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)
