"""Access and drift faults end a worker with one clear message and a non-zero exit, never a
reconnect or requeue loop, and lose no job.

Users are created and changed only on the test-owned node (``own_broker``), never on the
shared broker. A fault proxy in front of the node counts the worker's connection attempts, so
"no reconnect loop" is a number, not an impression.

(Wrong password, missing vhost and a deleted user against the shared broker's guest, and a
work queue deleted while consuming, are in ``test_worker_faults.py``.)
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.consume.options import WorkerOptions
from jobsys.errors import AccessRefused
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from tests.apps import failure_apps
from tests.apps.failure_apps import (
    WORK,
    WORK_DEAD,
    FailureWorker,
    handler_lines,
    publish_into,
    publish_raw,
    queue_depth,
    wait_until,
)
from tests.conftest import settings_for_vhost
from tests.harness.fault_proxy import FaultProxy
from tests.harness.fixtures import node_settings
from tests.harness.ledger import Ledger
from tests.harness.rabbit_node import RabbitNode
from tests.harness.running import running_worker

pytestmark = pytest.mark.timeout(120)
EXIT_ACCESS = 4
EXIT_FAILED = 1


@pytest.fixture
def workers() -> Iterator[list[FailureWorker]]:
    started: list[FailureWorker] = []
    yield started
    for worker in started:
        worker.kill()


@pytest.fixture
def node_vhost(running_own_broker: RabbitNode) -> Iterator[str]:
    """A fresh vhost on the test-owned node, guest allowed everything in it."""
    name = f"jobsys-access-{uuid.uuid4().hex[:8]}"
    running_own_broker.ctl("add_vhost", name)
    running_own_broker.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield name
    finally:
        running_own_broker.ensure_running()
        running_own_broker.ctl("delete_vhost", name)


@pytest.fixture
def node_user(running_own_broker: RabbitNode, node_vhost: str) -> Iterator[str]:
    """A user of the test-owned node (password "pw") with every permission on ``node_vhost``."""
    user = f"jobsys-user-{uuid.uuid4().hex[:8]}"
    running_own_broker.ctl("add_user", user, "pw")
    running_own_broker.ctl("set_permissions", "-p", node_vhost, user, ".*", ".*", ".*")
    try:
        yield user
    finally:
        users = running_own_broker.ctl("list_users", "--quiet")
        if user in users:
            running_own_broker.ctl("delete_user", user)


def _via(proxy: FaultProxy, vhost: str, user: str, password: str) -> Settings:
    url = proxy.url(user=user, password=password, vhost=quote(vhost, safe=""))
    return node_settings(url, heartbeat_s=2)


async def _delete_queue(settings: Settings, name: str) -> None:
    async with BrokerConnection(settings) as conn:
        channel = await conn.channel(confirms=False)
        await channel.queue_delete(name)


def _error_lines(worker: FailureWorker) -> list[str]:
    return [line for line in worker.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    ("password", "vhost_of", "message"),
    [
        ("wrong-pw", lambda vhost: vhost, "refused the login: wrong username or password"),
        ("pw", lambda vhost: vhost + "-missing", "refused virtual host"),
    ],
    ids=["wrong-password", "missing-vhost"],
)
async def test_refused_access_exits_4_after_one_connection_attempt_with_one_clear_message(
    running_own_broker: RabbitNode,
    node_vhost: str,
    node_user: str,
    make_fault_proxy: Callable[..., FaultProxy],
    tmp_path: Path,
    workers: list[FailureWorker],
    password: str,
    vhost_of: Callable[[str], str],
    message: str,
) -> None:
    proxy = make_fault_proxy(running_own_broker.port)
    failure_apps.write_topology(tmp_path)
    worker = FailureWorker(tmp_path, _via(proxy, vhost_of(node_vhost), node_user, password))
    workers.append(worker)
    assert await worker.wait_exit(20) == EXIT_ACCESS, worker.stderr
    [line] = _error_lines(worker)
    assert message in line
    assert password not in line.replace("wrong username or password", "")
    assert "Traceback" not in worker.stderr
    assert proxy.connection_count == 1, "retried a refusal that cannot heal"


async def test_permissions_revoked_while_running_stop_the_worker_with_exit_4_losing_no_job(
    running_own_broker: RabbitNode,
    node_vhost: str,
    node_user: str,
    make_fault_proxy: Callable[..., FaultProxy],
    tmp_path: Path,
    workers: list[FailureWorker],
) -> None:
    node = running_own_broker
    proxy = make_fault_proxy(node.port)
    as_guest = settings_for_vhost(node_settings(node), node_vhost)
    loaded = failure_apps.write_topology(tmp_path)
    await failure_apps.apply(as_guest, loaded)
    ledger = Ledger()
    worker = FailureWorker(tmp_path, _via(proxy, node_vhost, node_user, "pw"))
    workers.append(worker)
    await worker.wait_for_output("consuming ft.work")
    async with Producer(as_guest, loaded.topology) as producer:
        await publish_into(ledger, producer, "task", [{}] * 20, prefix="before")
        await wait_until(
            lambda: len(handler_lines(worker.record, "done")) == 20, what="jobs before"
        )
        node.ctl("clear_permissions", "-p", node_vhost, node_user)
        # Whether the broker closes the connection now or the next reconnect is refused,
        # the revocation must end the worker; a reset makes sure a reconnect happens.
        proxy.reset_connections()
        await publish_into(ledger, producer, "task", [{}] * 20, prefix="after")
    assert await worker.wait_exit(30) == EXIT_ACCESS, worker.stderr
    [line] = _error_lines(worker)
    assert "refused" in line, line
    assert proxy.connection_count <= 3, f"{proxy.connection_count} connections: a retry loop"

    ledger.read_runs(worker.record)
    await ledger.read_queue(as_guest.url, WORK)
    await ledger.read_queue(as_guest.url, WORK_DEAD, dead=True)
    result = ledger.check()
    print(f"permissions revoked: {result.summary()} connections={proxy.connection_count}")
    result.assert_ok()


async def test_a_work_queue_deleted_under_a_busy_worker_gives_one_drift_message_and_no_loop(
    vhost_settings: Settings, tmp_path: Path, workers: list[FailureWorker]
) -> None:
    loaded = failure_apps.write_topology(tmp_path)
    await failure_apps.apply(vhost_settings, loaded)
    await publish_raw(vhost_settings, b"{not json", job_id="kept-dead", type="task")
    worker = FailureWorker(tmp_path, vhost_settings, "--concurrency", "2")
    workers.append(worker)
    await wait_until(
        lambda: queue_depth(vhost_settings, WORK_DEAD), what="the poison job dead-lettered"
    )
    ledger = Ledger()
    async with Producer(vhost_settings, loaded.topology) as producer:
        await publish_into(ledger, producer, "task", [{"sleep_s": 0.5}] * 20, prefix="job")
    await wait_until(lambda: handler_lines(worker.record, "start"), what="jobs running")
    await _delete_queue(vhost_settings, WORK)
    assert await worker.wait_exit(30) == EXIT_FAILED, worker.stderr
    [line] = _error_lines(worker)
    assert "topology drift: queue 'ft.work' does not exist" in line
    assert worker.stderr.count("topology drift") == 1
    # The worker declares nothing: the queue stays gone, the dead-letter queue keeps its job.
    with pytest.raises(Exception, match="NOT_FOUND"):
        await queue_depth(vhost_settings, WORK)
    assert await queue_depth(vhost_settings, WORK_DEAD) == 1


async def test_a_dead_letter_queue_deleted_under_a_worker_stops_it_with_one_drift_message(
    vhost_settings: Settings, tmp_path: Path, workers: list[FailureWorker]
) -> None:
    loaded = failure_apps.write_topology(tmp_path)
    await failure_apps.apply(vhost_settings, loaded)
    worker = FailureWorker(tmp_path, vhost_settings)
    workers.append(worker)
    await worker.wait_for_output("consuming ft.work")
    await _delete_queue(vhost_settings, WORK_DEAD)
    await publish_raw(vhost_settings, b"{not json", job_id="poison", type="task")
    try:
        exit_code = await worker.wait_exit(5)
    except AssertionError:
        failures = worker.stderr.count("dead-letter publish failed")
        worker.signal(signal.SIGKILL)
        raise AssertionError(
            f"the worker is still running after 5s; {failures} failed dead-letter publishes"
        ) from None
    assert exit_code == EXIT_FAILED, worker.stderr
    assert worker.stderr.count("topology drift") == 1, worker.stderr
    assert "ft.work.dead" in worker.stderr
    # The poison job is not lost: it waits in its work queue.
    assert await queue_depth(vhost_settings, WORK) == 1


#: The least privilege of each role, as ``docs/operations.md`` gives it (configure, write, read).
APPLY_PERMISSIONS = (r"^(ft\..*|jobsys\..*)$",) * 3
PRODUCER_PERMISSIONS = ("^$", r"^(ft\.jobs|jobsys\.wait\..*)$", "^$")
WORKER_PERMISSIONS = (
    "^$",
    r"^(jobsys\.dead-letter|jobsys\.due|jobsys\.wait\..*|jobsys\.cancel)$",
    r"^(ft\.work|jobsys\.cancellations)$",
)


async def test_apply_producer_and_worker_each_work_with_only_their_documented_permissions(
    running_own_broker: RabbitNode,
    node_vhost: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = running_own_broker
    users = {}
    for role, permissions in (
        ("apply", APPLY_PERMISSIONS),
        ("producer", PRODUCER_PERMISSIONS),
        ("worker", WORKER_PERMISSIONS),
    ):
        user = users[role] = f"jobsys-{role}-{uuid.uuid4().hex[:6]}"
        node.ctl("add_user", user, "pw")
        node.ctl("set_permissions", "-p", node_vhost, user, *permissions)

    def as_user(role: str) -> Settings:
        url = f"amqp://{users[role]}:pw@127.0.0.1:{node.port}/{quote(node_vhost, safe='')}"
        return node_settings(url)

    try:
        loaded = failure_apps.write_topology(tmp_path)
        await failure_apps.apply(as_user("apply"), loaded)
        record = tmp_path / "w.record"
        for name, value in failure_apps.record_env(record).items():
            monkeypatch.setenv(name, value)
        ledger = Ledger()
        async with running_worker(
            failure_apps.app, loaded, as_user("worker"), WorkerOptions()
        ) as worker:
            async with Producer(as_user("producer"), loaded.topology) as producer:
                await publish_into(ledger, producer, "task", [{}] * 10, prefix="now")
                delayed = await producer.publish("task", {}, delay_s=1, job_id="delayed")
                ledger.record_publish("delayed", delayed)
                # A job the worker must dead-letter: its only write besides retries.
                invalid = await producer.publish("strict", {"nom": 1}, job_id="invalid")
                ledger.record_publish("invalid", invalid)
            await wait_until(
                lambda: set(handler_lines(record, "done")) >= ledger.confirmed - {"invalid"},
                what="every job done, the delayed one too",
            )
            await wait_until(lambda: worker.stats.dead_lettered == 1, what="one dead-lettered")
        as_guest = settings_for_vhost(node_settings(node), node_vhost)
        ledger.read_runs(record)
        await ledger.read_queue(as_guest.url, WORK)
        await ledger.read_queue(as_guest.url, WORK_DEAD, dead=True)
        result = ledger.check()
        result.assert_ok()
        assert ledger.dead == {"invalid": 1}
        assert len(ledger.confirmed) == 12
    finally:
        for user in users.values():
            node.ctl("delete_user", user)


async def test_a_producer_without_write_permission_gets_access_refused_not_outcome_unknown(
    running_own_broker: RabbitNode, node_vhost: str, node_user: str, tmp_path: Path
) -> None:
    node = running_own_broker
    loaded = failure_apps.write_topology(tmp_path)
    await failure_apps.apply(settings_for_vhost(node_settings(node), node_vhost), loaded)
    node.ctl("set_permissions", "-p", node_vhost, node_user, "^$", "^$", "^$")
    url = f"amqp://{node_user}:pw@127.0.0.1:{node.port}/{quote(node_vhost, safe='')}"
    async with Producer(node_settings(url), loaded.topology) as producer:
        with pytest.raises(AccessRefused, match="ACCESS_REFUSED"):
            await producer.publish("task", {}, job_id="refused")
