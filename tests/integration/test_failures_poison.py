"""Poison input published raw, in the middle of a stream of good jobs: every bad message lands
in the dead-letter queue exactly once with its reason, the handler never sees it, and the
worker serves the good jobs before, between and after without a pause.

(One bad message at a time, with the dead-letter headers in detail, is
``test_worker.py::test_bad_input_is_dead_lettered_once_with_the_reason_and_the_worker_keeps_serving``.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobsys.consume.options import WorkerOptions
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.wire.headers import (
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_JOB_ID,
    HEADER_ORIGINAL_QUEUE,
)
from tests.apps import failure_apps
from tests.apps.failure_apps import (
    WORK,
    WORK_DEAD,
    drain,
    handler_lines,
    publish_into,
    publish_raw,
    queue_depth,
    wait_until,
)
from tests.harness.ledger import Ledger
from tests.harness.running import running_worker

pytestmark = pytest.mark.timeout(90)

LIMIT = 64 * 1024
NESTED = 20_000

#: name -> (body, properties, error type, words of the reason)
POISON: dict[str, tuple[bytes, dict[str, Any], str, str]] = {
    "not-json": (b"{not json", {"type": "task"}, "DecodeError", "not JSON"),
    "not-utf8": (b"\xff\xfe{}", {"type": "task"}, "DecodeError", "not UTF-8"),
    "wrong-content-type": (
        b"{}",
        {"type": "task", "content_type": "text/plain"},
        "ContentTypeError",
        "content type 'text/plain'",
    ),
    "gzip-flag": (
        b"{}",
        {"type": "task", "content_encoding": "gzip"},
        "ContentTypeError",
        "content encoding 'gzip'",
    ),
    "invalid-payload": (
        b'{"nom": 1}',
        {"type": "strict"},
        "PayloadValidationError",
        "name: Field required",
    ),
    "unknown-job-type": (b"{}", {"type": "unhandled"}, "UnknownJobTypeError", "no handler"),
    "no-job-type": (b"{}", {}, "DecodeError", "no job type"),
    "oversized": (
        b'"' + b"x" * (LIMIT + 1) + b'"',
        {"type": "task"},
        "PayloadTooLargeError",
        f"the limit is {LIMIT} bytes",
    ),
    "deeply-nested": (b"[" * NESTED + b"]" * NESTED, {"type": "task"}, "DecodeError", "deeply"),
    "nan": (b'{"x": NaN}', {"type": "task"}, "DecodeError", "NaN is not valid JSON"),
    "infinity": (b"[Infinity]", {"type": "task"}, "DecodeError", "Infinity is not valid JSON"),
}


async def test_every_kind_of_poison_is_dead_lettered_once_with_its_reason_between_good_jobs(
    vhost_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = vhost_settings.with_overrides(max_payload_bytes=LIMIT)
    loaded = failure_apps.write_topology(tmp_path)
    await failure_apps.apply(settings, loaded)
    record = tmp_path / "w.record"
    for name, value in failure_apps.record_env(record).items():
        monkeypatch.setenv(name, value)
    ledger = Ledger()
    async with running_worker(
        failure_apps.app, loaded, settings, WorkerOptions(concurrency=4, prefetch=8)
    ) as worker:
        async with Producer(settings, loaded.topology) as producer:
            good = [{"sleep_s": 0.01}] * 50
            before = await publish_into(ledger, producer, "task", good, prefix="before")
            await wait_until(lambda: worker.stats.done >= 10, what="the worker busy with jobs")
            poison_ids: dict[str, str] = {}
            for name, (body, props, _, _) in POISON.items():
                job_id = poison_ids[name] = f"poison-{name}"
                await publish_raw(settings, body, job_id=job_id, **props)
                ledger.mark(job_id, "confirmed")
                # A good job after each bad one: served while the poison is handled.
                await publish_into(ledger, producer, "task", [{}], prefix=f"after-{name}")
            after = await publish_into(ledger, producer, "task", good, prefix="after")
        good_ids = ledger.confirmed - set(poison_ids.values())
        assert set(before) | set(after) <= good_ids
        await wait_until(
            lambda: set(handler_lines(record, "done")) >= good_ids,
            what="every good job done",
        )
        await wait_until(
            lambda: worker.stats.dead_lettered == len(POISON), what="every poison dead-lettered"
        )
        assert not worker.stopping, "the worker stopped serving"

    dead = await drain(settings, WORK_DEAD)
    ledger.read_runs(record)
    ledger.dead.update(str((m.headers or {}).get(HEADER_JOB_ID)) for m in dead)
    assert await queue_depth(settings, WORK) == 0
    result = ledger.check()
    print(f"poison: {result.summary()}")
    result.assert_ok()
    assert ledger.dead == {job_id: 1 for job_id in poison_ids.values()}
    assert not set(ledger.starts) & set(poison_ids.values()), "a handler saw poison"
    by_id = {str((m.headers or {})[HEADER_JOB_ID]): m for m in dead}
    for name, (body, _, error_type, reason) in POISON.items():
        message = by_id[poison_ids[name]]
        headers = message.headers or {}
        assert str(headers[HEADER_ERROR_TYPE]).endswith(error_type), (
            name,
            headers[HEADER_ERROR_TYPE],
        )
        assert reason in str(headers[HEADER_ERROR_MESSAGE]), (name, headers[HEADER_ERROR_MESSAGE])
        assert headers[HEADER_ORIGINAL_QUEUE] == WORK
        assert message.body == body, f"{name}: the dead-lettered body is not the original"
