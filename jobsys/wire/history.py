"""Job history events: what one event says, its message form, and a job's state from its
timeline (pure, no I/O).

Events go to the topology's history stream (``history:`` in the topology) in batches: one
message per batch, its body a JSON array of events, so that recording costs the worker one
publish per few hundred jobs rather than two per job. An event never holds the job's payload or
result, only their sizes; error texts are truncated as in a dead-letter record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any, Literal

from jobsys.wire.deadletter import TEXT_LIMIT, truncate
from jobsys.wire.display import utc_time
from jobsys.wire.headers import escape_invalid

#: The AMQP type of a batch of history events, and of a reader's end marker.
EVENT_TYPE = "jobsys.history"
MARKER_TYPE = "jobsys.history-marker"
#: How many events a batch holds (a header, so a reader can count without decoding).
HEADER_EVENTS = "jobsys-events"

EventKind = Literal[
    "published",
    "replayed",
    "started",
    "succeeded",
    "retried",
    "dead_lettered",
    "cancelled",
    "waiting",
    "requeued",
]
_KINDS: frozenset[str] = frozenset(
    {
        "published",
        "replayed",
        "started",
        "succeeded",
        "retried",
        "dead_lettered",
        "cancelled",
        "waiting",
        "requeued",
    }
)


# Not frozen: a frozen dataclass costs ~2 us to build against ~0.4 us, and a worker with the
# history on builds two per job. Nothing mutates an event once recorded.
@dataclass(slots=True)
class HistoryEvent:
    """One moment in a job's life (treat as read-only)."""

    kind: EventKind
    job_id: str
    job_type: str
    queue: str
    attempt: int
    at_ms: int
    host: str
    pid: int
    #: What the kind has to say: ``duration_ms`` and ``result_bytes`` (succeeded),
    #: ``delay_s`` (retried, waiting), ``error_type``, ``error_message`` (retried,
    #: dead_lettered), ``reason`` (dead_lettered, retried).
    details: Mapping[str, Any] = field(default_factory=dict)


def _details(event: HistoryEvent) -> Mapping[str, Any]:
    details = event.details
    if details and any(isinstance(v, str) and len(v) > TEXT_LIMIT for v in details.values()):
        details = {
            key: truncate(value, TEXT_LIMIT) if isinstance(value, str) else value
            for key, value in details.items()
        }
    return details


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# The event object written by hand, in the field order of ``HistoryEvent``: a worker with the
# history on encodes two events per job, and a template costs half of ``json`` on a dict
# (tests/unit/test_history.py checks it against ``json.dumps``). ``kind`` is one of
# ``_KINDS`` and needs no quoting.
_TEMPLATE = (
    '{"kind":"%s","job_id":%s,"job_type":%s,"queue":%s,"attempt":%d,"at_ms":%d,'
    '"host":%s,"pid":%d,"details":%s}'
)
_quote = encode_basestring


def _event_text(event: HistoryEvent) -> str:
    """One event as compact JSON text (raises ValueError for NaN in its details)."""
    details = _details(event)
    return _TEMPLATE % (
        event.kind,
        _quote(event.job_id),
        _quote(event.job_type),
        _quote(event.queue),
        event.attempt,
        event.at_ms,
        _quote(event.host),
        event.pid,
        _ENCODER.encode(details) if details else "{}",
    )


def _event_bytes(event: HistoryEvent) -> bytes:
    """One event as UTF-8 JSON. Text that is not valid Unicode (a lone surrogate, as in the
    message of an exception built from undecodable bytes) is written escaped, never refused:
    one such event must not stop the history of every job after it."""
    text = _event_text(event)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _event_text(_valid_text(event)).encode()


def _valid_text(event: HistoryEvent) -> HistoryEvent:
    return HistoryEvent(
        kind=event.kind,
        job_id=escape_invalid(event.job_id),
        job_type=escape_invalid(event.job_type),
        queue=escape_invalid(event.queue),
        attempt=event.attempt,
        at_ms=event.at_ms,
        host=escape_invalid(event.host),
        pid=event.pid,
        details={
            key: escape_invalid(value) if isinstance(value, str) else value
            for key, value in event.details.items()
        },
    )


def encode_event(event: HistoryEvent) -> bytes:
    """One event as compact JSON, texts in ``details`` truncated (ValueError for NaN)."""
    return _event_bytes(event)


