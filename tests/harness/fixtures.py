"""Pytest fixtures for fault tests: a test-owned broker, a 3-node cluster, a TCP fault proxy.

Loaded for every test by ``pytest_plugins`` in ``tests/conftest.py``. Nodes start lazily (only
when a test asks for them), once per session, and are stopped when the session ends, even when
it fails; an ``atexit`` hook in ``rabbit_node`` kills whatever is left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from jobsys.settings import Settings
from tests.harness.fault_proxy import FaultProxy
from tests.harness.rabbit_node import RabbitCluster, RabbitNode

OWN_BROKER_N = 2  # rabbit2@localhost, AMQP 5673
CLUSTER_NS = (3, 4, 5)  # rabbit3..5@localhost, AMQP 5674-5676


def node_settings(node: RabbitNode | str, **overrides: object) -> Settings:
    """jobsys ``Settings`` for a test node (or any URL), with short deadlines for fault tests."""
    url = node if isinstance(node, str) else node.url
    base = Settings(url=url, connect_timeout_s=5.0, connect_deadline_s=10.0, heartbeat_s=5)
    return base.with_overrides(**overrides)


@pytest.fixture(scope="session")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A RabbitMQ node of this session's own (``rabbit2@localhost`` on 5673).

    Tests may kill, freeze or restart it; such a test calls ``own_broker.ensure_running()``
    when it is done (or use ``running_own_broker``, which checks before every test).
    """
    node = RabbitNode(OWN_BROKER_N, tmp_path_factory.mktemp("own-broker"))
    try:
        node.start()
        yield node
    finally:
        node.close()


@pytest.fixture
def running_own_broker(own_broker: RabbitNode) -> RabbitNode:
    """``own_broker``, thawed and started again if an earlier test left it down."""
    return own_broker.ensure_running()


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """Three clustered nodes of this session's own (``rabbit3..5@localhost``, 5674-5676)."""
    cluster = RabbitCluster(CLUSTER_NS, tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def make_fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """``make(port, host="127.0.0.1")`` starts a fault proxy; all stop when the test ends."""
    proxies: list[FaultProxy] = []

    def make(target_port: int, target_host: str = "127.0.0.1") -> FaultProxy:
        proxy = FaultProxy(target_port, target_host).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def fault_proxy(make_fault_proxy: Callable[..., FaultProxy]) -> FaultProxy:
    """A fault proxy in front of the shared broker (``JOBSYS_URL``, default 127.0.0.1:5672)."""
    parts = urlsplit(Settings.from_env().url)
    return make_fault_proxy(parts.port or 5672, parts.hostname or "127.0.0.1")
