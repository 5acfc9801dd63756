"""Connection settings and limits. Nothing here reads the environment until ``from_env()``."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

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

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
#: Characters that end the user info early (or break the parse) when written unencoded, with
#: the percent-encoding to write instead.
_USERINFO_BREAKERS = {"/": "%2F", "?": "%3F", "#": "%23", "[": "%5B", "]": "%5D"}
# urlsplit silently drops tab, CR and LF anywhere and strips spaces and controls at the ends:
# the password it reads would not be the one written.
_UNSAFE_CHARACTER = re.compile(r"[\x00-\x20\x7f]")
_AUTHORITY_END = re.compile(r"[/?#]")
#: Where one broker URL of a list ends and the next begins: a comma (spaces around it allowed)
#: right before ``amqp://`` or ``amqps://``. A comma anywhere else (in a password, say) belongs
#: to the URL it is in; a password that holds ",amqp://" must write the comma as %2C.
_NEXT_URL = re.compile(r" *, *(?=amqps?://)")
_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}


def split_urls(text: str) -> list[str]:
    """The broker URLs in ``text``: one URL, or several separated by commas
    (``amqp://u:p@node1/,amqp://u:p@node2/``). Nothing is checked here (``Settings`` does);
    an empty entry comes back as ``""`` or as an entry ending in ``,``."""
    return _NEXT_URL.split(text)


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``; safe for logs and errors.

    The URL is not parsed as a URL: whatever could be a password is hidden even when the URL
    is malformed. That is the text between the user name and the **last** ``@``, so a password
    holding an unencoded ``#``, ``/``, ``?`` or ``[`` (which a parser reads as the end of the
    user info) is hidden too. Without an ``@``, a "port" that is no number is hidden (a
    password whose ``@host`` is missing). A list of broker URLs is masked URL by URL.
    """
    entries = split_urls(url)
    if len(entries) > 1:
        return ",".join(mask_url(entry) for entry in entries)
    start, end = _hidden_span(url)
    return url if start == end else f"{url[:start]}***{url[end:]}"


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The text ``mask_url`` hides in ``url``, as written and percent-decoded: what to scrub
    from a message that may quote it."""
    if not url:
        return ()
    found: set[str] = set()
    # The whole text as one URL too: whatever the split got wrong is hidden all the same.
    for entry in {url, *split_urls(url)}:
        start, end = _hidden_span(entry)
        written = entry[start:end]
        found |= {written, unquote(written)}
    return tuple(sorted(found - {""}, key=len, reverse=True))


def _hidden_span(url: str) -> tuple[int, int]:
    """Where the secret part of ``url`` may be (``start == end`` when there is none)."""
    start, has_authority = _authority_start(url)
    at = url.rfind("@", start)
    if not has_authority:
        # Nothing to take apart: everything between the scheme and the '@' may be secret.
        return (start, at) if at >= 0 else (start, len(url))
    if at >= 0:
        colon = url.find(":", start, at)
        return (colon + 1, at) if colon >= 0 else (at, at)
    authority = _AUTHORITY_END.split(url[start:], maxsplit=1)[0]
    colon = authority.rfind(":")
    port = authority[colon + 1 :] if colon >= 0 else ""
    if port and "]" not in port and not (port.isascii() and port.isdigit()):
        return (start + colon + 1, len(url))
    return (start, start)


def _authority_start(url: str) -> tuple[int, bool]:
    """Where the authority (``user:password@host:port``) begins: after ``scheme://``. False
    when there is no ``//``; the index is then where the text after the scheme begins."""
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 0
    if url.startswith("//", start):
        return start + 2, True
    return start, False


def parse_url(url: str, what: str, schemes: tuple[str, ...]) -> SplitResult:
    """``url`` taken apart, or ``ConfigError`` saying what is wrong with it (``what`` names it,
    e.g. "broker URL"); a message shows the URL only masked.

    Refused, besides a wrong scheme, no host or a bad port: spaces and control characters
    (which urlsplit drops silently), and user info that a parser would read differently from
    what was meant (``#``, ``/``, ``?``, ``[``, ``]`` unencoded in the user name or password,
    or an ``@`` after the host).
    """
    shown = mask_url(url)
    unsafe = _UNSAFE_CHARACTER.search(url)
    if unsafe is not None:
        raise ConfigError(
            f"{what} holds a space or control character (U+{ord(unsafe.group()):04X}); "
            "percent-encode it (a space as %20, a newline as %0A)"
        )
    _check_userinfo(url, what, shown)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError as exc:
        # The port text may be a password that lost its '@host': never quote it.
        reason = str(exc) if "out of range" in str(exc) else "its port is not a number"
        raise ConfigError(f"{what} is not valid ({reason}): {shown}") from None
    if parts.scheme not in schemes:
        expected = " or ".join(f"{scheme}://" for scheme in schemes)
        raise ConfigError(f"{what} must start with {expected}, got {shown}")
    if not parts.hostname:
        raise ConfigError(f"{what} has no host: {shown}")
    return parts


def _check_userinfo(url: str, what: str, shown: str) -> None:
    start, has_authority = _authority_start(url)
    if not has_authority:
        return  # the scheme check refuses it
    authority = _AUTHORITY_END.split(url[start:], maxsplit=1)[0]
    at = url.rfind("@", start)
    if at > start + len(authority):
        # A '/', '?' or '#' before the last '@': the password holds one unencoded, or the path
        # or query holds an '@'. Either way a parser would read another host than meant.
        found = _breakers(url[start:at])
        where = "before its last '@' would end the user info early and name another host"
        advice = "in the user name or password ({}), or write an '@' in the vhost or query as %40"
    else:
        found = _breakers(url[start : max(at, start)])
        if not {"[", "]"} & set(found):
            return
        where = "in its user name or password would break the URL apart"
        advice = "({})"
    chars = ", ".join(repr(char) for char in found)
    hints = ", ".join(f"{char!r} as {_USERINFO_BREAKERS[char]}" for char in found)
    them = "them" if len(found) > 1 else "it"
    raise ConfigError(
        f"{what} is ambiguous: {chars} {where}; percent-encode {them} {advice.format(hints)}: "
        f"{shown}"
    )


def _breakers(text: str) -> list[str]:
    return [char for char in _USERINFO_BREAKERS if char in text]


def check_broker_urls(text: str) -> list[SplitResult]:
    """Each broker URL of ``text`` taken apart, or ``ConfigError``: an empty entry, a URL
    ``parse_url`` refuses, a list that mixes amqp:// and amqps:// (a TLS client must not fall
    back to plain text when its node dies), names different vhosts, or names a node twice."""
    entries = split_urls(text)
    several = len(entries) > 1
    parts: list[SplitResult] = []
    for number, entry in enumerate(entries, start=1):
        what = f"broker URL {number} of {len(entries)}" if several else "broker URL"
        if not entry or entry.endswith(","):
            # A vhost that really ends in a comma is written %2C.
            raise ConfigError(
                f"{what} is empty (two commas in a row, or a comma at an end); separate broker "
                "URLs with single commas: amqp://user:pass@node1/,amqp://user:pass@node2/"
            )
        parts.append(parse_url(entry, what, ("amqp", "amqps")))
    if len({part.scheme for part in parts}) > 1:
        raise ConfigError(
            "the broker URLs mix amqp:// and amqps://: a client whose TLS node died would log in "
            "over plain text; use amqps:// for every node (or amqp:// for every node)"
        )
    if len({_vhost_of(part.path) for part in parts}) > 1:
        raise ConfigError(
            "the broker URLs name different vhosts; the nodes of one cluster share the vhost, so "
            "give every URL the same one"
        )
    seen: set[tuple[str, int]] = set()
    for part in parts:
        node = ((part.hostname or "").lower(), part.port or _DEFAULT_PORTS[part.scheme])
        if node in seen:
            raise ConfigError(
                f"the broker URLs name the node {node[0]}:{node[1]} twice; list each node once"
            )
        seen.add(node)
    return parts


def _vhost_of(path: str) -> str:
    return "/" if path in ("", "/") else unquote(path[1:])


@dataclass(frozen=True)
class Settings:
    """How to reach RabbitMQ, and the limits jobsys enforces before any I/O.

    ``repr()`` and ``str()`` never show the password.
    """

    url: str = DEFAULT_URL
    ca_file: str | None = None
    insecure_tls: bool = False
    #: How long one connection attempt (the first connect or a reconnect) may take.
    connect_timeout_s: float = 5.0
    # How long the first connection attempt may keep retrying a broker that is not up yet.
    connect_deadline_s: float = 30.0
    #: The pause after the first failed connect or reconnect attempt in a row; it doubles
    #: with every further failure up to ``reconnect_max_s`` (``jobsys.broker.reconnect``).
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 5.0
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
        parts = check_broker_urls(self.url)
        if self.management_url is not None:
            parse_url(self.management_url, "management URL", ("http", "https"))
        for entry in parts:
            if _INSECURE_QUERY_KEYS & dict(parse_qsl(entry.query)).keys() and not self.insecure_tls:
                raise ConfigError(
                    "the broker URL turns TLS verification off (no_verify_ssl); pass "
                    "--insecure (JOBSYS_INSECURE_TLS=1) if you really mean it"
                )
        if self.ca_file is not None and parts[0].scheme != "amqps":
            raise ConfigError("a CA file was given but the broker URL is not amqps://")
        if self.ca_file is not None and not os.path.isfile(self.ca_file):
            raise ConfigError(f"CA file not found: {self.ca_file}")
        for name in (
            "connect_timeout_s",
            "connect_deadline_s",
            "publish_timeout_s",
            "reconnect_min_s",
            "reconnect_max_s",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ConfigError("reconnect_max_s must not be below reconnect_min_s")
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
        """The broker URL (or URLs, comma-separated) with the passwords masked."""
        return mask_url(self.url)

    @property
    def urls(self) -> tuple[str, ...]:
        """One URL per broker node, in the order given (one for a single broker)."""
        return tuple(split_urls(self.url))

    def for_node(self, url: str) -> Settings:
        """These settings narrowed to one of ``urls``: what one connection attempt uses."""
        if url not in self.urls:
            raise ConfigError("not one of the broker URLs of these settings")
        return replace(self, url=url)

    @property
    def vhost(self) -> str:
        """The virtual host named by the URL (``/`` when the path is empty); every URL of a
        list names the same one (``validate`` sees to it)."""
        return _vhost_of(urlsplit(self.urls[0]).path)

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
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``JOBSYS_*`` environment variables (explicit, never at import).

        ``overrides`` (command-line options; None values are ignored) replace what the
        environment says *before* the settings are checked, so ``insecure_tls=True`` allows a
        ``no_verify_ssl`` URL from ``JOBSYS_URL`` and ``url=...`` replaces a bad one.
        """
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
        kwargs.update((name, value) for name, value in overrides.items() if value is not None)
        return cls(**kwargs)  # type: ignore[arg-type]
