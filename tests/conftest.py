"""Fixtures shared by every test: the broker to use, a private vhost per test, unique names."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from jobsys.broker.connection import START_HINT, BrokerConnection
from jobsys.errors import JobsysError
from jobsys.settings import Settings

pytest_plugins = ["tests.harness.fixtures"]

MANAGEMENT_URL = os.environ.get("JOBSYS_MANAGEMENT_URL", "http://127.0.0.1:15672")


@pytest.fixture(scope="session")
def broker_settings() -> Settings:
    """Settings for the shared test broker (JOBSYS_URL); fails, never skips, when it is down."""
    settings = Settings.from_env().with_overrides(connect_deadline_s=5.0)

    async def probe() -> None:
        async with BrokerConnection(settings):
            pass

    try:
        asyncio.run(probe())
    except JobsysError as exc:
        pytest.fail(
            f"integration tests need RabbitMQ at {settings.masked_url}: {exc}\n{START_HINT}",
            pytrace=False,
        )
    return settings


def _management(method: str, path: str, body: object | None = None) -> None:
    parts = urlsplit(MANAGEMENT_URL)
    request = urllib.request.Request(
        f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "content-type": "application/json",
            "authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def create_vhost(name: str, user: str = "guest") -> None:
    """Create vhost ``name`` and give ``user`` every permission on it."""
    try:
        _management("PUT", f"/api/vhosts/{quote(name, safe='')}")
        _management(
            "PUT",
            f"/api/permissions/{quote(name, safe='')}/{user}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
    except (urllib.error.URLError, OSError):
        if shutil.which("rabbitmqctl") is None:
            raise
        _rabbitmqctl("add_vhost", name)
        _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")


def delete_vhost(name: str) -> None:
    """Delete vhost ``name`` and everything in it."""
    try:
        _management("DELETE", f"/api/vhosts/{quote(name, safe='')}")
    except (urllib.error.URLError, OSError):
        if shutil.which("rabbitmqctl") is not None:
            _rabbitmqctl("delete_vhost", name)


def settings_for_vhost(settings: Settings, vhost: str) -> Settings:
    """``settings`` pointed at ``vhost``."""
    parts = urlsplit(settings.url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, ""))
    return settings.with_overrides(url=url)


@pytest.fixture
def vhost_settings(broker_settings: Settings) -> Iterator[Settings]:
    """Settings for a fresh vhost that exists for this test only."""
    name = f"jobsys-test-{uuid.uuid4().hex[:10]}"
    create_vhost(name)
    try:
        yield settings_for_vhost(broker_settings, name)
    finally:
        delete_vhost(name)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Make names unique to this test: ``unique("emails")`` -> ``emails-1a2b3c4d``."""
    token = uuid.uuid4().hex[:8]
    return lambda base: f"{base}-{token}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow fault scenarios run in CI (JOBSYS_SLOW_TESTS=1) or with ``-m slow``; a default run
    deselects them (pytest reports how many) so it stays short."""
    if os.environ.get("JOBSYS_SLOW_TESTS") == "1" or config.getoption("-m"):
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]


# -- tests that need the management API ---------------------------------------------------------

_ENABLE = "`rabbitmq-plugins enable rabbitmq_management` turns it on"
_skipped_for_management: list[str] = []


@functools.cache
def management_problem() -> str | None:
    """Why the management API does not answer (None when it does); asked once per run."""
    try:
        _management("GET", "/api/overview")
    except (urllib.error.URLError, OSError) as exc:
        return f"{MANAGEMENT_URL} does not answer ({getattr(exc, 'reason', exc)})"
    return None


# -- tests that need PostgreSQL (the inbox) ------------------------------------------------------

POSTGRES_URL = os.environ.get(
    "JOBSYS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
_START_POSTGRES = "`.ci/run` installs and starts it (Debian's postgresql package)"


@functools.cache
def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used (None when it can); asked once per run."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]')"
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=5).close()
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())[:200]
        return f"PostgreSQL at {POSTGRES_URL} does not answer ({reason})"
    return None


def _postgres_setup(item: pytest.Item) -> None:
    """Skip a ``postgres`` test when PostgreSQL is down; under JOBSYS_REQUIRE_POSTGRES=1 (CI)
    the same test fails instead."""
    problem = postgres_problem()
    if problem is None:
        return
    if os.environ.get("JOBSYS_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required here: {problem}; {_START_POSTGRES}", pytrace=False)
    pytest.skip(f"needs PostgreSQL: {problem}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a ``management`` test when the API is off (the README's broker may not have the
    plugin); CI sets JOBSYS_REQUIRE_MANAGEMENT=1, so there the same test fails instead. The
    same for a ``postgres`` test and JOBSYS_REQUIRE_POSTGRES."""
    if item.get_closest_marker("postgres") is not None:
        _postgres_setup(item)
    if item.get_closest_marker("management") is None:
        return
    problem = management_problem()
    if problem is None:
        return
    if os.environ.get("JOBSYS_REQUIRE_MANAGEMENT") == "1":
        pytest.fail(f"the management API is required here: {problem}; {_ENABLE}", pytrace=False)
    _skipped_for_management.append(item.nodeid)
    pytest.skip(f"needs the management API: {problem}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line for every test skipped for want of the management API, not one per test."""
    if _skipped_for_management:
        terminalreporter.write_line(
            f"{len(_skipped_for_management)} tests skipped: the management API at "
            f"{management_problem()}; {_ENABLE}",
            yellow=True,
        )
