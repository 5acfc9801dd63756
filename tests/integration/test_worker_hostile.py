"""Misbehaving handlers and awkward timing against a real broker: every job is done, waiting,
or dead-lettered with its reason, and the worker keeps serving."""

from __future__ import annotations

import asyncio
import logging
import signal
import struct
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jobsys.broker.connection import BrokerConnection
from jobsys.cli import main
from jobsys.consume.options import WorkerOptions
from jobsys.ops import dlq
from jobsys.publish.producer import JobRequest, Producer
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology_text
from jobsys.wire.envelope import new_job_id
from jobsys.wire.headers import HEADER_UNREADABLE_HEADERS, now_ms
from tests.apps import hostile_apps
from tests.apps.hostile_apps import OTHER, SEEN, STARTED, WORK
from tests.apps.worker_apps import drain_dead, queue_depth, wait_until
from tests.harness.running import running_worker
from tests.harness.worker_subprocess import WorkerSubprocess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def loaded(vhost_settings: Settings) -> LoadedTopology:
    topology = hostile_apps.loaded_topology()
    await hostile_apps.apply(vhost_settings, topology)
    SEEN.clear()
    return topology


async def publish(
    settings: Settings, loaded: LoadedTopology, job_type: str, payloads: list[Any]
) -> list[str]:
    async with Producer(settings, loaded) as producer:
        results = await producer.publish_many([JobRequest(job_type, p) for p in payloads])
    ids = []
    for result in results:
        assert not isinstance(result, Exception), result
        ids.append(result.job_id)
    return ids


async def _until_empty(settings: Settings, queue: str, timeout_s: float = 15.0) -> None:
    """Wait until ``queue`` holds no ready job."""
    for _ in range(int(timeout_s * 10)):
        if not await queue_depth(settings, queue):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{queue} still holds jobs after {timeout_s:g}s")


def _ran(ids: list[str]) -> bool:
    return all(SEEN[job_id] >= 1 for job_id in ids)


# -- F5: a prefetched job is never stranded ------------------------------------------------------


@pytest.mark.parametrize("sleep_s", [0.0, 0.05])
@pytest.mark.parametrize("burst", [1, 2, 3, 4, 5, 8])
async def test_a_burst_ready_when_the_worker_starts_all_runs_promptly(
    vhost_settings: Settings, loaded: LoadedTopology, burst: int, sleep_s: float
) -> None:
    # concurrency 2, prefetch 4: a burst of exactly 4 once left one job held and never run.
    # The window was one event-loop turn wide: a few starts in a row make a miss likely.
    for _ in range(3):
        SEEN.clear()
        ids = await publish(vhost_settings, loaded, "quick", [{"sleep_s": sleep_s}] * burst)
        async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
            await wait_until(lambda ids=ids: _ran(ids), timeout_s=5, what=f"all {burst} run")
            await wait_until(lambda: worker.stats.done == burst, timeout_s=5, what="all acked")
        assert await queue_depth(vhost_settings, WORK) == 0


