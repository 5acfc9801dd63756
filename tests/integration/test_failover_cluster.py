"""Every client given the 3 nodes of a cluster fails over when its node dies.

A producer and a worker get all three node URLs (``JOBSYS_URL`` as a comma-separated list) and a
stream of jobs runs through quorum queues. The node the producer is on is killed with -9, then
(once it is back) the node the worker is on. Each time the client finds another node by itself,
publishing and consuming resume, and the time from the kill to the first confirmed publish and
the first finished job after it is measured and printed (docs/cluster.md has the figures, and
the runs where RabbitMQ 3.10.8 refused every publish after the node leading the quorum queues
died: this test then fails, after 240 s, naming what the publishes got). While a node is down,
``jobsys status`` with the same three URLs connects to a live one and names it. At the end the
ledger finds nothing lost. Slow: the cluster takes a minute to form, and each killed node half
a minute to come back.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from jobsys.consume.options import WorkerOptions
from jobsys.consume.worker import Worker
from jobsys.publish.producer import JobRequest, Producer
from jobsys.settings import Settings
from tests.apps import failure_apps
from tests.apps.failure_apps import WORK, handler_lines, wait_until
from tests.conftest import settings_for_vhost
from tests.harness.fixtures import node_settings
from tests.harness.ledger import Ledger
from tests.harness.rabbit_node import RabbitCluster, RabbitNode

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
PREFETCH = 16
BATCH = 40
#: A client that takes longer than this to resume is a failure, not a figure.
RESUME_LIMIT_S = 240.0


def all_nodes(cluster: RabbitCluster, vhost: str) -> Settings:
    """Settings naming every node of ``cluster`` (in ``vhost``), as a user writes them."""
    urls = [settings_for_vhost(node_settings(node), vhost).url for node in cluster]
    return node_settings(",".join(urls), publish_timeout_s=60.0, connect_deadline_s=30.0)


def node_of(cluster: RabbitCluster, shown: str) -> RabbitNode:
    """The node whose port the masked URL ``shown`` names."""
    port = urlsplit(shown).port
    return next(node for node in cluster if node.port == port)


class Stream:
    """Publishes batches into the ledger until stopped; remembers when each batch confirmed."""

    def __init__(self, ledger: Ledger, producer: Producer) -> None:
        self.ledger = ledger
        self.producer = producer
        self.confirmed_at: list[float] = []
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.last_errors: Counter[str] = Counter()
        #: (when it was sent, when it was confirmed, its job ids) per batch with a confirmed job.
        self.batches: list[tuple[float, float, list[str]]] = []

    def task_done(self) -> bool:
        return self.task is not None and self.task.done()

    async def run(self) -> None:
        batch = 0
        while not self.stop.is_set():
            started = time.monotonic()
            before = len(self.ledger.confirmed)
            payloads = [{"sleep_s": 0.005}] * BATCH
            requests = [
                JobRequest("task", p, job_id=f"s{batch:04d}-{i:05d}")
                for i, p in enumerate(payloads)
            ]
            results = await self.producer.publish_many(requests)
            self.ledger.record_many([r.job_id or "" for r in requests], results)
            self.last_errors = Counter(
                f"{type(r).__name__}: {str(r)[:160]}" for r in results if isinstance(r, Exception)
            )
            if len(self.ledger.confirmed) > before:
                now = time.monotonic()
                self.confirmed_at.append(now)
                self.batches.append((started, now, [r.job_id or "" for r in requests]))
            batch += 1
            # About 800 jobs/s at most: the worker keeps up, so the queue stays short and the
            # jobs published after a kill are the ones whose consumption is timed.
            await asyncio.sleep(0.05)

    def first_confirm_after(self, t: float) -> float | None:
        """When the first batch sent after ``t`` was confirmed."""
        return next((done for sent, done, _ in self.batches if sent > t), None)

    def sent_after(self, t: float) -> list[str]:
        """The job ids of the batches sent after ``t`` (and confirmed)."""
        return [i for sent, _, ids in self.batches if sent > t for i in ids]


class DoneWatch:
    """Follows the handlers' record (only its new lines): when each job was first done."""

    def __init__(self, record: Path) -> None:
        self.record = record
        self.done_at: dict[str, float] = {}
        self._offset = 0

    async def run(self) -> None:
        while True:
            if self.record.exists():
                with self.record.open("rb") as file:
                    file.seek(self._offset)
                    chunk = file.read()
                whole = chunk[: chunk.rfind(b"\n") + 1]
                self._offset += len(whole)
                now = time.monotonic()
                for line in whole.decode("utf-8").splitlines():
                    if line.startswith("done "):
                        self.done_at.setdefault(line[5:], now)
            await asyncio.sleep(0.02)

    def first_done_of(self, job_ids: list[str]) -> float | None:
        times = [self.done_at[i] for i in job_ids if i in self.done_at]
        return min(times) if times else None


