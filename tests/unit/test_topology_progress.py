"""What apply says when the broker stops it half-way: exactly what it created, and what not."""

from __future__ import annotations

from jobsys.topology.entities import BindingSpec, ExchangeSpec, QueueSpec
from jobsys.topology.plan import PlanItem
from jobsys.topology.progress import ApplyProgress

ITEMS = (
    PlanItem("create", "exchange", "app.jobs", ExchangeSpec("app.jobs", "direct")),
    PlanItem("create", "exchange", "jobsys.delivery", ExchangeSpec("jobsys.delivery", "topic")),
    PlanItem("create", "queue", "app.work", QueueSpec("app.work", True, {}, "work")),
    PlanItem("ensure", "binding", "b1", BindingSpec("app.jobs", "app.work", "queue", "k")),
    PlanItem("ensure", "binding", "b2", BindingSpec("app.jobs", "app.work", "queue", "j")),
)


def test_a_refusal_of_the_first_item_says_nothing_was_changed() -> None:
    assert ApplyProgress(ITEMS).report() == (
        "apply stopped at exchange app.jobs; nothing was declared before it, so nothing was "
        "changed\n"
        "not declared: exchange app.jobs, exchange jobsys.delivery, queue app.work, 2 bindings\n"
        "run apply again once the cause is fixed: it declares only what the broker lacks"
    )


def test_a_refusal_half_way_lists_what_was_created_and_what_was_not_declared() -> None:
    progress = ApplyProgress(ITEMS)
    for _ in range(2):
        progress.advance()

    assert progress.report() == (
        "apply stopped at queue app.work, after declaring 2 of 5:\n"
        "  created exchange app.jobs\n"
        "  created exchange jobsys.delivery\n"
        "not declared: queue app.work, 2 bindings\n"
        "run apply again once the cause is fixed: it declares only what the broker lacks"
    )


def test_bindings_only_ensured_are_counted_apart_from_what_was_created() -> None:
    progress = ApplyProgress(ITEMS)
    for _ in range(4):
        progress.advance()

    assert [i.name for i in progress.created] == ["app.jobs", "jobsys.delivery", "app.work"]
    assert [i.name for i in progress.ensured] == ["b1"]
    assert "  ensured 1 binding\nnot declared: 1 binding\n" in progress.report()