async def test_bursts_of_exactly_prefetch_on_a_live_worker_all_run_promptly(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        total = 0
        for _ in range(6):
            ids = await publish(vhost_settings, loaded, "quick", [{"sleep_s": 0.0}] * 4)
            total += 4
            await wait_until(lambda ids=ids: _ran(ids), timeout_s=5, what="the burst run")
            await wait_until(lambda t=total: worker.stats.done == t, timeout_s=5, what="acked")


#: (concurrency, prefetch) of hx.work besides the 2/4 above: one runner, prefetch equal to
#: concurrency, and prefetch a few times it.
POOL_SHAPES = [(1, 1), (1, 3), (3, 3), (3, 7), (4, 16)]


@pytest.mark.parametrize(("concurrency", "prefetch"), POOL_SHAPES)
async def test_a_burst_of_exactly_prefetch_runs_promptly_for_any_pool_shape(
    vhost_settings: Settings, concurrency: int, prefetch: int
) -> None:
    text = hostile_apps.TOPOLOGY_YAML.replace(
        "consumer: {concurrency: 2, prefetch: 4}",
        f"consumer: {{concurrency: {concurrency}, prefetch: {prefetch}}}",
        1,
    )
    loaded = load_topology_text(text, "pool-shape.yaml")
    await hostile_apps.apply(vhost_settings, loaded)
    for burst in (prefetch - 1, prefetch, prefetch + 1):
        SEEN.clear()
        ids = await publish(vhost_settings, loaded, "quick", [{"sleep_s": 0.0}] * burst)
        async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
            # At start-up: the burst was ready before the worker consumed.
            await wait_until(lambda ids=ids: _ran(ids), timeout_s=5, what=f"{burst} at start")
            # Live: another burst of the same size while it consumes.
            more = await publish(vhost_settings, loaded, "quick", [{"sleep_s": 0.0}] * burst)
            await wait_until(lambda ids=more: _ran(ids), timeout_s=5, what=f"{burst} live")
            await wait_until(lambda b=burst: worker.stats.done == 2 * b, what="all acked")
        assert await queue_depth(vhost_settings, WORK) == 0


# -- F6, F8: a handler raising any BaseException is settled like a failure -----------------------


@pytest.mark.parametrize(
    ("job_type", "error_type", "runs"),
    [
        ("weird", "tests.apps.hostile_apps.Weird", 2),  # retried once, then dead-lettered
        ("exits", "SystemExit", 1),
        ("interrupts", "KeyboardInterrupt", 1),  # from a sync handler's thread
    ],
)
async def test_a_handler_raising_a_base_exception_is_settled_and_the_worker_serves_on(
    vhost_settings: Settings, loaded: LoadedTopology, job_type: str, error_type: str, runs: int
) -> None:
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        [bad] = await publish(vhost_settings, loaded, job_type, [{}])
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the job dead-lettered")
        good = await publish(vhost_settings, loaded, "quick", [{}] * 3)
        await wait_until(lambda: _ran(good), what="the next jobs run")
        assert not worker.stopping
    assert SEEN[bad] == runs
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert dead.headers["jobsys-error-type"] == error_type
    assert await queue_depth(vhost_settings, WORK) == 0


@pytest.mark.parametrize(
    ("job_type", "runs", "error_type", "said"),
    [
        ("garbled", 2, "ValueError", "bad name caf\\xe9"),
        ("unprintable", 2, "tests.apps.hostile_apps.Unprintable", "could not be read"),
        ("rejects_garbled", 1, "jobsys.errors.Reject", "bad name caf\\xe9"),
    ],
)
async def test_an_error_whose_text_cannot_be_encoded_or_read_is_settled_once_and_said_escaped(
    vhost_settings: Settings,
    loaded: LoadedTopology,
    job_type: str,
    runs: int,
    error_type: str,
    said: str,
) -> None:
    # Before, the dead-letter copy could not be encoded (even trimmed): the job was requeued
    # and ran again at once, for ever. An unreadable message raised out of the settlement.
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        [bad] = await publish(vhost_settings, loaded, job_type, [{}])
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the job dead-lettered")
        good = await publish(vhost_settings, loaded, "quick", [{}] * 3)
        await wait_until(lambda: _ran(good), what="the next jobs run")
        assert not worker.stopping
    assert SEEN[bad] == runs
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert dead.headers["jobsys-error-type"] == error_type
    record = f"{dead.headers['jobsys-error-message']} {dead.headers['jobsys-dead-letter-reason']}"
    assert said in record
    assert await queue_depth(vhost_settings, WORK) == 0


# -- float headers: AMQP doubles, from jobsys and from other clients -----------------------------

_BIG, _SMALL = 0x1122334455667788, 0x0102030405060708


async def test_a_job_with_double_headers_from_another_client_is_retried_with_them_exact(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    # Another client's double (AMQP "d") header beyond a 32-bit float used to make the retry
    # unencodable: the job was dead-lettered after one attempt with its headers dropped.
    props = hostile_apps.raw_properties(
        job_type="fails_twice",
        headers={"price": _BIG, "ratio": _SMALL},
        replace={  # two 64-bit integers become two doubles in the encoded headers
            b"l" + struct.pack(">q", _BIG): b"d" + struct.pack(">d", 1e300),
            b"l" + struct.pack(">q", _SMALL): b"d" + struct.pack(">d", 0.1),
        },
    )
    await hostile_apps.publish_raw(vhost_settings, props)
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the job dead-lettered")
        assert worker.stats.retried == 1
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert dead.headers["jobsys-attempts"] == 2
    assert dead.headers["price"] == 1e300 and dead.headers["ratio"] == 0.1


_HEADER_S, _PROPERTY_S = 1_796_068_606, 1_796_068_607
_MICROSECONDS = _HEADER_S * 1_000_000  # as another client might write a "T" value
_NANOSECONDS = _PROPERTY_S * 1_000_000_000


async def test_timestamps_in_microseconds_from_another_client_never_drop_the_connection(
    vhost_settings: Settings, loaded: LoadedTopology, caplog: pytest.LogCaptureFixture
) -> None:
    # pamqp read them as milliseconds past the year 9999 and failed the content header: aiormq
    # dropped the worker's connection, and the redelivered job dropped it again, forever.
    props = hostile_apps.raw_properties(
        job_type="fails_twice",
        headers={"sent": datetime.fromtimestamp(_HEADER_S, UTC)},
        timestamp=datetime.fromtimestamp(_PROPERTY_S, UTC),
        replace={
            b"T" + struct.pack(">Q", _HEADER_S): b"T" + struct.pack(">Q", _MICROSECONDS),
            struct.pack(">Q", _PROPERTY_S): struct.pack(">Q", _NANOSECONDS),
        },
    )
    await hostile_apps.publish_raw(vhost_settings, props)
    caplog.set_level(logging.WARNING, logger="jobsys")
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the job dead-lettered")
        assert worker.stats.retried == 1  # the retry carried the header, then failed again
    assert not [r for r in caplog.records if "lost" in r.getMessage()]
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert dead.headers["sent"] == _MICROSECONDS  # copied as the integer that was sent
    assert dead.headers["jobsys-attempts"] == 2
    assert isinstance(dead.timestamp, datetime)  # the copy's own publish time


async def test_a_header_table_nested_past_pythons_recursion_is_dead_lettered_with_the_reason(
    vhost_settings: Settings, loaded: LoadedTopology, caplog: pytest.LogCaptureFixture
) -> None:
    # pamqp ran out of recursion on it: aiormq dropped the worker's connection, and the
    # redelivered message dropped it again, forever, with the jobs behind it waiting.
    await hostile_apps.publish_raw(vhost_settings, hostile_apps.nested_headers_properties(2_000))
    await publish(vhost_settings, loaded, "quick", [{}])
    caplog.set_level(logging.WARNING, logger="jobsys")
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the job dead-lettered")
        await wait_until(lambda: worker.stats.done == 1, what="the job behind it done")
    assert not [r for r in caplog.records if "lost" in r.getMessage()]
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert "deep" not in dead.headers
    assert dead.headers[HEADER_UNREADABLE_HEADERS].startswith("its header table could not")
    assert "nested too deeply" in dead.headers["jobsys-dead-letter-reason"]
    assert dead.type == "quick"  # the properties beside the table were kept


async def test_float_headers_published_by_jobsys_arrive_exact(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    # As 32-bit floats 0.1 arrived as 0.10000000149011612, and 1e300 was refused.
    headers = {"ratio": 0.1, "big": 1e300, "tiny": 5e-324, "nested": {"list": [2.5e-308]}}
    async with Producer(vhost_settings, loaded) as producer:
        await producer.publish("fails_twice", {}, headers=headers)
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the job dead-lettered")
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert {name: dead.headers[name] for name in headers} == headers


async def test_sys_exit_in_a_handler_never_ends_a_supervised_worker_process(
    vhost_settings: Settings, loaded: LoadedTopology, tmp_path: Path
) -> None:
    topology_path = tmp_path / "topology.yaml"
    topology_path.write_text(hostile_apps.TOPOLOGY_YAML, encoding="utf-8")
    worker = WorkerSubprocess(
        "tests.apps.hostile_apps:app",
        topology_path,
        tmp_path / "stderr.txt",
        {"JOBSYS_URL": vhost_settings.url},
        ["--processes", "1"],
    )
    try:
        await worker.wait_for_output("consuming hx.work")
        await publish(vhost_settings, loaded, "exits", [{}, {}, {}])
        await wait_until(
            lambda: worker.stderr.count("dead-lettered to hx.work.dead") == 3,
            what="three jobs dead-lettered",
        )
        await publish(vhost_settings, loaded, "quick", [{}])
        await _until_empty(vhost_settings, WORK)
    finally:
        worker.signal(signal.SIGTERM)
        code = await worker.wait_exit()
        worker.kill()
    assert code == 0, worker.stderr
    assert "crashed" not in worker.stderr and "Traceback" not in worker.stderr
    assert "(0 restarted after a crash" in worker.stderr
    assert len(await drain_dead(vhost_settings, f"{WORK}.dead")) == 3


# -- F2: invalid UTF-8 in AMQP short strings -----------------------------------------------------

#: A short string placeholder of 4 bytes and the invalid UTF-8 that replaces it on the wire.
_PLACEHOLDER, _INVALID = b"\x04QQQQ", b"\x04\xff\xfeQQ"
NOT_UTF8 = {
    "type": dict(job_type="QQQQ"),
    "header-name": dict(headers={"QQQQ": "v"}),
    "message-id": dict(message_id="QQQQ"),
    "content-type": dict(content_type="QQQQ"),
}


@pytest.mark.parametrize("where", list(NOT_UTF8))
async def test_a_property_that_is_not_utf8_is_dead_lettered_and_no_pool_stops(
    vhost_settings: Settings,
    loaded: LoadedTopology,
    where: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    props = hostile_apps.raw_properties(**NOT_UTF8[where], replace={_PLACEHOLDER: _INVALID})
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        await hostile_apps.publish_raw(vhost_settings, props)
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the bad job dead-lettered")
        other = await publish(vhost_settings, loaded, "other_quick", [{}])
        good = await publish(vhost_settings, loaded, "quick", [{}])
        await wait_until(lambda: _ran(other + good), what="both pools still serving")
    assert "connection to the broker lost" not in caplog.text
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert dead.headers["jobsys-error-type"] == "jobsys.errors.DecodeError"
    assert "not UTF-8" in str(dead.headers["jobsys-error-message"])


async def test_a_worker_that_starts_with_a_property_that_is_not_utf8_at_the_head_serves_on(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    props = hostile_apps.raw_properties(job_type="QQQQ", replace={_PLACEHOLDER: _INVALID})
    await hostile_apps.publish_raw(vhost_settings, props)
    good = await publish(vhost_settings, loaded, "quick", [{}] * 3)
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        await wait_until(lambda: _ran(good), what="the jobs behind it run")
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="it is dead-lettered")
    assert await queue_depth(vhost_settings, WORK) == 0


@pytest.mark.parametrize("where", [w for w in NOT_UTF8 if w != "type"])
async def test_a_worker_starting_behind_any_property_not_utf8_serves_both_pools(
    vhost_settings: Settings, loaded: LoadedTopology, where: str
) -> None:
    # The test above starts behind a bad type; a bad header name, message id or content type
    # at the head of the queue must not stop the worker either, nor its other pool.
    props = hostile_apps.raw_properties(**NOT_UTF8[where], replace={_PLACEHOLDER: _INVALID})
    await hostile_apps.publish_raw(vhost_settings, props)
    good = await publish(vhost_settings, loaded, "quick", [{}] * 3)
    other = await publish(vhost_settings, loaded, "other_quick", [{}])
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        await wait_until(lambda: _ran(good + other), what="the jobs of both pools run")
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="it is dead-lettered")
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert dead.headers["jobsys-error-type"] == "jobsys.errors.DecodeError"
    assert await queue_depth(vhost_settings, WORK) == 0


async def test_dead_letter_tools_read_and_replay_past_a_message_that_is_not_utf8(
    vhost_settings: Settings, loaded: LoadedTopology, tmp_path: Path
) -> None:
    planted = hostile_apps.raw_properties(
        job_type="QQQQ",
        headers={"RRRR": "v"},
        replace={_PLACEHOLDER: _INVALID, b"\x04RRRR": _INVALID},
    )
    await hostile_apps.publish_raw(
        vhost_settings, planted, exchange="jobsys.dead-letter", routing_key=f"{WORK}.dead"
    )
    async with BrokerConnection(vhost_settings) as connection:
        peeked = await dlq.peek(connection, WORK)
        assert len(peeked.jobs) == 1 and peeked.jobs[0].job_type == "\\xff\\xfeQQ"
        async with Producer(vhost_settings, loaded, connection=connection) as producer:
            replayed = await dlq.replay(producer, WORK)
    assert replayed.replayed == 1
    topology_path = tmp_path / "topology.yaml"
    topology_path.write_text(hostile_apps.TOPOLOGY_YAML, encoding="utf-8")
    # The replayed copy is valid UTF-8 and goes back to the dead-letter queue with its reason.
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered again")
    args = ["dlq", "list", WORK, "--topology", str(topology_path), "--url", vhost_settings.url]
    result = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert result.exit_code == 0, result.output
    assert "1 job shown" in result.output


async def _put_dead(settings: Settings, properties: Any) -> None:
    """Put a message with ``properties`` in the dead-letter queue of ``WORK``, past jobsys."""
    await hostile_apps.publish_raw(
        settings, properties, exchange="jobsys.dead-letter", routing_key=f"{WORK}.dead"
    )


async def _dlq_command(settings: Settings, tmp_path: Path, *args: str) -> str:
    """The output of ``jobsys dlq ARGS`` on the hostile topology, which must exit 0."""
    topology_path = tmp_path / "topology.yaml"
    topology_path.write_text(hostile_apps.TOPOLOGY_YAML, encoding="utf-8")
    common = ["--topology", str(topology_path), "--url", settings.url]
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["dlq", *args, *common], catch_exceptions=False
    )
    assert result.exit_code == 0, (args, result.output)
    return result.output


async def test_dlq_list_show_and_replay_on_the_command_line_work_past_a_message_not_utf8(
    vhost_settings: Settings, loaded: LoadedTopology, tmp_path: Path
) -> None:
    # A dead-letter queue holding a job whose type and a header name are not UTF-8, between two
    # ordinary ones: each dlq command an operator runs answers for the whole queue (exit 0),
    # shows the bad bytes escaped, and replays all three.
    before, bad, after = "dlq-before", "dlq-not-utf8", "dlq-after"
    for job_id, replace in ((before, {}), (bad, {_PLACEHOLDER: _INVALID, b"\x04RRRR": _INVALID})):
        props = hostile_apps.raw_properties(
            job_type="QQQQ" if replace else "quick",
            headers={"jobsys-job-id": job_id, "RRRR": "v"},
            replace=replace,
        )
        await _put_dead(vhost_settings, props)
    await _put_dead(vhost_settings, hostile_apps.raw_properties(headers={"jobsys-job-id": after}))

    async def dlq_cli(*args: str) -> str:
        output = await _dlq_command(vhost_settings, tmp_path, *args)
        assert "\xff" not in output and "\ufffd" not in output, output
        return output

    listed = await dlq_cli("list", WORK)
    assert "3 jobs shown" in listed
    assert before in listed and bad in listed and after in listed
    shown = await dlq_cli("show", WORK, bad)
    assert "\\xff\\xfeQQ" in shown  # the type and the header name, escaped
    assert after in await dlq_cli("show", WORK, after)
    replayed = await dlq_cli("replay", WORK)
    assert "replayed 3 jobs" in replayed
    assert await queue_depth(vhost_settings, f"{WORK}.dead") == 0
    assert await queue_depth(vhost_settings, WORK) == 3


async def test_dlq_commands_read_a_dead_letter_queue_holding_what_no_python_client_decodes(
    vhost_settings: Settings, loaded: LoadedTopology, tmp_path: Path
) -> None:
    # Put there by the broker's own dead-lettering (a TTL, a delivery limit) or by another
    # client: a timestamp in microseconds, and a header table nested past Python's recursion.
    stamped = hostile_apps.raw_properties(
        headers={"jobsys-job-id": "dlq-stamped", "sent": datetime.fromtimestamp(_HEADER_S, UTC)},
        timestamp=datetime.fromtimestamp(_PROPERTY_S, UTC),
        replace={
            b"T" + struct.pack(">Q", _HEADER_S): b"T" + struct.pack(">Q", _MICROSECONDS),
            struct.pack(">Q", _PROPERTY_S): struct.pack(">Q", _NANOSECONDS),
        },
    )
    for props in (stamped, hostile_apps.nested_headers_properties(2_000)):
        await _put_dead(vhost_settings, props)

    def dlq_cli(*args: str) -> Awaitable[str]:
        return _dlq_command(vhost_settings, tmp_path, *args)

    # aio-pika made a datetime of the integer, which failed the whole command ("cannot reach
    # the broker": the OSError of a year past 9999).
    listed = await dlq_cli("list", WORK)
    assert "2 jobs shown" in listed and "dlq-stamped" in listed
    # The unreadable one says why in the list, where its error headers would have been.
    assert "DecodeError" in listed and "its header table could not be decoded" in listed
    assert f"sent: {_MICROSECONDS}" in await dlq_cli("show", WORK, "dlq-stamped")
    assert "replayed 2 jobs" in await dlq_cli("replay", WORK)
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        await wait_until(lambda: worker.stats.done == 1, what="the stamped job done")
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the unreadable one dead")
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert HEADER_UNREADABLE_HEADERS in dead.headers


# -- F3: CC and BCC on a job published past jobsys -----------------------------------------------


async def test_a_cc_job_from_past_jobsys_is_retried_and_dead_lettered_in_its_own_queue_only(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    # CC/BCC naming the keys that reach hx.other through the delay levels, the due exchange and
    # the dead-letter exchange: were the retry or the dead-letter publish to carry them, the
    # broker would put copies in hx.other (run there too) and hx.other.dead.
    layout = loaded.topology.delay_layout
    job_id = new_job_id()
    props = hostile_apps.raw_properties(
        job_type="fails_twice",
        headers={
            "jobsys-job-id": job_id,
            "CC": [layout.route(OTHER, 1).routing_key, layout.route(OTHER, 0).routing_key],
            "BCC": [f"{OTHER}.dead"],
        },
    )
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        await hostile_apps.publish_raw(vhost_settings, props)
        await wait_until(lambda: worker.stats.dead_lettered >= 1, what="the job dead-lettered")
        await asyncio.sleep(2.5)  # room for a copy through the 1 s level, were there one
        assert worker.stats.dead_lettered == 1
    assert SEEN[job_id] == 2  # max_attempts: 2, both in hx.work
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert dead.headers["jobsys-job-id"] == job_id
    assert not {"CC", "BCC"} & set(dead.headers)
    assert await drain_dead(vhost_settings, f"{OTHER}.dead") == []
    assert await queue_depth(vhost_settings, OTHER) == 0
    assert await queue_depth(vhost_settings, WORK) == 0


# -- F1: headers that leave no room for the dead-letter record ----------------------------------


def _padding(job_type: str, total_bytes: int) -> dict[str, str]:
    """Headers that make the message's encoded properties exactly ``total_bytes``."""
    headers = {f"pad{i:05d}": "v" * 200 for i in range(total_bytes // 214 - 1)}
    size = len(hostile_apps.raw_properties(job_type=job_type, headers=headers).marshal())
    headers["pad99999"] = "v" * (total_bytes - size - 14)  # 1 + 8 name + 1 type + 4 length
    assert len(hostile_apps.raw_properties(job_type=job_type, headers=headers).marshal()) == (
        total_bytes
    )
    return headers


#: The most one frame carries (131072 on the broker's default frame_max, less the frame's own 20
#: bytes), less 30: the broker takes the message, but no retry or dead-letter copy would fit.
FULL_FRAME = 131_072 - 20 - 30


@pytest.mark.parametrize("job_type", ["fails", "fails_twice"])
async def test_a_job_whose_headers_leave_no_room_for_its_record_is_dead_lettered_trimmed(
    vhost_settings: Settings,
    loaded: LoadedTopology,
    job_type: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    props = hostile_apps.raw_properties(job_type=job_type, headers=_padding(job_type, FULL_FRAME))
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        # An innocent job in flight on the same connection while the poison is settled.
        [innocent] = await publish(vhost_settings, loaded, "quick", [{"sleep_s": 1.0}])
        await wait_until(lambda: SEEN[innocent] == 1, what="the innocent job running")
        await hostile_apps.publish_raw(vhost_settings, props)
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the poison dead-lettered")
        await wait_until(lambda: worker.stats.done == 1, what="the innocent job done")
    assert SEEN[innocent] == 1, "a job on the same connection ran again"
    assert "connection to the broker lost" not in caplog.text
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    headers = dead.headers
    assert "pad00000" not in headers
    assert str(headers["jobsys-dropped-headers"]).startswith(f"{FULL_FRAME // 214 + 1} headers")
    reason = str(headers["jobsys-dead-letter-reason"])
    assert "original headers dropped" in reason and "one AMQP frame" in reason
    if job_type == "fails_twice":
        assert "cannot be retried" in reason
    assert headers["jobsys-error-type"] == "RuntimeError"
    assert await queue_depth(vhost_settings, WORK) == 0


async def test_a_worker_that_starts_with_a_full_frame_poison_at_the_head_serves_the_queue(
    vhost_settings: Settings, loaded: LoadedTopology
) -> None:
    props = hostile_apps.raw_properties(job_type="fails", headers=_padding("fails", FULL_FRAME))
    await hostile_apps.publish_raw(vhost_settings, props)
    good = await publish(vhost_settings, loaded, "quick", [{}] * 4)
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        await wait_until(lambda: _ran(good), what="the jobs behind it run")
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="it is dead-lettered")
    assert all(SEEN[job_id] == 1 for job_id in good)
    assert await queue_depth(vhost_settings, WORK) == 0


# -- F7: an async handler that blocks the event loop ---------------------------------------------


async def test_an_async_handler_blocking_past_its_deadline_fails_instead_of_succeeding(
    vhost_settings: Settings, loaded: LoadedTopology, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        [job_id] = await publish(vhost_settings, loaded, "blocks", [{"block_s": 2.5}])
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the job dead-lettered")
        assert worker.stats.done == 0
    assert f"while running {job_id} (blocks)" in caplog.text
    [dead] = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert dead.headers["jobsys-error-type"] == "jobsys.errors.LoopBlocked"
    assert "without yielding to the event loop" in str(dead.headers["jobsys-error-message"])


async def test_a_handler_blocking_past_the_heartbeat_is_not_rerun_every_heartbeat(
    vhost_settings: Settings, loaded: LoadedTopology, caplog: pytest.LogCaptureFixture
) -> None:
    settings = vhost_settings.with_overrides(heartbeat_s=2)
    async with running_worker(hostile_apps.app, loaded, settings) as worker:
        [job_id] = await publish(settings, loaded, "blocks", [{"block_s": 9}])
        await wait_until(
            lambda: worker.stats.dead_lettered == 1, timeout_s=60, what="the job dead-lettered"
        )
        other = await publish(settings, loaded, "other_quick", [{}])
        await wait_until(lambda: _ran(other), timeout_s=30, what="the other pool serving again")
        await asyncio.sleep(3)  # long enough for another redelivery, were there one
    assert SEEN[job_id] == 1, "the blocking job ran again"
    dead = await drain_dead(vhost_settings, f"{WORK}.dead")
    assert len(dead) == 1
    assert dead[0].headers["jobsys-error-type"] == "jobsys.errors.LoopBlocked"
    assert await queue_depth(vhost_settings, WORK) == 0


# -- F12, U8: sync handlers waiting for a thread ------------------------------------------------


async def test_a_sync_job_that_never_got_a_thread_is_not_reported_as_overrunning(
    vhost_settings: Settings, loaded: LoadedTopology, caplog: pytest.LogCaptureFixture
) -> None:
    options = WorkerOptions(queues=[WORK], threads=2)
    async with running_worker(hostile_apps.app, loaded, vhost_settings, options) as worker:
        ids = await publish(vhost_settings, loaded, "sync_hangs", [{"sleep_s": 4}] * 4)
        await wait_until(lambda: worker.stats.dead_lettered == 4, what="all four settled")
        started = [job_id for job_id in ids if SEEN[job_id]]
        assert len(started) == 2
        assert worker.lingering_threads == 2
        await wait_until(lambda: worker.lingering_threads == 0, timeout_s=10, what="threads idle")
    assert caplog.text.count("sync handler overran its deadline") == 2
    dead = {
        m.headers["jobsys-job-id"]: m.headers
        for m in await drain_dead(vhost_settings, f"{WORK}.dead")
    }
    for job_id in ids:
        error_type = dead[job_id]["jobsys-error-type"]
        if job_id in started:
            assert error_type == "TimeoutError"
        else:
            assert error_type == "jobsys.errors.HandlerThreadsBusy"
            assert "the job did not start" in str(dead[job_id]["jobsys-error-message"])
    assert all(SEEN[job_id] <= 1 for job_id in ids)


# -- hardening 16: a job never starts before its due time ----------------------------------------


@pytest.mark.parametrize("early_ms", [600, 3500])
async def test_a_job_that_arrives_before_its_due_time_never_starts_early(
    vhost_settings: Settings, loaded: LoadedTopology, early_ms: int
) -> None:
    # As if the broker's clock ran fast: the job reaches its queue before it is due (600 ms
    # early: held in the runner; 3.5 s: sent back through the delay levels, unrun).
    due = now_ms() + early_ms
    job_id = new_job_id()
    props = hostile_apps.raw_properties(
        job_type="quick", headers={"jobsys-job-id": job_id, "jobsys-due-at-ms": due}
    )
    async with running_worker(hostile_apps.app, loaded, vhost_settings) as worker:
        await hostile_apps.publish_raw(vhost_settings, props)
        await wait_until(lambda: SEEN[job_id] == 1, timeout_s=10, what="the job run")
        await wait_until(lambda: worker.stats.done == 1, what="the job acked")
        assert worker.stats.early == (1 if early_ms > 1000 else 0)
    started, carried_due = STARTED[job_id]
    assert started * 1000 >= due
    assert carried_due is not None and carried_due.timestamp() * 1000 == due
    assert SEEN[job_id] == 1
