"""What the leading scheduler does next, and the state record it keeps in the broker (pure).

The state is one small JSON document: per schedule, the *cursor* (the last slot fired, or the
moment the schedule was first seen), plus who wrote it. ``next_fire`` turns a schedule, its
cursor and the time into the next slot to fire and when, by the schedule's catch-up policy:

- a slot no older than ``grace`` always fires (a leader change or a broker restart made it a
  little late; that is no downtime);
- of the slots older than that, ``none`` fires none, ``latest`` the newest one (when no recent
  slot follows it), ``all`` the newest ``max_catch_up`` of them, oldest first.

Slots fire in order, each after its jitter: a slot never fires before the one before it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jobsys.topology.schedules import Schedule, Timing, jitter_for, job_id_for

#: Version of the state document; a reader refuses one it does not know.
STATE_VERSION = 1


@dataclass(frozen=True)
class Cursor:
    """Where a schedule stands: its last slot fired (``fired``), or only when it was first
    seen (``fired`` false, ``slot_s`` that moment: slots after it fire)."""

    slot_s: int
    fired: bool
    at_ms: int = 0  # when it was written
    job_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """As stored."""
        return {
            "slot_s": self.slot_s,
            "fired": self.fired,
            "at_ms": self.at_ms,
            "job_id": self.job_id,
        }


@dataclass(frozen=True)
class Leader:
    """Who leads: written with every state, shown by ``jobsys schedules list``."""

    name: str
    since_ms: int


@dataclass(frozen=True)
class State:
    """Every schedule's cursor, and who wrote them."""

    cursors: dict[str, Cursor] = field(default_factory=dict)
    leader: Leader | None = None
    written_ms: int = 0

    def with_cursor(self, name: str, cursor: Cursor) -> State:
        """This state with ``name`` moved to ``cursor``; others kept as they are (also those of
        schedules this copy's file lacks: another copy may run a newer file)."""
        return State({**self.cursors, name: cursor}, self.leader, self.written_ms)

    def encode(self, leader: Leader, written_ms: int) -> bytes:
        """The state as its record's body."""
        document = {
            "version": STATE_VERSION,
            "written_ms": written_ms,
            "leader": {"name": leader.name, "since_ms": leader.since_ms},
            "cursors": {name: cursor.to_json() for name, cursor in sorted(self.cursors.items())},
        }
        return json.dumps(document, separators=(",", ":")).encode("utf-8")


class StateUnreadable(ValueError):
    """The state record is not one this version of jobsys wrote."""


def decode_state(body: bytes) -> State:
    """The state in a record's ``body``; ``StateUnreadable`` when it is not one."""
    try:
        document = json.loads(body.decode("utf-8"))
        if document.get("version") != STATE_VERSION:
            raise StateUnreadable(f"state version {document.get('version')!r} is unknown")
        cursors = {
            str(name): Cursor(
                slot_s=_int(raw["slot_s"]),
                fired=bool(raw["fired"]),
                at_ms=_int(raw.get("at_ms", 0)),
                job_id=raw.get("job_id") if isinstance(raw.get("job_id"), str) else None,
            )
            for name, raw in document["cursors"].items()
        }
        raw_leader = document.get("leader")
        leader = (
            Leader(str(raw_leader["name"]), _int(raw_leader["since_ms"]))
            if isinstance(raw_leader, dict)
            else None
        )
        return State(cursors, leader, _int(document.get("written_ms", 0)))
    except StateUnreadable:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StateUnreadable(f"state record is malformed: {type(exc).__name__}: {exc}") from None


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Fire:
    """The next slot of a schedule to fire, and when (``at_s``: the slot plus its jitter)."""

    name: str
    slot_s: int
    at_s: int
    job_id: str
    #: Slots passed over before this one by the catch-up policy.
    skipped: int = 0


def next_fire(name: str, schedule: Schedule, cursor: Cursor, now_s: int) -> Fire:
    """The next slot of ``schedule`` after ``cursor`` to fire, as of ``now_s``."""
    timing = schedule.timing()
    first = timing.next_after(cursor.slot_s)
    if first >= now_s - schedule.grace:
        return _fire(name, schedule, first)  # in time (or late by less than the grace)
    # Slots older than the grace were missed while no scheduler ran: the policy decides.
    recent = timing.next_after(max(cursor.slot_s, int(now_s - schedule.grace) - 1))
    old_end = int(now_s - schedule.grace)  # old slots are those before this
    wanted = {"none": 0, "latest": 1, "all": schedule.max_catch_up}[schedule.catch_up]
    if schedule.catch_up == "latest" and recent <= now_s:
        wanted = 0  # a recent slot stands for the downtime
    old = _newest(timing, cursor.slot_s, old_end, wanted)
    chosen = old[0] if old else recent
    skipped = _count(timing, cursor.slot_s, chosen)
    return _fire(name, schedule, chosen, skipped)


def _fire(name: str, schedule: Schedule, slot: int, skipped: int = 0) -> Fire:
    at = slot + jitter_for(name, slot, schedule.jitter)
    return Fire(name, slot, at, job_id_for(name, slot), skipped)


def _newest(timing: Timing, after_s: int, before_s: int, count: int) -> list[int]:
    """The newest ``count`` slots in ``(after_s, before_s)``, oldest first."""
    if count <= 0:
        return []
    found: list[int] = []
    # Walk back in windows that grow, so that a long downtime costs a few steps, not one per
    # slot missed.
    window = 3600
    floor = before_s
    while len(found) < count and floor > after_s:
        start = max(after_s, floor - window)
        chunk = [s for s in timing.slots(start, floor - 1)]
        found = chunk + found
        floor = start
        window *= 4
    return found[-count:]


def _count(timing: Timing, after_s: int, until_s: int, limit: int = 100_000) -> int:
    """How many slots lie in ``(after_s, until_s)`` (counted up to ``limit``)."""
    count = 0
    for _slot in timing.slots(after_s, until_s - 1):
        count += 1
        if count >= limit:
            break
    return count
