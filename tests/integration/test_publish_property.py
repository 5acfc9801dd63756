"""The publish path's property against the real broker, with arbitrary input: ``publish``
returns a receipt or raises a jobsys error, never another exception; every receipt's message
is in the queues its job type reaches, and in no other queue."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings

from jobsys.errors import JobsysError
from jobsys.publish.producer import JobRequest, Producer, Receipt
from jobsys.settings import Settings
from tests.apps.publishing import Email, declare, drain
from tests.strategies import any_requests

#: Raise it for a longer hunt: JOBSYS_PROPERTY_EXAMPLES=5000.
EXAMPLES = int(os.environ.get("JOBSYS_PROPERTY_EXAMPLES", "300"))
QUEUES = {"send_email": {"emails"}, "audit_event": {"audit", "archive"}}


def test_publish_returns_a_receipt_or_a_jobsys_error_and_receipts_are_where_they_belong(
    vhost_settings: Settings,
) -> None:
    loop = asyncio.new_event_loop()
    try:
        loaded = loop.run_until_complete(declare(vhost_settings))
        producer = Producer(vhost_settings, loaded.topology, models={"send_email": Email})
        loop.run_until_complete(producer.open())
        sent: dict[str, set[str]] = defaultdict(set)  # job type -> message ids of receipts
        outcomes = {"receipts": 0, "refused": 0}

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(request=any_requests)
        def publish(request: tuple[Any, Any, Any, Any, Any, Any]) -> None:
            job = JobRequest(*request)
            try:
                receipt = loop.run_until_complete(
                    producer.publish(
                        job.job_type,
                        job.payload,
                        priority=job.priority,
                        delay_s=job.delay_s,
                        job_id=job.job_id,
                        headers=job.headers,
                    )
                )
            except JobsysError:
                outcomes["refused"] += 1
                return
            assert isinstance(receipt, Receipt)
            outcomes["receipts"] += 1
            if receipt.delay_s is None:  # a delayed job arrives later, through other keys
                sent[receipt.job_type].add(receipt.message_id)

        publish()
        loop.run_until_complete(producer.close())
        print(f"publish property on the broker: {outcomes}")
        assert outcomes["receipts"] > 0 and outcomes["refused"] > 0
        for queue in ("emails", "audit", "archive"):
            arrived = {m.message_id for m in loop.run_until_complete(drain(vhost_settings, queue))}
            for job_type, ids in sent.items():
                if queue in QUEUES[job_type]:
                    assert ids <= arrived, (queue, job_type)
                else:
                    assert not ids & arrived, (queue, job_type)
    finally:
        loop.close()
