"""Which queue of a weighted pool runs next (pure): smooth weighted round robin.

Each pick, every queue with a job waiting earns its weight in credit; the richest runs and pays
back what all the waiting queues earned together. While every queue has a backlog, a queue of
weight w starts exactly w of every ``sum(weights)`` jobs, spread out rather than in bursts
(weights 6, 3, 1 run ``a b a c a b a a b a``, never six ``a`` in a row), so a weight-1 queue
keeps moving however hard a weight-100 queue is flooded. A queue with nothing waiting earns
nothing and is skipped: its share goes to the others, and it comes back without a pile of
credit to spend in one burst (credit stays within one round of the weights).

This is the order jobs *start* in; strict priority inside one queue is the broker's, untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["WeightedPicker"]


class WeightedPicker:
    """Picks among queues by ``weights`` (whole numbers, at least 1)."""

    def __init__(self, weights: Sequence[int]) -> None:
        if not weights or any(w < 1 for w in weights):
            raise ValueError("weights must be whole numbers of at least 1, one or more")
        self.weights = list(weights)
        self.credit = [0] * len(weights)
        self._bound = sum(weights)

    def pick(self, waiting: Sequence[bool]) -> int | None:
        """The index of the queue to start a job from, among those with ``waiting[i]`` true;
        ``None`` when none has a job waiting (nothing changes then)."""
        earned = 0
        best: int | None = None
        for index, weight in enumerate(self.weights):
            if not waiting[index]:
                continue
            self.credit[index] += weight
            earned += weight
            if best is None or self.credit[index] > self.credit[best]:
                best = index
        if best is not None:
            self.credit[best] -= earned
            # While every queue waits, credit never leaves one round of the weights; queues
            # coming and going can push it a little past (found by a property test), so it is
            # held there: a queue back from idle never brings a burst, however the rest went.
            bound = self._bound
            for index, credit in enumerate(self.credit):
                if not -bound <= credit <= bound:
                    self.credit[index] = max(-bound, min(bound, credit))
        return best
