"""``schedules:`` in a topology file: when each fires (daylight saving time included), and what
the loader refuses, at its position."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsys.errors import TopologyLoadError
from jobsys.topology.loader import load_topology_text
from jobsys.topology.schedules import (
    CronTiming,
    EveryTiming,
    Schedule,
    check_cron,
    jitter_for,
    job_id_for,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())  # type: ignore[misc]


def local(slot: int, tz: ZoneInfo = BERLIN) -> str:
    return datetime.fromtimestamp(slot, UTC).astimezone(tz).isoformat()


def fires(expression: str, tz: ZoneInfo, after: int, until: int) -> list[str]:
    return [local(slot, tz) for slot in CronTiming(expression, tz).slots(after, until)]


# -- daylight saving time -----------------------------------------------------------------------


def test_a_local_time_that_does_not_exist_fires_once_just_after_the_gap() -> None:
    # Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 never happens that night.
    assert fires("30 2 * * *", BERLIN, utc(2026, 3, 28, 0), utc(2026, 3, 31, 0)) == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]


def test_a_repeated_local_time_fires_once_for_a_fixed_hour() -> None:
    # Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    assert fires("30 2 * * *", BERLIN, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12)) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]


def test_a_wildcard_hour_fires_in_both_passes_of_the_repeated_hour() -> None:
    assert fires("*/30 * * * *", BERLIN, utc(2026, 10, 24, 23, 45), utc(2026, 10, 25, 2, 0)) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]


def test_from_inside_the_second_pass_the_next_fire_is_never_the_first_pass_again() -> None:
    # cronsim, started at 02:00 CET (the second pass), names 02:30 CEST: an hour earlier. A
    # scheduler that fired 02:30 CEST and then looked for what follows must not fire it again.
    second_pass = utc(2026, 10, 25, 1, 0)  # 02:00+01:00
    timing = CronTiming("30 2 * * *", BERLIN)

    assert local(timing.next_after(second_pass)) == "2026-10-26T02:30:00+01:00"
    assert local(timing.next_after(utc(2026, 10, 25, 0, 30))) == "2026-10-26T02:30:00+01:00"


def test_new_york_spring_forward_and_fall_back() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.
    assert fires("15 2 * * *", NEW_YORK, utc(2026, 3, 7, 12), utc(2026, 3, 9, 12)) == [
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:15:00-04:00",
    ]
    assert fires("15 1 * * *", NEW_YORK, utc(2026, 10, 31, 12), utc(2026, 11, 2, 12)) == [
        "2026-11-01T01:15:00-04:00",
        "2026-11-02T01:15:00-05:00",
    ]


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(min_value=utc(2025, 1, 1), max_value=utc(2028, 12, 31)),
    expression=st.sampled_from(
        ["*/30 * * * *", "30 2 * * *", "0 * * * *", "15 1 * * 0", "0 3 1 * *", "*/7 1-3 * * *"]
    ),
    tz=st.sampled_from([BERLIN, NEW_YORK, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("UTC")]),
)
def test_slots_only_move_forward_and_chain_without_gaps(
    start: int, expression: str, tz: ZoneInfo
) -> None:
    timing = CronTiming(expression, tz)
    slot = timing.next_after(start)
    assert slot > start
    for _ in range(5):
        following = timing.next_after(slot)
        assert following > slot
        # Nothing in between: the slot after any moment between two slots is the second one.
        assert timing.next_after((slot + following) // 2) == following
        slot = following


# -- every ----------------------------------------------------------------------------------------


def test_every_counts_from_the_epoch_so_every_copy_finds_the_same_slots() -> None:
    timing = EveryTiming(300)

    assert timing.next_after(utc(2026, 1, 1, 10, 2, 59)) == utc(2026, 1, 1, 10, 5)
    assert timing.next_after(utc(2026, 1, 1, 10, 5)) == utc(2026, 1, 1, 10, 10)
    assert list(timing.slots(utc(2026, 1, 1, 10, 0), utc(2026, 1, 1, 10, 10))) == [
        utc(2026, 1, 1, 10, 5),
        utc(2026, 1, 1, 10, 10),
    ]


def test_the_previous_slot_is_the_newest_within_the_horizon() -> None:
    timing = EveryTiming(60)

    assert timing.previous_at_or_before(utc(2026, 1, 1, 0, 1, 30), 3600) == utc(2026, 1, 1, 0, 1)
    assert EveryTiming(86400).previous_at_or_before(utc(2026, 1, 1, 12), 60) is None


# -- names and jitter -----------------------------------------------------------------------------


def test_a_slot_names_its_job() -> None:
    assert job_id_for("nightly", utc(2026, 12, 1, 2)) == "nightly@2026-12-01T02:00:00Z"


def test_jitter_is_the_same_on_every_copy_and_below_the_bound() -> None:
    values = {jitter_for("sync", utc(2026, 1, 1, 0, m), 30) for m in range(60)}

    assert all(0 <= v < 30 for v in values)
    assert len(values) > 10
    assert jitter_for("sync", 123, 30) == jitter_for("sync", 123, 30)
    assert jitter_for("sync", 123, 0) == 0


def test_cron_aliases_are_written_out() -> None:
    assert check_cron("@daily") == "0 0 * * *"
    assert check_cron(" @Hourly ") == "0 * * * *"
    assert Schedule(job_type="t", cron="@weekly").describe() == "cron '0 0 * * 0' UTC"


# -- what the loader refuses ---------------------------------------------------------------------

HEAD = """\
version: 1
exchanges: {jobs: {type: direct}}
queues: {work: {type: classic}}
bindings: [{exchange: jobs, queue: work, routing_key: w}]
job_types: {report: {exchange: jobs, routing_key: w}}
schedules:
"""


def problems(entry: str) -> str:
    with pytest.raises(TopologyLoadError) as info:
        load_topology_text(HEAD + "  s: " + entry + "\n", "t.yaml")
    return str(info.value)


def test_a_valid_schedule_loads() -> None:
    loaded = load_topology_text(
        HEAD + '  nightly: {job_type: report, cron: "30 2 * * *", timezone: Europe/Berlin}\n'
        "  sync: {job_type: report, every: 5m, payload: {full: false}, catch_up: all}\n"
    )
    schedules = loaded.topology.schedules

    assert schedules["nightly"].describe() == "cron '30 2 * * *' Europe/Berlin"
    assert schedules["sync"].payload == {"full": False}
    assert schedules["nightly"].catch_up == "latest"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            '{job_type: report, cron: "61 * * * *"}',
            "t.yaml:7:25: schedules.s.cron: '61 * * * *' is",
        ),
        ('{job_type: report, cron: "* * *"}', "Wrong number of fields"),
        ('{job_type: report, cron: ""}', "Wrong number of fields"),
        ('{job_type: report, cron: "0 0 31 2 *"}', "Bad day-of-month"),
        ('{job_type: report, cron: "@fortnightly"}', "unknown cron alias"),
        ('{job_type: report, cron: "* * * * *\\n"}', "one line of ASCII"),
        ('{job_type: report, cron: "\\u0663 * * * *"}', "one line of ASCII"),
        ("{job_type: report, cron: 5}", "schedules.s.cron"),
        ('{job_type: report, cron: "' + "*" * 300 + '"}', "at most 200 characters"),
        ('{job_type: report, cron: "* * * * *", timezone: Mars/Olympus}', "unknown timezone"),
        ('{job_type: report, cron: "* * * * *", timezone: "../../etc/passwd"}', "unknown timezone"),
        ('{job_type: report, cron: "* * * * *", timezone: ""}', "IANA name"),
        ("{job_type: report, every: 0}", "t.yaml:7:25: schedules.s.every: every must be a whole"),
        ("{job_type: report, every: -5}", "schedules.s.every: a duration must be"),
        ("{job_type: report, every: 100000d}", "every must be at most 366d"),
        ("{job_type: report, every: 1e400}", "schedules.s.every"),
        ("{job_type: report, every: 250ms}", "whole number of seconds"),
        ("{job_type: report, every: 1m, timezone: Europe/Berlin}", "timezone applies to cron"),
        ("{job_type: report}", "give either cron or every"),
        ('{job_type: report, every: 1m, cron: "* * * * *"}', "give either cron or every"),
        ("{job_type: report, every: 10s, jitter: 10s}", "must be shorter than every"),
        ("{job_type: report, every: 1h, jitter: 2h}", "jitter must be at most 1h"),
        ("{job_type: report, every: 1h, jitter: 1.5}", "whole seconds"),
        ("{job_type: report, every: 1h, grace: 2d}", "grace must be at most 1d"),
        ("{job_type: report, every: 1h, catch_up: sometimes}", "'none', 'latest' or 'all'"),
        ("{job_type: report, every: 1h, max_catch_up: 0}", "schedules.s.max_catch_up"),
        ("{job_type: report, every: 1h, payload: {when: 2024-01-01}}", "quote dates"),
        ("{job_type: report, every: 1h, payload: {x: .nan}}", "payload must be JSON"),
        ("{job_type: reprt, every: 1h}", "job type 'reprt' is not declared; did you mean 'report'"),
        ("{job_type: report, every: 1h, crn: x}", "unknown key 'crn'; did you mean 'cron'"),
    ],
)
def test_a_bad_schedule_is_refused_at_its_position(entry: str, expected: str) -> None:
    assert expected in problems(entry)


def test_a_huge_payload_is_refused() -> None:
    assert "a schedule's payload has at most 65536" in problems(
        "{job_type: report, every: 1h, payload: {x: " + "a" * 70_000 + "}}"
    )


def test_a_schedule_for_a_malformed_job_type_is_not_called_undeclared() -> None:
    text = HEAD.replace("routing_key: w}}", "routing_key: w, priority: -1}}")
    with pytest.raises(TopologyLoadError) as info:
        load_topology_text(text + "  s: {job_type: report, every: 1h}\n")
    assert "job_types.report.priority" in str(info.value)
    assert "not declared" not in str(info.value)


def test_the_schedules_example_in_docs_topology_md_loads() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "topology.md").read_text("utf-8")
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", docs, flags=re.S) if "schedules:" in b]
    head = HEAD.replace("job_types: {report:", "job_types: {build_report:").replace(
        "schedules:\n", ""
    )
    head = head.replace(
        "routing_key: w}}", "routing_key: w}, sync_accounts: {exchange: jobs, routing_key: w}}"
    )
    loaded = load_topology_text(head + block)

    assert loaded.topology.schedules["sync"].jitter == 30
    assert loaded.topology.schedules["nightly-report"].timezone == "Europe/Berlin"
