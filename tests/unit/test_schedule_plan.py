"""What the leading scheduler fires next (pure): on time, within the grace, and after downtime by
the catch-up policy; and the state record it keeps, refused when it is not one jobsys wrote."""

from __future__ import annotations

import pytest

from jobsys.schedule.plan import (
    Cursor,
    Leader,
    State,
    StateUnreadable,
    decode_state,
    next_fire,
)
from jobsys.topology.schedules import Schedule

T0 = 1_800_000_000  # a whole minute (divisible by 60)


def every(seconds: int, **options: object) -> Schedule:
    return Schedule(job_type="t", every=seconds, **options)  # type: ignore[arg-type]


def test_the_next_slot_after_the_cursor_fires_on_time() -> None:
    fire = next_fire("s", every(60), Cursor(T0, fired=True), T0 + 10)

    assert (fire.slot_s, fire.at_s, fire.skipped) == (T0 + 60, T0 + 60, 0)
    assert fire.job_id == "s@2027-01-15T08:01:00Z"


def test_a_slot_late_by_less_than_the_grace_fires_whatever_the_policy() -> None:
    fire = next_fire("s", every(60, catch_up="none"), Cursor(T0, fired=True), T0 + 60 + 59)

    assert fire.slot_s == T0 + 60
    assert fire.skipped == 0


@pytest.mark.parametrize(
    ("catch_up", "slot", "skipped"),
    [
        ("none", T0 + 3660, 60),  # the next on-time slot; the 60 missed ones pass
        ("latest", T0 + 3600, 59),  # the newest missed slot
        ("all", T0 + 3060, 50),  # the newest ten, oldest first
    ],
)
def test_after_downtime_the_policy_decides(catch_up: str, slot: int, skipped: int) -> None:
    # Down for an hour (cursor at T0, now T0 + 3600 + 30), grace 10 s, slots every minute.
    schedule = every(60, catch_up=catch_up, grace=10, max_catch_up=10)
    fire = next_fire("s", schedule, Cursor(T0, fired=True), T0 + 3600 + 30)

    assert (fire.slot_s, fire.skipped) == (slot, skipped)


def test_latest_lets_a_slot_within_the_grace_stand_for_the_downtime() -> None:
    schedule = every(60, catch_up="latest", grace=40)
    fire = next_fire("s", schedule, Cursor(T0, fired=True), T0 + 3600 + 30)

    assert fire.slot_s == T0 + 3600
    assert fire.skipped == 59


def test_all_after_firing_the_oldest_goes_on_with_the_next_missed() -> None:
    schedule = every(60, catch_up="all", grace=10, max_catch_up=10)
    first = next_fire("s", schedule, Cursor(T0, fired=True), T0 + 3630)
    second = next_fire("s", schedule, Cursor(first.slot_s, fired=True), T0 + 3631)

    assert second.slot_s == first.slot_s + 60
    assert second.skipped == 0


def test_a_long_downtime_of_a_one_second_schedule_is_cheap_to_plan() -> None:
    schedule = every(1, catch_up="all", grace=0, max_catch_up=1000)
    fire = next_fire("s", schedule, Cursor(T0, fired=True), T0 + 30 * 86400)

    assert fire.slot_s == T0 + 30 * 86400 - 1000
    assert fire.skipped == 100_000  # counted up to a bound


def test_jitter_holds_the_fire_back_but_keeps_the_slot() -> None:
    fire = next_fire("s", every(3600, jitter=600), Cursor(T0, fired=True), T0)

    assert fire.slot_s == T0 + 1200 or fire.slot_s % 3600 == 0
    assert fire.slot_s <= fire.at_s < fire.slot_s + 600


def test_the_state_round_trips_and_keeps_what_it_does_not_know() -> None:
    state = State().with_cursor("a", Cursor(T0, fired=True, at_ms=5, job_id="a@x"))
    body = state.with_cursor("gone", Cursor(T0, fired=False)).encode(Leader("h:1:t", 7), 9)
    decoded = decode_state(body)

    assert decoded.cursors["a"] == Cursor(T0, fired=True, at_ms=5, job_id="a@x")
    assert "gone" in decoded.cursors
    assert decoded.leader == Leader("h:1:t", 7)
    assert decoded.written_ms == 9


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"version": 2, "cursors": {}}',
        b'{"version": 1}',
        b'{"version": 1, "cursors": {"a": {"slot_s": "1", "fired": true}}}',
        b'{"version": 1, "cursors": {"a": {"slot_s": true, "fired": true}}}',
        b'{"version": 1, "cursors": []}',
        b"9" * 5000,
    ],
)
def test_a_state_record_jobsys_did_not_write_is_refused(body: bytes) -> None:
    with pytest.raises(StateUnreadable):
        decode_state(body)
