"""The dashboard's guards: who may look, who may act, and what a browser may do with a page.

- ``Guard`` checks the token: from a login (a session cookie, HttpOnly and SameSite=Strict) or
  an ``Authorization: Bearer`` header (scripts, a Prometheus scrape). Comparison is in constant
  time; failed logins are throttled for everyone, so guessing is slow even from many clients.
- ``CsrfTokens`` hands out one-time tokens, each bound to a session and to one action on one
  queue, valid for ten minutes: a forged form lacks one, a replayed form's was spent.
- ``security_headers`` and ``loopback_hosts`` wrap the app: a strict Content-Security-Policy
  (scripts and styles from this server only, no framing), ``no-store`` on everything dynamic,
  and, on a loopback bind, a refusal of any Host header that is not a loopback name (a web page
  that rebinds its own name to 127.0.0.1 cannot read the dashboard).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from jobsys.dashboard.config import is_loopback

SESSION_COOKIE = "jobsys_dashboard"
SESSION_TTL_S = 12 * 3600.0
CSRF_TTL_S = 600.0
_MAX_SESSIONS = 256
_MAX_CSRF = 1024
#: Failed logins allowed per window before every login waits for the window to pass.
_FAILURES_PER_WINDOW = 10
_FAILURE_WINDOW_S = 60.0

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def same_token(given: str | None, expected: str) -> bool:
    """True when ``given`` is ``expected``, compared in constant time (any bytes welcome)."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


class _Expiring:
    """Keys with an expiry, oldest dropped first beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def add(self, key: str, value: str, ttl_s: float) -> None:
        self.items[key] = (time.monotonic() + ttl_s, value)
        while len(self.items) > self.limit:
            self.items.popitem(last=False)

    def get(self, key: str) -> str | None:
        found = self.items.get(key)
        if found is None:
            return None
        expires, value = found
        if time.monotonic() > expires:
            del self.items[key]
            return None
        return value


class Guard:
    """Who may see the pages and who may act: the token, logins, and their throttle."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self._sessions = _Expiring(_MAX_SESSIONS)
        self._failures: list[float] = []

    @property
    def open(self) -> bool:
        """True when no token is set: pages are readable without one (loopback only)."""
        return self.token is None

    def session_of(self, conn: HTTPConnection) -> str | None:
        """The caller's session key: a valid login cookie, ``bearer`` for a valid token in
        the Authorization header, ``open`` when no token is set; None otherwise."""
        if self.token is None:
            return "open"
        cookie = conn.cookies.get(SESSION_COOKIE)
        if cookie and self._sessions.get(cookie) is not None:
            return cookie
        scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and same_token(credentials.strip(), self.token):
            return "bearer"
        return None

    def throttled(self) -> bool:
        """True while too many logins failed lately (for everyone: guessing stays slow)."""
        now = time.monotonic()
        self._failures = [t for t in self._failures if now - t < _FAILURE_WINDOW_S]
        return len(self._failures) >= _FAILURES_PER_WINDOW

    def check_token(self, given: str | None) -> bool:
        """True for the right token; a wrong one counts towards the throttle."""
        if self.token is not None and not self.throttled() and same_token(given, self.token):
            return True
        self._failures.append(time.monotonic())
        return False

    def login(self) -> str:
        """A new session key for a caller who gave the right token."""
        key = secrets.token_urlsafe(32)
        self._sessions.add(key, "session", SESSION_TTL_S)
        return key

    def logout(self, key: str | None) -> None:
        """Forget session ``key``."""
        if key:
            self._sessions.items.pop(key, None)


@dataclass(frozen=True)
class Action:
    """One write action a form asks for: ``purge`` or ``replay``, on one queue, with the
    details the confirmation showed (which jobs, how many)."""

    kind: str
    queue: str
    detail: str = ""

    def key(self) -> str:
        return f"{self.kind}\x00{self.queue}\x00{self.detail}"


class CsrfTokens:
    """One-time tokens for write forms, each bound to a session and an action."""

    def __init__(self) -> None:
        self._tokens = _Expiring(_MAX_CSRF)

    def issue(self, session: str, action: Action) -> str:
        """A token for one submission of ``action`` by ``session``."""
        token = secrets.token_urlsafe(32)
        self._tokens.add(token, f"{session}\x00{action.key()}", CSRF_TTL_S)
        return token

    def spend(self, token: str | None, session: str, action: Action) -> bool:
        """True, once, for a token issued to ``session`` for ``action``; spent either way."""
        if not token:
            return False
        bound = self._tokens.get(token)
        self._tokens.items.pop(token, None)
        return bound is not None and hmac.compare_digest(
            bound.encode("utf-8", "surrogateescape"),
            f"{session}\x00{action.key()}".encode("utf-8", "surrogateescape"),
        )


def security_headers(app: ASGIApp) -> ASGIApp:
    """Add the security headers to every HTTP response of ``app``."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cross-origin-resource-policy", b"same-origin"),
                ]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await app(scope, receive, send_with_headers)

    return wrapped


def host_name(host_header: str) -> str:
    """The host part of a Host header (``[::1]:8080`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else ""
    return host_header.rpartition(":")[0] if ":" in host_header else host_header


def loopback_hosts(app: ASGIApp) -> ASGIApp:
    """Refuse a request whose Host header does not name a loopback address or ``localhost``."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = dict(scope.get("headers") or []).get(b"host", b"")
            host = host_name(raw.decode("latin-1"))
            if not is_loopback(host):
                body = b"unexpected Host header: this dashboard answers on loopback names only\n"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 421,
                        "headers": [
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return wrapped
