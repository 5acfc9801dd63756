"""Job history without a broker: the topology key, the stream's retention arguments, events
on the wire, a job's state from its timeline, and the recorder's batching and failures."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsys.errors import TopologyLoadError
from jobsys.observe.history import HistoryRecorder
from jobsys.topology.entities import desired_entities
from jobsys.topology.loader import load_topology_text
from jobsys.wire.history import (
    HistoryEvent,
    decode_batch,
    decode_event,
    distinct,
    encode_batch,
    encode_event,
    job_state,
    mentions,
)
from tests.harness.worker_subprocess import wait_until

BASE = """\
version: 1
exchanges:
  e: {type: direct}
queues:
  q: {type: classic}
bindings:
  - {exchange: e, queue: q, routing_key: k}
job_types:
  j: {exchange: e, routing_key: k}
"""


def _event(kind: Any, attempt: int = 1, pid: int = 10, **details: Any) -> HistoryEvent:
    return HistoryEvent(kind, "job-1", "j", "q", attempt, 1_700_000_000_000, "host", pid, details)


# -- the topology --------------------------------------------------------------------------------


def test_history_is_off_unless_the_topology_asks() -> None:
    assert load_topology_text(BASE, "t.yaml").topology.history is None
    names = {q.name for q in desired_entities(load_topology_text(BASE, "t.yaml").topology).queues}
    assert "jobsys.history.events" not in names


def test_the_stream_is_declared_with_the_retention_asked_for() -> None:
    text = BASE + "history: {max_age: 2h, max_bytes: 33554432}\n"
    entities = desired_entities(load_topology_text(text, "t.yaml").topology)
    [stream] = [q for q in entities.queues if q.role == "history"]
    assert stream.name == "jobsys.history.events"
    assert stream.arguments["x-queue-type"] == "stream"
    assert stream.arguments["x-max-age"] == "7200s"
    assert stream.arguments["x-max-length-bytes"] == 33554432
    assert any(e.name == "jobsys.history" and e.type == "fanout" for e in entities.exchanges)


@pytest.mark.parametrize(
    ("history", "where", "words"),
    [
        ("{queues: [nope]}", "10:20: history.queues.0", "queue 'nope' is not declared"),
        ("{max_age: 5s}", "10:11: history.max_age", "at least 1m"),
        ("{max_age: soon}", "10:11: history.max_age", ""),
        ("{max_bytes: 10}", "10:11: history.max_bytes", "greater than or equal"),
        ("{max_bytes: '1GiB'}", "10:11: history.max_bytes", "integer"),
        ("{bogus: 1}", "10:11: history.bogus", "unknown key"),
        ("{queues: []}", "10:11: history.queues", "at least 1"),
        ("5", "10:1: history", "dictionary"),
    ],
)
def test_a_bad_history_section_is_reported_at_its_line_and_column(
    history: str, where: str, words: str
) -> None:
    with pytest.raises(TopologyLoadError) as caught:
        load_topology_text(BASE + f"history: {history}\n", "t.yaml")
    assert f"t.yaml:{where}" in str(caught.value)
    assert words in str(caught.value)


def test_a_topology_may_not_declare_the_history_names() -> None:
    text = BASE.replace(
        "  q: {type: classic}", "  q: {type: classic}\n  jobsys.history.events: {type: classic}"
    )
    with pytest.raises(TopologyLoadError, match=r"reserved|derives"):
        load_topology_text(text, "t.yaml")


def test_history_of_some_queues_only() -> None:
    history = load_topology_text(BASE + "history: {queues: [q]}\n", "t.yaml").topology.history
    assert history is not None and history.records("q") and not history.records("other")


# -- events --------------------------------------------------------------------------------------


def test_an_event_round_trips_and_long_texts_are_cut() -> None:
    event = _event("retried", error_message="x" * 5000, delay_s=4.0)
    decoded = decode_event(encode_event(event))
    assert decoded is not None
    assert decoded.kind == "retried" and decoded.details["delay_s"] == 4.0
    assert len(decoded.details["error_message"]) <= 1024


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"kind": "exploded"}', b'{"kind": "started"}', b"\xff\xfe"],
)
def test_what_is_not_an_event_is_skipped(body: bytes) -> None:
    assert decode_event(body) is None


def test_nan_in_details_is_refused_at_encoding_and_left_out_of_a_batch() -> None:
    with pytest.raises(ValueError):
        encode_event(_event("succeeded", duration_ms=float("nan")))
    batch = encode_batch([_event("started"), _event("succeeded", duration_ms=float("nan"))])
    assert [e.kind for e in decode_batch(batch)] == ["started"]


def test_a_batch_round_trips_and_skips_what_is_not_an_event() -> None:
    events = [_event("started"), _event("succeeded", duration_ms=1.5)]
    assert decode_batch(encode_batch(events)) == events
    assert decode_batch(b'[{"kind": "started"}, 5, null]') == []
    assert decode_batch(b"\xff") == []
    assert decode_batch(encode_event(events[0])) == [events[0]]  # a lone event too


_texts = st.text(max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    job_id=_texts,
    job_type=_texts,
    queue=_texts,
    host=_texts,
    attempt=st.integers(min_value=1, max_value=2**40),
    pid=st.integers(min_value=0, max_value=2**31),
    message=_texts,
    duration=st.floats(allow_nan=False, allow_infinity=False),
)
def test_the_event_template_writes_what_json_writes(
    job_id: str,
    job_type: str,
    queue: str,
    host: str,
    attempt: int,
    pid: int,
    message: str,
    duration: float,
) -> None:
    # The oracle: json.dumps of the event as a dict, as the encoder wrote it before the template.
    for details in ({}, {"error_message": message, "duration_ms": duration}):
        event = HistoryEvent("retried", job_id, job_type, queue, attempt, 17, host, pid, details)
        expected = {
            "kind": "retried",
            "job_id": job_id,
            "job_type": job_type,
            "queue": queue,
            "attempt": attempt,
            "at_ms": 17,
            "host": host,
            "pid": pid,
            "details": details,
        }
        oracle = json.dumps(expected, separators=(",", ":"), ensure_ascii=False).encode()
        assert encode_event(event) == oracle
        assert encode_batch([event, event]) == b"[" + oracle + b"," + oracle + b"]"


def test_text_that_is_not_unicode_is_written_escaped_and_spares_the_rest_of_the_batch() -> None:
    # A handler's exception message built from undecodable bytes holds lone surrogates, which
    # no UTF-8 encoder accepts; before, such an event made its batch unwritable for good, and
    # the worker's history stopped behind it.
    bad = _event("retried", error_message=b"caf\xe9".decode("utf-8", "surrogateescape"))
    worse = HistoryEvent("started", "id-\udc80", "j\ud800", "q", 1, 1, "h", 1, {})
    events = [_event("started"), bad, worse, _event("succeeded", duration_ms=2.0)]
    decoded = decode_batch(encode_batch(events))
    assert [e.kind for e in decoded] == ["started", "retried", "started", "succeeded"]
    assert decoded[1].details["error_message"] == "caf\\xe9"
    assert decoded[2].job_id == "id-\\x80" and decoded[2].job_type == "j\\ud800"
    assert decode_event(encode_event(bad)) == decoded[1]


@pytest.mark.parametrize("job_id", ["job-1", 'quo"te', "é✓", "tab\there", "back\\slash"])
def test_a_batch_is_found_by_the_job_ids_it_mentions(job_id: str) -> None:
    event = HistoryEvent("started", job_id, "j", "q", 1, 1, "h", 1)
    body = encode_batch([event])
    assert mentions(body, job_id)
    assert not mentions(body, job_id + "x")
    assert decode_batch(body)[0].job_id == job_id


# -- a job's state -------------------------------------------------------------------------------


def test_state_of_each_ending() -> None:
    assert job_state([]).state == "unknown"
    assert job_state([_event("started")]).summary == "running attempt 1 on host pid 10"
    assert job_state([_event("started"), _event("succeeded")]).state == "succeeded"
    waiting = job_state([_event("started"), _event("retried", delay_s=60)])
    assert waiting.state == "waiting" and "for attempt 2" in waiting.summary
    assert "2023-11-14 22:14:20" in waiting.summary  # at_ms + 60 s, in UTC
    dead = job_state([_event("started"), _event("dead_lettered", reason="gave up")])
    assert dead.summary == "dead-lettered at attempt 1 to q.dead: gave up"
    assert job_state([_event("cancelled")]).state == "cancelled"


def test_state_of_a_job_published_or_replayed_but_not_taken() -> None:
    assert job_state([_event("published")]).summary == "published, waiting in its queue"
    delayed = job_state([_event("published", delay_s=60)])
    assert delayed.summary == "published, delayed until 2023-11-14 22:14:20 UTC"
    replayed = job_state([_event("dead_lettered", reason="x"), _event("replayed")])
    assert replayed.state == "waiting" and "replayed" in replayed.summary


def test_an_attempt_started_twice_was_interrupted() -> None:
    events = [_event("started", pid=1), _event("started", pid=2), _event("succeeded", pid=2)]
    assert job_state(events).interrupted == (1,)


# -- the recorder --------------------------------------------------------------------------------


class _Sink:
    def __init__(self, fail: int = 0) -> None:
        self.batches: list[list[HistoryEvent]] = []
        self.fail = fail

    async def __call__(self, batch: Sequence[HistoryEvent]) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("stream unreachable")
        self.batches.append(list(batch))


async def test_recording_never_waits_and_events_are_written_in_batches() -> None:
    sink = _Sink()
    recorder = HistoryRecorder(sink, interval_s=0.01, batch=3)
    recorder.start()
    for _ in range(7):
        recorder.record(_event("started"))  # plain calls: nothing awaited
    await recorder.close()
    assert [len(b) for b in sink.batches] == [3, 3, 1]
    assert recorder.written == 7


async def test_a_failing_write_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    sink = _Sink(fail=3)
    recorder = HistoryRecorder(sink, interval_s=0.005, batch=1)
    recorder.start()
    with caplog.at_level(logging.INFO, logger="jobsys.observe.history"):
        for _ in range(5):
            recorder.record(_event("started"))
            await asyncio.sleep(0.02)
        await recorder.close()
    # The event whose write failed three times was kept and written on the fourth try.
    assert (recorder.failed, recorder.written, recorder.dropped) == (3, 5, 0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "could not be written" in warnings[0].getMessage()
    assert any("writing again" in r.getMessage() for r in caplog.records)


async def test_a_full_buffer_drops_the_oldest_events() -> None:
    sink = _Sink()
    recorder = HistoryRecorder(sink, buffer=3, batch=100)
    for attempt in range(1, 6):
        recorder.record(_event("started", attempt=attempt))
    assert recorder.dropped == 2
    await recorder.close()
    assert [e.attempt for e in sink.batches[0]] == [3, 4, 5]


async def test_a_batch_that_could_not_be_written_is_kept_in_order_for_the_next_try() -> None:
    sink = _Sink(fail=2)
    recorder = HistoryRecorder(sink, interval_s=0.001, batch=2)
    recorder.start()
    for attempt in range(1, 6):
        recorder.record(_event("started", attempt=attempt))
    await wait_until(lambda: recorder.written == 5, 10, "all written")
    await recorder.close()
    assert [e.attempt for b in sink.batches for e in b] == [1, 2, 3, 4, 5]
    assert (recorder.failed, recorder.dropped) == (4, 0)


async def test_a_kept_batch_gives_way_to_newer_events_when_the_buffer_is_full() -> None:
    written: list[int] = []

    async def sink(batch: Sequence[HistoryEvent]) -> None:
        if not written:
            written.append(0)
            # Recorded while the write was failing: the buffer has room for two more only.
            recorder.record(_event("started", attempt=4))
            recorder.record(_event("started", attempt=5))
            raise ConnectionError("stream unreachable")
        written.extend(e.attempt for e in batch)

    recorder = HistoryRecorder(sink, interval_s=0.001, buffer=4, batch=3)
    for attempt in range(1, 4):
        recorder.record(_event("started", attempt=attempt))
    recorder.start()
    await wait_until(lambda: recorder.written == 4, 10, "the rest written")
    await recorder.close()
    assert written[1:] == [2, 3, 4, 5]
    assert recorder.dropped == 1


async def test_closing_tries_a_refused_write_again_until_the_stream_takes_it() -> None:
    # Just after a broker restart the stream refuses for a moment: a producer closed then
    # still writes its last events.
    sink = _Sink(fail=3)
    recorder = HistoryRecorder(sink, interval_s=0.001, batch=2)
    for attempt in range(1, 6):
        recorder.record(_event("started", attempt=attempt))
    await recorder.close(timeout_s=30)
    assert [e.attempt for b in sink.batches for e in b] == [1, 2, 3, 4, 5]
    assert (recorder.failed, recorder.dropped, recorder.written) == (6, 0, 5)


async def test_closing_gives_up_on_a_stream_that_keeps_refusing_at_its_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = _Sink(fail=10**6)
    recorder = HistoryRecorder(sink, interval_s=0.001, batch=2)
    for attempt in range(1, 6):
        recorder.record(_event("started", attempt=attempt))
    with caplog.at_level(logging.WARNING, logger="jobsys.observe.history"):
        await asyncio.wait_for(recorder.close(timeout_s=0.2), 10)  # not a hang
    assert (recorder.dropped, recorder.written) == (5, 0)
    assert recorder.failed > 2  # tried more than once
    last = caplog.records[-1].getMessage()
    assert "5 events not written" in last and "ConnectionError: stream unreachable" in last


async def test_closing_gives_up_on_a_write_that_hangs_at_its_timeout() -> None:
    async def hanging(batch: Sequence[HistoryEvent]) -> None:
        await asyncio.Event().wait()

    recorder = HistoryRecorder(hanging, batch=2)
    recorder.record(_event("started"))
    await asyncio.wait_for(recorder.close(timeout_s=0.1), 10)
    assert (recorder.dropped, recorder.written) == (1, 0)


def test_a_batch_written_twice_shows_its_events_once() -> None:
    first, rerun = _event("started"), _event("started", pid=11)  # a real second start: kept
    assert distinct([first, first, rerun, first]) == [first, rerun]
    assert job_state([first, first]).interrupted == (1,)  # what a copy would look like
    assert job_state(distinct([first, first])).interrupted == ()


def test_events_never_carry_payloads_or_results() -> None:
    fields = set(json.loads(encode_event(_event("succeeded", result_bytes=3))))
    assert fields == {
        "kind",
        "job_id",
        "job_type",
        "queue",
        "attempt",
        "at_ms",
        "host",
        "pid",
        "details",
    }