def encode_batch(events: Sequence[HistoryEvent]) -> bytes:
    """The message body of a batch: a JSON array of events. An event JSON cannot carry (NaN in
    its details) is left out rather than losing the batch."""
    try:
        text = "[" + ",".join([_event_text(event) for event in events]) + "]"
        return text.encode()
    except ValueError:  # NaN, or a lone surrogate (UnicodeEncodeError): event by event
        kept = []
        for event in events:
            try:
                kept.append(_event_bytes(event))
            except ValueError:
                continue
        return b"[" + b",".join(kept) + b"]"


def mentions(body: bytes, job_id: str) -> bool:
    """Whether a batch ``body`` may hold events of ``job_id``: a byte search for the id as the
    encoder writes it, so a reader decodes only the batches that matter."""
    return json.dumps(job_id, ensure_ascii=False)[1:-1].encode() in body


def decode_batch(body: bytes) -> list[HistoryEvent]:
    """The events of a batch ``body`` (anything that is not an event is skipped)."""
    try:
        data = json.loads(body)
    except ValueError:
        return []
    items = data if isinstance(data, list) else [data]
    return [event for item in items if (event := _event_of(item)) is not None]


def distinct(events: Sequence[HistoryEvent]) -> list[HistoryEvent]:
    """``events`` without the copies of one: a batch whose confirm was lost with the connection
    is written again (``jobsys.observe.history``), and may have reached the stream both times.
    An event is its kind, job, attempt, time (ms) and recording process."""
    seen: set[tuple[object, ...]] = set()
    kept = []
    for event in events:
        key = (event.kind, event.job_id, event.attempt, event.at_ms, event.host, event.pid)
        if key not in seen:
            seen.add(key)
            kept.append(event)
    return kept


def decode_event(body: bytes) -> HistoryEvent | None:
    """The event in ``body``; None for anything that is not one."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return _event_of(data)


def _event_of(data: Any) -> HistoryEvent | None:
    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        return None
    details = data.get("details")
    try:
        return HistoryEvent(
            kind=data["kind"],
            job_id=str(data["job_id"]),
            job_type=str(data["job_type"]),
            queue=str(data["queue"]),
            attempt=int(data["attempt"]),
            at_ms=int(data["at_ms"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            details=details if isinstance(details, dict) else {},
        )
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class JobState:
    """Where a job stands by its last events: ``state`` is one of ``unknown``, ``running``,
    ``waiting``, ``succeeded``, ``dead_lettered``, ``cancelled``; ``summary`` says it in words."""

    state: str
    summary: str
    #: Attempts that started and never ended (their worker died or lost its connection).
    interrupted: tuple[int, ...] = ()


def job_state(events: Sequence[HistoryEvent]) -> JobState:
    """The state of a job from its events, oldest first."""
    interrupted = _interrupted(events)
    if not events:
        return JobState("unknown", "no events recorded (history off, too old, or no such job)")
    last = events[-1]
    where = f"{last.host} pid {last.pid}"
    details = last.details
    if last.kind == "started":
        state = JobState("running", f"running attempt {last.attempt} on {where}", interrupted)
    elif last.kind == "succeeded":
        state = JobState("succeeded", f"succeeded at attempt {last.attempt}", interrupted)
    elif last.kind == "dead_lettered":
        reason = details.get("reason") or details.get("error_type") or "failed"
        state = JobState(
            "dead_lettered",
            f"dead-lettered at attempt {last.attempt} to {last.queue}.dead: {reason}",
            interrupted,
        )
    elif last.kind == "cancelled":
        state = JobState("cancelled", "cancelled before it ran", interrupted)
    elif last.kind in ("retried", "waiting"):
        due = last.at_ms + int(float(details.get("delay_s") or 0) * 1000)
        nxt = last.attempt + 1 if last.kind == "retried" else last.attempt
        state = JobState(
            "waiting", f"delayed until {utc_time(due)} UTC for attempt {nxt}", interrupted
        )
    elif last.kind == "published":
        delay = float(details.get("delay_s") or 0)
        if delay:
            until = utc_time(last.at_ms + int(delay * 1000))
            state = JobState("waiting", f"published, delayed until {until} UTC", interrupted)
        else:
            state = JobState("waiting", "published, waiting in its queue", interrupted)
    elif last.kind == "replayed":
        state = JobState("waiting", "replayed from its dead-letter queue, waiting", interrupted)
    else:  # requeued
        state = JobState("waiting", f"back in {last.queue}, waiting", interrupted)
    return state


def _interrupted(events: Sequence[HistoryEvent]) -> tuple[int, ...]:
    """Attempts whose ``started`` was followed by another ``started`` with no end between."""
    open_attempt: int | None = None
    cut = []
    for event in events:
        if event.kind == "started":
            if open_attempt is not None:
                cut.append(open_attempt)
            open_attempt = event.attempt
        else:
            open_attempt = None
    return tuple(cut)