async def resumed_after(killed_at: float, stream: Stream, done: DoneWatch) -> tuple[float, float]:
    """Seconds from the kill to the confirm of the first batch sent after it, and to the first
    job of such a batch done: publishing and consuming, end to end, again."""

    def after() -> list[str]:
        return stream.sent_after(killed_at)

    def both() -> bool:
        return done.first_done_of(after()) is not None

    try:
        await wait_until(both, timeout_s=RESUME_LIMIT_S, what="publishing and consuming resumed")
    except AssertionError:
        raise AssertionError(
            f"not resumed {RESUME_LIMIT_S}s after the kill: last confirmed batch "
            f"{_ago(stream.confirmed_at, killed_at)}; jobs confirmed since: {len(after())}; stream "
            f"running: {not stream.task_done()}; last batch: {stream.last_errors}"
        ) from None
    published = stream.first_confirm_after(killed_at)
    finished = done.first_done_of(after())
    assert published is not None and finished is not None
    return published - killed_at, finished - killed_at


def _ago(times: list[float], killed_at: float) -> str:
    return f"{times[-1] - killed_at:+.2f}s from the kill" if times else "never"


def status_command(settings: Settings, topology: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, JOBSYS_URL=settings.url)
    return subprocess.run(
        [sys.executable, "-m", "jobsys", "status", "--topology", str(topology), "--no-management"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_every_client_fails_over_when_the_node_it_is_on_is_killed_under_load(
    rabbit_cluster: RabbitCluster,
    cluster_vhost: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = rabbit_cluster
    spec = failure_apps.topology("quorum", delays_type="quorum", prefetch=PREFETCH)
    loaded = failure_apps.write_topology(tmp_path, spec)
    await failure_apps.apply(settings_for_vhost(node_settings(cluster.seed), cluster_vhost), loaded)
    settings = all_nodes(cluster, cluster_vhost)
    record = tmp_path / "w.record"
    for name, value in failure_apps.record_env(record).items():
        monkeypatch.setenv(name, value)
    ledger = Ledger()
    worker = Worker(failure_apps.app, loaded, settings, WorkerOptions(concurrency=8, prefetch=16))
    worker_task = asyncio.create_task(worker.run())
    done = DoneWatch(record)
    watching = asyncio.create_task(done.run())
    figures: list[str] = []
    allowed_duplicates: set[str] = set()
    try:
        await asyncio.wait_for(worker.ready.wait(), 60)
        async with Producer(settings, loaded.topology) as producer:
            stream = Stream(ledger, producer)
            publishing = stream.task = asyncio.create_task(stream.run())
            for role in ("producer", "worker"):
                # Kill once jobs have flowed for a few seconds on a settled cluster.
                flowing = len(ledger.confirmed) + 2000
                await wait_until(
                    lambda flowing=flowing: len(ledger.confirmed) > flowing,
                    timeout_s=60,
                    what="jobs flowing",
                )
                shown = producer.connection.node if role == "producer" else worker.node
                victim = node_of(cluster, shown)
                others = {"producer": producer.connection.node, "worker": worker.node}
                allowed_duplicates |= set(handler_lines(record, "start"))
                await asyncio.to_thread(victim.kill)
                killed_at = time.monotonic()
                publish_s, consume_s = await resumed_after(killed_at, stream, done)
                # Jobs the dead connection held unacked may run again: they had started.
                allowed_duplicates |= set(handler_lines(record, "start"))
                moved = {"producer": producer.connection.node, "worker": worker.node}
                figures.append(
                    f"killed {victim.name} ({role}'s node): publishing resumed after "
                    f"{publish_s:.2f}s, consuming after {consume_s:.2f}s; "
                    f"producer {others['producer']} -> {moved['producer']}, "
                    f"worker {others['worker']} -> {moved['worker']}"
                )
                assert node_of(cluster, moved[role]) is not victim
                if role == "producer":
                    shown_status = await asyncio.to_thread(
                        status_command, settings, tmp_path / "topology.yaml"
                    )
                    assert shown_status.returncode == 0, shown_status.stderr
                    assert "connected to broker node" in shown_status.stdout
                    assert f":{victim.port}/" not in shown_status.stdout.split("broker node")[1]
                    assert "guest:guest" not in shown_status.stdout + shown_status.stderr
                await asyncio.to_thread(victim.ensure_running, 120.0)
            stream.stop.set()
            await asyncio.wait_for(publishing, 120)
        await wait_until(
            lambda: set(handler_lines(record, "done")) >= ledger.confirmed,
            timeout_s=180,
            what="every confirmed job done",
        )
        assert not worker_task.done(), "the worker stopped"
    finally:
        watching.cancel()
        worker.request_stop()
        await asyncio.wait_for(worker_task, 60)

    ledger.read_runs(record)
    await ledger.read_queue(settings.urls[0], WORK)
    result = ledger.check()
    for line in figures:
        print("failover:", line)
    print(f"failover ledger: {result.summary()}")
    result.assert_ok(allowed_duplicates=allowed_duplicates)
    assert len(result.duplicated) <= 2 * (PREFETCH + 8)


def topology_command(
    settings: Settings, *args: str, management: bool = False
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, JOBSYS_URL=settings.url)
    flags = [] if management else ["--no-management"]
    return subprocess.run(
        [sys.executable, "-m", "jobsys", "topology", *args, *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plan_and_apply_on_the_cluster_refuse_classic_queues_and_set_replicas(
    rabbit_cluster: RabbitCluster, cluster_vhost: str, tmp_path: Path
) -> None:
    settings = all_nodes(rabbit_cluster, cluster_vhost)
    classic = failure_apps.write_topology(tmp_path, failure_apps.topology("classic"))
    refused = topology_command(settings, "apply", classic.filename)
    assert refused.returncode == 2, refused.stderr
    assert "queues.ft.work.type: on a cluster of 3 nodes a classic queue" in refused.stderr
    assert "delays.queue_type: on a cluster of 3 nodes" in refused.stderr
    assert "guest:guest" not in refused.stdout + refused.stderr
    assert rabbit_cluster.seed.ctl("list_queues", "-p", cluster_vhost, "--quiet").strip() == ""

    # The delay levels' type is left out: on a cluster they are quorum without being asked.
    spec = failure_apps.topology("quorum", delays_type=None)
    spec["queues"][WORK]["replicas"] = 2
    quorum = failure_apps.write_topology(tmp_path, spec)
    planned = topology_command(settings, "plan", quorum.filename)
    assert planned.returncode == 0, planned.stderr
    assert "of 3 nodes (the broker URLs given)" in planned.stdout
    assert "2 replicas tolerate no more node losses than 1" in planned.stdout
    assert "delay levels (and the scheduler's queues) are quorum on this cluster" in planned.stdout
    applied = topology_command(settings, "apply", quorum.filename)
    assert applied.returncode == 0, applied.stderr
    types = rabbit_cluster.seed.ctl("list_queues", "-p", cluster_vhost, "name", "type", "--quiet")
    assert "jobsys.wait.00\tquorum" in types, types
    # The broker placed as many replicas as asked: 2 for the work queue; a delay level has the
    # broker's default, one on every node.
    for queue, replicas in ((WORK, 2), (f"{WORK}.dead", 2), ("jobsys.wait.00", 3)):
        status = rabbit_cluster.seed.queues_cli("quorum_status", queue, "--vhost", cluster_vhost)
        rows = [line for line in status.splitlines() if not line.startswith("Status of")]
        placed = [node.name for node in rabbit_cluster if any(node.name in r for r in rows)]
        assert len(placed) == replicas, status
