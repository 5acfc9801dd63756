"""The blocking facade: many threads publishing at once, the same errors in the caller's
thread, the same guarantee of a receipt only for confirmed jobs."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import BaseModel

from jobsys.errors import (
    AccessRefused,
    ConnectionFailed,
    JobsysError,
    PayloadValidationError,
    QueueFullError,
    UnknownJobTypeError,
)
from jobsys.publish.producer import JobRequest, Receipt
from jobsys.publish.sync import SyncProducer
from jobsys.settings import Settings
from jobsys.topology.model import Topology
from jobsys.wire.headers import HEADER_JOB_ID
from tests.apps.publishing import declare, drain


class Email(BaseModel):
    to: str


@pytest.fixture
def topology(vhost_settings: Settings) -> Topology:
    return asyncio.run(declare(vhost_settings)).topology


def queued_job_ids(settings: Settings, queue: str) -> list[str]:
    return [m.headers[HEADER_JOB_ID] for m in asyncio.run(drain(settings, queue))]  # type: ignore[misc]


def test_many_threads_publish_at_once_and_every_receipt_is_in_the_queue(
    vhost_settings: Settings, topology: Topology
) -> None:
    threads_seen: set[str] = set()

    def publish_from_thread(worker: int) -> list[Receipt]:
        threads_seen.add(threading.current_thread().name)
        return [
            producer.publish("audit_event", {"w": worker, "i": i}, job_id=f"{worker}-{i}")
            for i in range(40)
        ]

    with (
        SyncProducer(vhost_settings, topology) as producer,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        receipts = [r for batch in pool.map(publish_from_thread, range(8)) for r in batch]
    assert len(threads_seen) > 1
    assert len(receipts) == 320
    assert sorted(queued_job_ids(vhost_settings, "audit")) == sorted(r.job_id for r in receipts)


def test_errors_are_raised_in_the_callers_thread_and_the_producer_keeps_working(
    vhost_settings: Settings, topology: Topology
) -> None:
    with SyncProducer(vhost_settings, topology, models={"send_email": Email}) as producer:
        with pytest.raises(UnknownJobTypeError, match="send_fax"):
            producer.publish("send_fax", {})
        with pytest.raises(PayloadValidationError, match="to"):
            producer.publish("send_email", {})
        producer.publish("squeeze", {})
        producer.publish("squeeze", {})
        with pytest.raises(QueueFullError, match="queue tiny is full"):
            producer.publish("squeeze", {})
        receipt = producer.publish("send_email", {"to": "a@b.c"}, priority=7, job_id="e-1")
    assert receipt.job_id == "e-1"
    assert queued_job_ids(vhost_settings, "emails") == ["e-1"]


def test_publish_many_from_a_plain_function_reports_each_job(
    vhost_settings: Settings, topology: Topology
) -> None:
    with SyncProducer(vhost_settings, topology) as producer:
        results = producer.publish_many(
            [JobRequest("audit_event", {"i": i}) for i in range(300)] + [JobRequest("nope", {})]
        )
    assert sum(isinstance(r, Receipt) for r in results) == 300
    assert isinstance(results[-1], UnknownJobTypeError)
    assert len(queued_job_ids(vhost_settings, "audit")) == 300


def test_a_closed_producer_refuses_to_publish_and_closing_twice_is_fine(
    vhost_settings: Settings, topology: Topology
) -> None:
    producer = SyncProducer(vhost_settings, topology)
    producer.close()
    producer.close()
    with pytest.raises(ConnectionFailed, match="closed"):
        producer.publish("audit_event", {})


def test_wrong_credentials_fail_at_construction_with_a_clear_error(
    vhost_settings: Settings, topology: Topology
) -> None:
    wrong = vhost_settings.with_overrides(url=vhost_settings.url.replace("guest:guest", "guest:x"))
    with pytest.raises(AccessRefused, match="wrong username or password"):
        SyncProducer(wrong, topology)
    # No loop thread is left behind by the failed constructor.
    assert not [t for t in threading.enumerate() if t.name == "jobsys-sync-producer"]


def test_hostile_input_raises_jobsys_errors_in_the_callers_thread_and_publish_many_answers_all(
    vhost_settings: Settings, topology: Topology
) -> None:
    with SyncProducer(vhost_settings, topology) as producer:
        for kwargs in (
            {"job_id": 12345},
            {"headers": {"raw": b"bytes"}},
            {"headers": {"big": 2**64}},
            {"delay_s": 10**400},
        ):
            with pytest.raises(JobsysError):
                producer.publish("audit_event", {}, **kwargs)  # type: ignore[arg-type]
        requests: list[object] = [JobRequest("audit_event", {"i": i}) for i in range(4)]
        requests[1] = JobRequest("audit_event", {}, headers={"s": {1, 2}})
        requests[2] = {"job_type": "audit_event", "payload": {}}  # not a JobRequest
        results = producer.publish_many(requests)  # type: ignore[arg-type]
    assert [type(r).__name__ for r in results] == [
        "Receipt",
        "PayloadValidationError",
        "PayloadValidationError",
        "Receipt",
    ]
    assert len(queued_job_ids(vhost_settings, "audit")) == 2
