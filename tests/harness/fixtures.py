"""Pytest fixtures for fault tests: a test-owned broker, a 3-node cluster, a TCP fault proxy.

Loaded for every test by ``pytest_plugins`` in ``tests/conftest.py``. Nodes start lazily (only
when a test asks for them), once per session, and are stopped when the session ends, even when
it fails; an ``atexit`` hook in ``rabbit_node`` kills whatever is left.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from jobsys.settings import Settings
from tests.harness.fault_proxy import FaultProxy
from tests.harness.rabbit_node import RabbitCluster, RabbitNode

#: The suite's nodes are rabbitN@localhost on AMQP port 5671+N from this N on (default 2: the own
#: broker rabbit2 on 5673, the cluster rabbit3..5 on 5674-5676). Test runs that overlap on one
#: machine give each run its own range, e.g. JOBSYS_TEST_NODES_FROM=12.
_FIRST_N = int(os.environ.get("JOBSYS_TEST_NODES_FROM", "2"))
OWN_BROKER_N = _FIRST_N
CLUSTER_NS = (_FIRST_N + 1, _FIRST_N + 2, _FIRST_N + 3)


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
def cluster_vhost(rabbit_cluster: RabbitCluster) -> Iterator[str]:
    """A private vhost on the test cluster (guest may do anything there); every node is running
    again and the vhost deleted when the test ends."""
    name = f"jobsys-cluster-{uuid.uuid4().hex[:8]}"
    rabbit_cluster.seed.ctl("add_vhost", name)
    rabbit_cluster.seed.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield name
    finally:
        for node in rabbit_cluster:
            node.ensure_running()
        rabbit_cluster.seed.ctl("delete_vhost", name)


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
