"""The fault tests' checker: every job lands in the right category (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobsys.errors import (
    BrokerBlockedError,
    ConnectionFailed,
    PayloadValidationError,
    PublishOutcomeUnknown,
    QueueFullError,
)
from jobsys.publish.producer import Receipt
from tests.harness.ledger import Ledger, publish_state_of


def receipt(job_id: str) -> Receipt:
    return Receipt(job_id, "task", "ex", "rk", "m-" + job_id)


def unknown(job_id: str) -> PublishOutcomeUnknown:
    return PublishOutcomeUnknown(f"job {job_id}: the connection was lost", job_id=job_id)


def full(job_id: str) -> QueueFullError:
    return QueueFullError(f"queue q is full: job {job_id} was not published", job_id=job_id)


@pytest.mark.parametrize(
    ("result", "state"),
    [
        (receipt("a"), "confirmed"),
        (unknown("a"), "unknown"),
        (full("a"), "failed"),
        (PayloadValidationError("bad"), "failed"),
        (
            ConnectionFailed("job a (task) was not published: the connection did not come back"),
            "failed",
        ),
        (BrokerBlockedError("blocked; it may still be published when the alarm clears"), "unknown"),
        (RuntimeError("who knows"), "unknown"),
    ],
)
def test_each_publish_result_maps_to_what_it_promises_about_the_job(
    result: Receipt | BaseException, state: str
) -> None:
    assert publish_state_of(result) == state


def test_a_confirmed_job_completed_once_is_ok_and_nothing_else() -> None:
    ledger = Ledger()
    ledger.record_publish("a", receipt("a"))
    ledger.record_run("start", "a")
    ledger.record_run("done", "a")
    result = ledger.check()
    assert result.ok == {"a"}
    assert result.counts() == {"ok": 1, "lost": 0, "recovered": 0, "unexpected": 0, "duplicated": 0}
    result.assert_ok()


def test_a_confirmed_job_left_in_its_queue_or_dead_letter_queue_is_not_lost() -> None:
    ledger = Ledger()
    ledger.record_many(["q", "d"], [receipt("q"), receipt("d")])
    ledger.queued["q"] += 1
    ledger.dead["d"] += 1
    assert ledger.check().ok == {"q", "d"}


def test_a_confirmed_job_that_started_but_never_finished_and_is_nowhere_is_lost() -> None:
    ledger = Ledger()
    ledger.record_publish("a", receipt("a"))
    ledger.record_run("start", "a")
    result = ledger.check()
    assert result.lost == {"a"}
    with pytest.raises(
        AssertionError, match=r"1 lost .*\n  a: publish confirmed; started 1, done 0"
    ):
        result.assert_ok()


def test_an_unknown_job_that_turned_up_is_recovered_and_one_that_did_not_is_fine() -> None:
    ledger = Ledger()
    ledger.record_many(["u1", "u2"], [unknown("u1"), unknown("u2")])
    ledger.dones["u1"] += 1
    result = ledger.check()
    assert result.recovered == {"u1"}
    assert not result.lost and not result.unexpected
    result.assert_ok()


def test_a_job_refused_for_certain_or_never_published_that_turns_up_is_unexpected() -> None:
    ledger = Ledger()
    ledger.record_publish("nacked", full("nacked"))
    ledger.queued["nacked"] += 1
    ledger.dones["stranger"] += 1
    result = ledger.check()
    assert result.unexpected == {"nacked", "stranger"}
    with pytest.raises(AssertionError, match="never published or refused") as raised:
        result.assert_ok()
    assert "nacked: publish failed (QueueFullError)" in str(raised.value)
    assert "stranger: publish never published" in str(raised.value)


def test_two_starts_two_completions_or_a_completed_job_still_queued_are_duplicates() -> None:
    ledger = Ledger()
    for job_id in ("twice-started", "twice-done", "done-and-queued"):
        ledger.record_publish(job_id, receipt(job_id))
    ledger.starts["twice-started"] += 2
    ledger.dones["twice-started"] += 1
    ledger.dones["twice-done"] += 2
    ledger.dones["done-and-queued"] += 1
    ledger.queued["done-and-queued"] += 1
    result = ledger.check()
    assert result.duplicated == {"twice-started", "twice-done", "done-and-queued"}
    assert not result.lost
    with pytest.raises(AssertionError, match="3 duplicated"):
        result.assert_ok()
    result.assert_ok(allowed_duplicates=result.duplicated)
    with pytest.raises(AssertionError, match="1 duplicated"):
        result.assert_ok(allowed_duplicates={"twice-started", "twice-done"})


def test_a_resubmission_upgrades_an_unknown_job_and_never_downgrades_a_confirmed_one() -> None:
    ledger = Ledger()
    ledger.record_publish("a", unknown("a"))
    ledger.record_publish("a", receipt("a"))
    ledger.record_publish("b", receipt("b"))
    ledger.record_publish("b", full("b"))
    assert ledger.confirmed == {"a", "b"}
    assert not ledger.failure


def test_handler_lines_are_read_from_the_record_file(tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    record.write_text("start a\ndone a\nstart b\nstart b\nnoise\neffect a\n", encoding="utf-8")
    ledger = Ledger()
    ledger.read_runs(record)
    ledger.read_runs(tmp_path / "missing.txt")
    assert ledger.starts == {"a": 1, "b": 2}
    assert ledger.dones == {"a": 1}


def test_the_failure_message_shows_at_most_ten_ids_per_category() -> None:
    ledger = Ledger()
    for i in range(25):
        ledger.record_publish(f"j{i:02d}", receipt(f"j{i:02d}"))
    message = ledger.check().problems()
    assert message.startswith("25 lost")
    assert "j09" in message and "j10" not in message
    assert "... and 15 more" in message
