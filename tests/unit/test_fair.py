"""The weighted picker of a weighted pool (pure): exact shares under backlog, spread out, an idle
queue skipped, and credit that stays bounded whatever comes and goes."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobsys.consume.fair import WeightedPicker


def _picks(picker: WeightedPicker, waiting: list[bool], n: int) -> list[int]:
    picks = []
    for _ in range(n):
        index = picker.pick(waiting)
        assert index is not None
        picks.append(index)
    return picks


def test_under_backlog_every_round_of_the_weights_gives_each_queue_exactly_its_weight() -> None:
    picker = WeightedPicker([6, 3, 1])
    picks = _picks(picker, [True, True, True], 10_000)
    assert Counter(picks) == {0: 6000, 1: 3000, 2: 1000}
    for start in range(0, 10_000, 10):
        assert Counter(picks[start : start + 10]) == {0: 6, 1: 3, 2: 1}


def test_the_heaviest_queue_never_runs_its_whole_round_in_one_burst() -> None:
    picks = _picks(WeightedPicker([6, 3, 1]), [True, True, True], 10)
    longest = max(len(run) for run in re.split("[12]", "".join(map(str, picks))))
    assert longest <= 2, picks


def test_a_weight_1_queue_runs_once_in_every_101_beside_a_weight_100_queue() -> None:
    picks = _picks(WeightedPicker([100, 1]), [True, True], 101 * 50)
    positions = [i for i, queue in enumerate(picks) if queue == 1]
    assert len(positions) == 50
    assert max(b - a for a, b in itertools.pairwise(positions)) == 101


def test_an_idle_queue_is_skipped_and_its_share_goes_to_the_others() -> None:
    picks = _picks(WeightedPicker([6, 3, 1]), [True, False, True], 7000)
    assert Counter(picks) == {0: 6000, 2: 1000}


def test_nothing_waiting_picks_nothing_and_changes_nothing() -> None:
    picker = WeightedPicker([2, 1])
    picker.pick([True, True])
    before = list(picker.credit)
    assert picker.pick([False, False]) is None
    assert picker.credit == before


def test_a_queue_back_from_idle_brings_no_burst_of_saved_credit() -> None:
    picker = WeightedPicker([1, 1])
    _picks(picker, [True, False], 1000)  # queue 1 idle for a long time
    picks = _picks(picker, [True, True], 10)
    assert Counter(picks) == {0: 5, 1: 5}


@pytest.mark.parametrize("weights", [[], [0], [1, -1]])
def test_weights_below_1_or_none_at_all_are_refused(weights: list[int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WeightedPicker(weights)


@given(
    weights=st.lists(st.integers(1, 1000), min_size=1, max_size=8),
    seed=st.integers(0, 2**32),
)
def test_credit_stays_within_one_round_of_the_weights_whatever_comes_and_goes(
    weights: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    picker = WeightedPicker(weights)
    for _ in range(500):
        waiting = [rng.random() < 0.6 for _ in weights]
        picked = picker.pick(waiting)
        assert (picked is None) == (not any(waiting))
        assert picked is None or waiting[picked]
        assert max(abs(c) for c in picker.credit) <= sum(weights)


def test_credit_stays_bounded_in_the_case_the_property_test_once_found() -> None:
    weights = [341, 399, 133, 1, 122, 1, 1]
    rng = random.Random(0)
    picker = WeightedPicker(weights)
    for _ in range(500):
        picker.pick([rng.random() < 0.6 for _ in weights])
        assert max(abs(c) for c in picker.credit) <= sum(weights)
