"""A reference to an exchange or queue the file does not declare: the message says what IS
declared, which entries are declared but malformed, and the near name when one is close."""

from __future__ import annotations

import pytest

from jobsys.errors import TopologyLoadError
from jobsys.topology.loader import load_topology_text


def problems_of(text: str) -> list[str]:
    with pytest.raises(TopologyLoadError) as caught:
        load_topology_text(text, "t.yaml")
    return caught.value.problems


def test_a_typo_next_to_a_malformed_exchange_names_it_instead_of_saying_none_are_declared() -> None:
    text = """\
version: 1
exchanges:
  jobs: {type: topical}
queues:
  emails: {type: classic}
bindings:
  - {exchange: job, queue: emails, routing_key: "email.#"}
"""

    assert problems_of(text) == [
        "t.yaml:3:10: exchanges.jobs.type: Input should be 'direct', 'topic', 'fanout' or "
        "'headers'",
        "t.yaml:7:16: bindings.0.exchange: exchange 'job' is not declared; did you mean 'jobs'? "
        "(declared but malformed: jobs)",
    ]


def test_a_missing_queue_lists_the_well_formed_and_the_malformed_ones_apart() -> None:
    text = """\
version: 1
exchanges:
  jobs: {type: topic}
queues:
  emails: {type: classic}
  reports: {type: classic, durable: maybe}
bindings:
  - {exchange: jobs, queue: billing, routing_key: "email.#"}
"""

    assert problems_of(text)[1] == (
        "t.yaml:8:29: bindings.0.queue: queue 'billing' is not declared (declared: emails; "
        "declared but malformed: reports)"
    )


def test_a_job_type_whose_exchange_is_misspelt_gets_the_near_name() -> None:
    text = """\
version: 1
exchanges:
  billing.jobs: {type: topic}
  emails: {type: direct}
queues:
  q: {type: classic}
bindings:
  - {exchange: billing.jobs, queue: q, routing_key: "#"}
job_types:
  charge: {exchange: billing.job, routing_key: charge}
"""

    assert problems_of(text) == [
        "t.yaml:10:22: job_types.charge.exchange: exchange 'billing.job' is not declared; did "
        "you mean 'billing.jobs'? (declared: billing.jobs, emails)"
    ]


def test_nothing_close_gets_no_suggestion() -> None:
    text = """\
version: 1
exchanges:
  jobs: {type: topic}
queues:
  q: {type: classic}
bindings:
  - {exchange: jobs, queue: zzz, routing_key: "#"}
"""

    assert problems_of(text) == [
        "t.yaml:7:29: bindings.0.queue: queue 'zzz' is not declared (declared: q)"
    ]


def test_an_empty_section_still_says_none_are_declared() -> None:
    text = "version: 1\nbindings:\n  - {exchange: jobs, queue: q}\n"

    assert problems_of(text) == [
        "t.yaml:3:16: bindings.0.exchange: exchange 'jobs' is not declared (none are declared)",
        "t.yaml:3:29: bindings.0.queue: queue 'q' is not declared (none are declared)",
    ]


def test_a_long_list_of_declared_names_is_cut_short() -> None:
    queues = "".join(f"  q{i:02d}: {{type: classic}}\n" for i in range(30))
    text = f"version: 1\nexchanges:\n  jobs: {{type: topic}}\nqueues:\n{queues}bindings:\n"
    text += "  - {exchange: jobs, queue: zzz}\n"

    assert problems_of(text) == [
        "t.yaml:36:29: bindings.0.queue: queue 'zzz' is not declared (declared: q00, q01, q02, "
        "q03, q04, q05, q06, q07, q08, q09 and 20 more)"
    ]


def test_a_malformed_name_in_the_list_is_shown_escaped() -> None:
    text = """\
version: 1
exchanges:
  jobs: {type: topic}
queues:
  "bad\\nname": {type: classic}
bindings:
  - {exchange: jobs, queue: other, routing_key: "#"}
"""

    assert problems_of(text)[-1] == (
        "t.yaml:7:29: bindings.0.queue: queue 'other' is not declared (declared but malformed: "
        "'bad\\nname')"
    )
