"""Results against a real broker: a handler's return value is checked and encoded; one that
cannot be a result fails the attempt and its dead letter says why."""

from __future__ import annotations

import pytest

from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.wire.headers import (
    HEADER_DEAD_LETTER_REASON,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_JOB_ID,
)
from tests.apps import result_apps
from tests.apps.worker_apps import drain_dead, wait_until
from tests.harness.running import running_worker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def loaded(vhost_settings: Settings) -> LoadedTopology:
    topology = result_apps.loaded_topology()
    await result_apps.apply(vhost_settings, topology)
    return topology


async def _publish(settings: Settings, loaded: LoadedTopology, job_type: str) -> str:
    from jobsys.publish.producer import Producer

    async with Producer(settings, loaded) as producer:
        return (await producer.publish(job_type, {"a": 1, "b": 2})).job_id


@pytest.mark.parametrize(
    ("job_type", "words"),
    [
        ("bad_set", "not JSON-serialisable"),
        ("bad_nan", "NaN or infinity"),
        ("bad_big", "max_payload_bytes"),
        ("bad_coroutine", "missing `await`"),
        ("bad_model", "return annotation"),
    ],
)
async def test_result_that_cannot_be_encoded_dead_letters_the_job_with_the_reason(
    vhost_settings: Settings, loaded: LoadedTopology, job_type: str, words: str
) -> None:
    async with running_worker(result_apps.app, loaded, vhost_settings) as worker:
        job_id = await _publish(vhost_settings, loaded, job_type)
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the job dead-lettered")
    [dead] = await drain_dead(vhost_settings, result_apps.WORK_DEAD)
    headers = dead.headers
    assert headers[HEADER_JOB_ID] == job_id
    assert headers[HEADER_ERROR_TYPE] == "jobsys.errors.ResultError"
    assert words in str(headers[HEADER_ERROR_MESSAGE])
    assert "ResultError" in str(headers[HEADER_DEAD_LETTER_REASON])
    assert worker.stats.retried == 0  # never retried: it would return the same


async def test_jobs_returning_results_or_none_are_done(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async with running_worker(result_apps.app, loaded, vhost_settings) as worker:
        for job_type in ("add", "sync_add", "nothing", "echo"):
            await _publish(vhost_settings, loaded, job_type)
        await wait_until(lambda: worker.stats.done == 4, what="four jobs done")
    assert worker.stats.dead_lettered == 0
    assert await drain_dead(vhost_settings, result_apps.WORK_DEAD) == []
