"""The ``jobsys`` pytest plugin: fixtures for testing a service built on jobsys.

Installed with jobsys (entry point ``pytest11``). A project defines two fixtures in its
conftest, ``jobsys_app`` (its ``App``) and ``jobsys_topology`` (the topology file's path, or a
``LoadedTopology``), and gets:

* ``jobsys_kit``: an open in-memory ``Kit`` (no broker, virtual clock);
* ``jobsys_producer``: the ``Producer`` the code under test is given: the kit's by default;
  with ``--jobsys-broker`` a real one, on a private vhost of the broker at ``JOBSYS_URL``
  holding the topology, deleted after the test;
* ``jobsys_broker``: ``Settings`` for such a private vhost (integration tests that start a
  ``Worker``); tests using it are skipped unless ``--jobsys-broker`` is given.

The private vhost is created through the management API (``JOBSYS_MANAGEMENT_URL``, or the
broker's host on port 15672), with the broker URL's user. See docs/testing.md.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest

from jobsys.app import App
from jobsys.broker.connection import BrokerConnection
from jobsys.broker.management import ManagementClient, management_endpoint
from jobsys.ops.declare import apply_topology
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.testing.kit import Kit
from jobsys.topology.loader import LoadedTopology, load_topology

#: The async fixtures need pytest-asyncio; without it they say so instead of breaking pytest.
_HAS_ASYNCIO = importlib.util.find_spec("pytest_asyncio") is not None

_BROKER_OPTION = "--jobsys-broker"


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--jobsys-broker``: run jobsys fixtures against RabbitMQ (a private vhost per test)."""
    group = parser.getgroup("jobsys")
    group.addoption(
        _BROKER_OPTION,
        action="store_true",
        default=False,
        help="give jobsys_producer a real broker (JOBSYS_URL) in a private vhost per test, "
        "and run the tests that use jobsys_broker",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker the plugin sets on broker tests."""
    config.addinivalue_line(
        "markers", "jobsys_broker: needs RabbitMQ; runs only with --jobsys-broker"
    )


def _broker_mode(config: pytest.Config) -> bool:
    return bool(config.getoption(_BROKER_OPTION, default=False))


def _loaded(topology: object) -> LoadedTopology:
    if isinstance(topology, LoadedTopology):
        return topology
    if isinstance(topology, str | Path):
        return load_topology(topology)
    raise pytest.UsageError(
        "the jobsys_topology fixture must return a topology file's path or a LoadedTopology, "
        f"not {type(topology).__name__}"
    )


@pytest.fixture
def jobsys_app() -> App:
    """Override in your conftest: the ``App`` whose handlers the tests run."""
    raise pytest.UsageError("define a `jobsys_app` fixture returning your jobsys App")


@pytest.fixture
def jobsys_topology() -> Any:
    """Override in your conftest: the topology file's path (or a ``LoadedTopology``)."""
    raise pytest.UsageError("define a `jobsys_topology` fixture returning your topology's path")


def _private_url(settings: Settings, vhost: str) -> Settings:
    parts = urlsplit(settings.url)
    path = "/" + quote(vhost, safe="")
    return settings.with_overrides(url=urlunsplit((parts.scheme, parts.netloc, path, "", "")))


async def _private_vhost(topology: LoadedTopology) -> AsyncIterator[Settings]:
    base = Settings.from_env()
    client = ManagementClient(management_endpoint(base))
    vhost = f"jobsys-test-{uuid.uuid4().hex[:12]}"
    user = unquote(urlsplit(base.url).username or "guest")
    await client.create_vhost(vhost, user)
    try:
        settings = _private_url(base, vhost)
        async with BrokerConnection(settings) as connection:
            await apply_topology(connection, topology, use_management=False)
        yield settings
    finally:
        await client.delete_vhost(vhost)


if _HAS_ASYNCIO:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def _jobsys_memory(
        request: pytest.FixtureRequest, jobsys_app: App, jobsys_topology: Any
    ) -> AsyncIterator[Kit | None]:
        # One kit per test, shared by jobsys_kit and jobsys_producer; none with a broker (an
        # open kit puts jobsys on its virtual clock, which a real broker must not see).
        if _broker_mode(request.config):
            yield None
            return
        async with Kit(jobsys_app, _loaded(jobsys_topology)) as kit:
            yield kit

    @pytest_asyncio.fixture
    async def _jobsys_vhost(
        request: pytest.FixtureRequest, jobsys_topology: Any
    ) -> AsyncIterator[Settings | None]:
        if not _broker_mode(request.config):
            yield None
            return
        async for settings in _private_vhost(_loaded(jobsys_topology)):
            yield settings

    @pytest.fixture
    def jobsys_kit(_jobsys_memory: Kit | None) -> Kit:
        """An open in-memory ``Kit`` of your app and topology (skipped with
        ``--jobsys-broker``: a test that inspects the kit is an in-memory test)."""
        if _jobsys_memory is None:
            pytest.skip("an in-memory test (jobsys_kit); --jobsys-broker runs the others")
        return _jobsys_memory

    @pytest.fixture
    def jobsys_broker(_jobsys_vhost: Settings | None) -> Settings:
        """``Settings`` for a private vhost holding your topology (``--jobsys-broker`` only)."""
        if _jobsys_vhost is None:
            pytest.skip(f"needs RabbitMQ: run with {_BROKER_OPTION}")
        return _jobsys_vhost

    @pytest_asyncio.fixture
    async def jobsys_producer(
        _jobsys_memory: Kit | None,
        _jobsys_vhost: Settings | None,
        jobsys_app: App,
        jobsys_topology: Any,
    ) -> AsyncIterator[Producer]:
        """The producer to give the code under test: the kit's by default, a real one on the
        test's private vhost with ``--jobsys-broker``."""
        if _jobsys_memory is not None:
            yield _jobsys_memory.producer
            return
        assert _jobsys_vhost is not None
        loaded = _loaded(jobsys_topology)
        async with Producer(_jobsys_vhost, loaded, app=jobsys_app) as producer:
            yield producer

else:  # pragma: no cover

    @pytest.fixture
    def jobsys_kit() -> None:
        """Needs pytest-asyncio."""
        raise pytest.UsageError("the jobsys fixtures need pytest-asyncio: pip install it")

    jobsys_broker = jobsys_producer = jobsys_kit
