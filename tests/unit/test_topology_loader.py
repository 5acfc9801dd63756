"""The topology loader: every problem reported at once, each as ``file:line:column: path: message``.

The messages are asserted whole: they are what a person reads when a file is wrong.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from jobsys.errors import TopologyLoadError, TopologyValidationError
from jobsys.topology.loader import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    LoadedTopology,
    load_topology,
    load_topology_text,
)

FIXTURES = Path(__file__).parent / "fixtures"

MINIMAL = """\
version: 1
exchanges:
  jobs: {type: topic}
queues:
  emails: {type: classic}
bindings:
  - {exchange: jobs, queue: emails, routing_key: "email.#"}
job_types:
  send_email: {exchange: jobs, routing_key: email.send}
"""


def problems_of(text: str, filename: str = "t.yaml") -> list[str]:
    """The problems ``text`` is refused with (fails the test when it loads)."""
    with pytest.raises(TopologyLoadError) as caught:
        load_topology_text(text, filename)
    return caught.value.problems


def fixture_problems(name: str) -> tuple[str, list[str]]:
    path = str(FIXTURES / name)
    with pytest.raises(TopologyLoadError) as caught:
        load_topology(path)
    return path, caught.value.problems


# -- files that load ---------------------------------------------------------------------------


def test_a_minimal_file_loads_with_the_positions_of_its_keys() -> None:
    loaded = load_topology_text(MINIMAL, "t.yaml")

    assert list(loaded.topology.job_types) == ["send_email"]
    assert loaded.locate(("job_types", "send_email", "routing_key")) == "t.yaml:9:45"
    assert loaded.locate(("queues", "emails")) == "t.yaml:5:11"


def test_locating_a_path_that_is_not_in_the_file_falls_back_to_its_nearest_parent() -> None:
    loaded = load_topology_text(MINIMAL, "t.yaml")

    # 'durable' is a default, written nowhere: the queue itself is the best position there is.
    assert loaded.locate(("queues", "emails", "durable")) == "t.yaml:5:11"
    assert loaded.locate(("nothing", "here")) == "t.yaml:1:1"


def test_a_file_on_disk_is_named_in_positions_by_the_path_it_was_given(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(MINIMAL, encoding="utf-8")

    loaded = load_topology(path)

    assert loaded.filename == str(path)
    assert loaded.locate(("exchanges", "jobs")) == f"{path}:3:9"


# -- YAML-level problems -----------------------------------------------------------------------


def test_a_yaml_syntax_error_is_reported_where_the_parser_stopped() -> None:
    assert problems_of("version: 1\nexchanges: [jobs\n") == [
        "t.yaml:3:1: YAML syntax: expected ',' or ']', but got '<stream end>'"
    ]


def test_a_tab_used_for_indentation_is_a_syntax_error_at_its_position() -> None:
    assert problems_of("version: 1\n\texchanges: {}\n") == [
        "t.yaml:2:1: YAML syntax: found character '\\t' that cannot start any token"
    ]


def test_a_duplicate_key_is_reported_with_the_position_of_the_first_one() -> None:
    text = "version: 1\nexchanges:\n  jobs: {type: topic}\n  jobs: {type: direct}\n"

    assert problems_of(text) == [
        "t.yaml:4:3: exchanges.jobs: duplicate key (first at line 3, column 3)"
    ]


def test_an_unknown_key_gets_a_did_you_mean_hint() -> None:
    text = "version: 1\nqueues:\n  emails:\n    type: classic\n    max_prority: 5\n"

    assert problems_of(text) == [
        "t.yaml:5:5: queues.emails.max_prority: unknown key 'max_prority'; "
        "did you mean 'max_priority'?"
    ]


def test_an_unknown_top_level_key_is_hinted_too() -> None:
    assert problems_of("version: 1\nqueus: {}\n") == [
        "t.yaml:2:1: queus: unknown key 'queus'; did you mean 'queues'?"
    ]


def test_an_unknown_key_like_nothing_known_lists_the_keys_that_are_allowed() -> None:
    assert problems_of("version: 1\nfrobnicate: 3\n") == [
        "t.yaml:2:1: frobnicate: unknown key 'frobnicate'; expected one of: version, exchanges, "
        "queues, bindings, job_types, delays, schedules, pools, history, namespace"
    ]


def test_a_value_of_the_wrong_type_is_reported_at_its_key() -> None:
    text = "version: 1\nqueues:\n  emails:\n    type: classic\n    max_priority: lots\n"

    assert problems_of(text) == [
        "t.yaml:5:5: queues.emails.max_priority: Input should be a valid integer, unable to "
        "parse string as an integer"
    ]


def test_a_mapping_written_as_a_scalar_is_reported_at_its_key() -> None:
    assert problems_of("version: 1\nexchanges:\n  jobs: topic\n") == [
        "t.yaml:3:3: exchanges.jobs: Input should be a valid dictionary or instance of Exchange"
    ]


def test_a_missing_required_key_is_reported_at_the_mapping_that_lacks_it() -> None:
    assert problems_of("version: 1\nqueues:\n  emails:\n    durable: true\n") == [
        "t.yaml:3:3: queues.emails.type: required key is missing"
    ]


def test_a_missing_version_is_reported_at_the_top_of_the_file() -> None:
    assert problems_of("exchanges: {}\n") == ["t.yaml:1:1: version: required key is missing"]


def test_an_unsupported_version_is_refused() -> None:
    assert problems_of("version: 2\n") == ["t.yaml:1:1: version: Input should be 1"]


def test_a_bad_duration_says_how_to_write_one() -> None:
    text = "version: 1\nqueues:\n  emails: {type: classic, message_ttl: 5 minutes}\n"

    assert problems_of(text) == [
        "t.yaml:3:27: queues.emails.message_ttl: '5 minutes' is not a duration; write a number "
        "with a unit: 250ms, 90s, 5m, 2h, 30d, or units together: 1h30m"
    ]


def test_a_model_rule_spanning_two_keys_is_reported_at_their_mapping() -> None:
    text = "version: 1\nqueues:\n  q: {type: classic, consumer: {concurrency: 5, prefetch: 2}}\n"

    assert problems_of(text) == [
        "t.yaml:3:22: queues.q.consumer: prefetch (2) is below concurrency (5): the pool "
        "could never run that many jobs at once"
    ]


def test_shape_problems_are_all_reported_at_once_in_file_order() -> None:
    path, problems = fixture_problems("many_problems.yaml")

    assert problems == [
        f"{path}:5:3: exchanges.jobs: duplicate key (first at line 4, column 3)",
        f"{path}:6:25: exchanges.audit.durible: unknown key 'durible'; did you mean 'durable'?",
        f"{path}:10:5: queues.emails.max_priority: Input should be a valid integer, unable to "
        "parse string as an integer",
        f"{path}:11:3: queues.reports.type: required key is missing",
    ]


def test_a_top_level_list_is_not_a_topology() -> None:
    assert problems_of("- version: 1\n") == [
        "t.yaml:1:1: a topology file is a mapping with version: 1"
    ]


def test_a_top_level_scalar_is_not_a_topology() -> None:
    assert problems_of("hello\n") == ["t.yaml:1:1: a topology file is a mapping with version: 1"]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_an_empty_file_is_reported_as_empty(text: str) -> None:
    assert problems_of(text) == ["t.yaml:1:1: the file is empty"]


def test_a_non_string_key_is_refused() -> None:
    text = "version: 1\nexchanges:\n  jobs: {type: topic}\n  ? [a, b]\n  : {type: topic}\n"

    assert problems_of(text) == ["t.yaml:4:5: exchanges: keys must be plain strings"]


# -- hostile input -----------------------------------------------------------------------------


def test_python_tags_are_refused_and_never_run_anything(tmp_path: Path) -> None:
    marker = tmp_path / "side-effect"
    command = f"touch {marker}"
    text = (
        "version: 1\n"
        f"exchanges: !!python/object/apply:os.system [{command!r}]\n"
        f"queues: !!python/object/new:os.system {{args: [{command!r}]}}\n"
        f"job_types: !!python/object/apply:os.system {command!r}\n"
    )

    problems = problems_of(text)

    assert not marker.exists(), "a YAML tag ran a shell command"
    assert problems == [
        "t.yaml:2:12: exchanges: unsupported tag tag:yaml.org,2002:python/object/apply:os.system",
        "t.yaml:3:9: queues: unsupported tag tag:yaml.org,2002:python/object/new:os.system",
        "t.yaml:4:12: job_types: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'",
    ]


def test_the_same_command_really_runs_under_an_unsafe_loader_so_the_marker_would_show_it(
    tmp_path: Path,
) -> None:
    # Guards the test above: its payload is live, so "no marker" means "not run".
    import yaml

    marker = tmp_path / "side-effect"
    yaml.load(f"!!python/object/apply:os.system ['touch {marker}']", Loader=yaml.UnsafeLoader)

    assert marker.exists()


def test_a_tag_on_a_list_is_not_silently_dropped() -> None:
    text = MINIMAL.replace(
        "send_email: {exchange: jobs, routing_key: email.send}",
        "send_email:\n    exchange: jobs\n    routing_key: email.send\n"
        "    retry: {dont_retry: !!omap [a, b]}",
    )

    assert problems_of(text) == [
        "t.yaml:12:25: job_types.send_email.retry.dont_retry: unsupported tag "
        "tag:yaml.org,2002:omap"
    ]


def test_merge_keys_are_refused() -> None:
    text = "version: 1\nbase: &base {type: topic}\nexchanges:\n  jobs:\n    <<: *base\n"

    assert problems_of(text) == [
        "t.yaml:2:1: base: unknown key 'base'; expected one of: version, exchanges, queues, "
        "bindings, job_types, delays, schedules, pools, history, namespace",
        "t.yaml:4:3: exchanges.jobs.type: required key is missing",
        "t.yaml:5:5: exchanges.jobs: merge keys (<<) are not supported",
    ]


def test_plain_anchors_and_aliases_still_work() -> None:
    text = MINIMAL.replace(
        "queues:\n  emails: {type: classic}",
        "queues:\n  emails: &q {type: classic}\n  reports: *q",
    )

    loaded = load_topology_text(text)

    assert loaded.topology.queues["reports"] == loaded.topology.queues["emails"]


def test_a_billion_laughs_alias_bomb_is_stopped_quickly() -> None:
    path = str(FIXTURES / "billion_laughs.yaml")
    started = time.monotonic()

    with pytest.raises(TopologyLoadError) as caught:
        load_topology(path)

    # A generous bound: a full expansion is 10**9 nodes and would take hours.
    assert time.monotonic() - started < 10
    assert caught.value.problems == [
        f"{path}:2:64: too many nodes: over 100000 keys, values and list items once aliases are "
        "expanded (99984 of them repeat an anchor); is an alias expanding too far?"
    ]


def test_an_alias_used_inside_its_own_anchor_is_refused_not_a_recursion_error() -> None:
    assert problems_of("version: 1\nexchanges: &x {jobs: *x}\n") == [
        "t.yaml:2:12: exchanges.jobs: an alias is used inside its own anchor"
    ]


def test_nesting_deeper_than_the_limit_is_refused_not_a_recursion_error() -> None:
    depth = 2000  # far past what Python's recursion limit allows the composer
    text = "version: 1\nexchanges: " + "[" * depth + "]" * depth + "\n"

    assert problems_of(text) == [
        f"t.yaml:2:{11 + MAX_DEPTH}: YAML syntax: nested deeper than {MAX_DEPTH} levels"
    ]


def test_a_file_over_the_size_cap_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("version: 1\n" + "#" * MAX_FILE_BYTES, encoding="utf-8")

    with pytest.raises(TopologyLoadError) as caught:
        load_topology(path)

    assert caught.value.problems == [
        f"{path}:1:1: file is {MAX_FILE_BYTES + 11} bytes; topology files are capped at 1 MiB"
    ]


def test_text_over_the_size_cap_is_refused_too() -> None:
    assert problems_of("version: 1\n" + "#" * MAX_FILE_BYTES) == [
        "t.yaml:1:1: topology files are capped at 1 MiB"
    ]


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("version: 1\n# café\n".encode("latin-1"))

    with pytest.raises(TopologyLoadError) as caught:
        load_topology(path)

    assert caught.value.problems == [f"{path}:1:1: file is not UTF-8 text"]


def test_a_missing_file_is_reported_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(TopologyLoadError) as caught:
        load_topology(path)

    assert caught.value.problems == [f"{path}:1:1: cannot read file: No such file or directory"]


def test_a_directory_is_not_a_topology_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyLoadError) as caught:
        load_topology(tmp_path)

    assert caught.value.problems == [
        f"{tmp_path}:1:1: cannot read file: it is a directory, not a regular file"
    ]


# -- cross-reference problems ------------------------------------------------------------------


def test_dangling_references_and_unroutable_job_types_are_all_reported_at_once() -> None:
    path = str(FIXTURES / "dangling.yaml")

    with pytest.raises(TopologyValidationError) as caught:
        load_topology(path)

    assert caught.value.problems == [
        f"{path}:8:16: bindings.1.exchange: exchange 'job' is not declared; did you mean "
        "'jobs'? (declared: jobs)",
        f"{path}:8:28: bindings.1.queue: queue 'email' is not declared; did you mean 'emails'? "
        "(declared: emails)",
        f"{path}:14:15: job_types.send_sms.exchange: exchange 'sms' is not declared "
        "(declared: jobs)",
        f"{path}:17:5: job_types.lost: job type 'lost' reaches no queue (exchange 'jobs', "
        "routing key 'billing.charge'); bindings on 'jobs': 'email.#' -> emails",
    ]


def test_shape_and_cross_reference_problems_are_reported_in_one_run() -> None:
    text = """\
version: 1
exchanges:
  jobs: {type: topic}
queues:
  emails: {type: classic, max_lenght: 10}
bindings:
  - {exchange: jobs, queue: emails, routing_key: "email.#"}
job_types:
  send_email: {exchange: jobs, routing_key: email.send, timeout: 45m}
  send_sms: {exchange: sms, routing_key: sms.send}
"""

    assert problems_of(text) == [
        "t.yaml:5:27: queues.emails.max_lenght: unknown key 'max_lenght'; did you mean "
        "'max_length'?",
        "t.yaml:9:66: job_types.send_email.timeout: timeout must be above 0 and below 30m, the "
        "broker's default consumer_timeout",
        "t.yaml:10:24: job_types.send_sms.exchange: exchange 'sms' is not declared "
        "(declared: jobs)",
    ]


def test_a_reference_to_a_malformed_entry_is_not_reported_as_undeclared() -> None:
    text = """\
version: 1
exchanges:
  jobs: {type: topical}
queues:
  emails: {type: classic, durable: maybe}
bindings:
  - {exchange: jobs, queue: emails, routing_key: "email.#"}
job_types:
  send_email: {exchange: jobs, routing_key: email.send}
"""

    problems = problems_of(text)

    assert [p.split(": ")[1] for p in problems] == ["exchanges.jobs.type", "queues.emails.durable"]


def test_routing_is_not_judged_while_a_binding_is_malformed() -> None:
    text = """\
version: 1
exchanges:
  jobs: {type: topic}
queues:
  emails: {type: classic}
bindings:
  - {exchange: jobs, queue: emails, routing_key: "#", extra: 1}
  - {exchange: job, queue: emails, routing_key: "email.#"}
job_types:
  send_email: {exchange: jobs, routing_key: email.send}
"""

    assert problems_of(text) == [
        "t.yaml:7:55: bindings.0.extra: unknown key 'extra'; expected one of: exchange, queue, "
        "routing_key, match, headers",
        "t.yaml:8:16: bindings.1.exchange: exchange 'job' is not declared; did you mean 'jobs'? "
        "(declared: jobs)",
    ]


def test_a_duplicate_key_does_not_hide_cross_reference_problems() -> None:
    text = MINIMAL.replace(
        "  emails: {type: classic}\n", "  emails: {type: classic}\n  emails: {type: classic}\n"
    ).replace("exchange: jobs, routing_key: email.send", "exchange: jobz, routing_key: email.send")

    assert problems_of(text) == [
        "t.yaml:6:3: queues.emails: duplicate key (first at line 5, column 3)",
        "t.yaml:10:26: job_types.send_email.exchange: exchange 'jobz' is not declared; did you "
        "mean 'jobs'? (declared: jobs)",
    ]


def test_an_error_outside_the_named_entries_leaves_cross_references_for_the_next_run() -> None:
    text = (
        MINIMAL.replace(
            "exchange: jobs, routing_key: email.send", "exchange: jobz, routing_key: email.send"
        )
        + "delays: {max_delay: 1d}\n"
    )

    assert problems_of(text) == ["t.yaml:10:1: delays: max_delay must be at least 30d"]


def test_a_job_type_that_reaches_no_queue_is_reported_with_its_position() -> None:
    text = MINIMAL.replace("routing_key: email.send", "routing_key: mail.send")

    assert problems_of(text) == [
        "t.yaml:9:15: job_types.send_email: job type 'send_email' reaches no queue (exchange "
        "'jobs', routing key 'mail.send'); bindings on 'jobs': 'email.#' -> emails"
    ]


def test_a_job_type_on_an_exchange_without_bindings_says_so() -> None:
    text = MINIMAL.replace(
        "  jobs: {type: topic}\n", "  jobs: {type: topic}\n  other: {type: topic}\n"
    )
    text = text.replace("send_email: {exchange: jobs,", "send_email: {exchange: other,")

    assert problems_of(text) == [
        "t.yaml:10:15: job_types.send_email: job type 'send_email' reaches no queue (exchange "
        "'other', routing key 'email.send'); exchange 'other' has no bindings"
    ]


def test_a_priority_above_max_priority_or_without_one_is_reported_at_the_priority() -> None:
    path = str(FIXTURES / "priorities.yaml")

    with pytest.raises(TopologyValidationError) as caught:
        load_topology(path)

    assert caught.value.problems == [
        f"{path}:13:61: job_types.too_high.priority: priority 9 is above max_priority 5 of "
        "queue 'urgent'",
        f"{path}:14:61: job_types.no_effect.priority: priority 1 has no effect: queue 'plain' "
        "has no max_priority",
    ]


def test_a_reserved_queue_name_is_refused() -> None:
    text = MINIMAL.replace(
        "  emails: {type: classic}\n", "  emails: {type: classic}\n  jobsys.x: {type: classic}\n"
    )

    assert problems_of(text) == [
        "t.yaml:6:13: queues.jobsys.x: name 'jobsys.x' is reserved (names starting with "
        "'jobsys.' or 'amq.' belong to jobsys and RabbitMQ)"
    ]


def test_a_queue_named_like_another_queues_dead_letter_queue_is_refused() -> None:
    text = MINIMAL.replace(
        "  emails: {type: classic}\n", "  emails: {type: classic}\n  emails.dead: {type: classic}\n"
    )

    assert problems_of(text) == [
        "t.yaml:6:16: queues.emails.dead: queue 'emails.dead' clashes with the dead-letter "
        "queue of queue 'emails'"
    ]


# -- broker versions ---------------------------------------------------------------------------


def quorum_with_priority() -> LoadedTopology:
    return load_topology(FIXTURES / "quorum_priority.yaml")


@pytest.mark.parametrize("version", [(3, 10, 8), (3, 13, 7)])
def test_max_priority_on_a_quorum_queue_is_refused_before_rabbitmq_4(
    version: tuple[int, ...],
) -> None:
    path = str(FIXTURES / "quorum_priority.yaml")
    shown = ".".join(map(str, version))

    with pytest.raises(TopologyValidationError) as caught:
        quorum_with_priority().check_broker_version(version)

    assert caught.value.problems == [
        f"{path}:7:19: queues.billing.max_priority: RabbitMQ {shown} does not support "
        "priorities on quorum queues (needs 4.0 or later); use a classic queue or drop "
        "max_priority"
    ]


@pytest.mark.parametrize("version", [(4, 0, 0), (4, 2, 1)])
def test_max_priority_on_a_quorum_queue_is_accepted_from_rabbitmq_4(
    version: tuple[int, ...],
) -> None:
    quorum_with_priority().check_broker_version(version)


def test_a_classic_queue_with_max_priority_suits_every_broker_version() -> None:
    loaded = load_topology_text(
        MINIMAL.replace("emails: {type: classic}", "emails: {type: classic, max_priority: 5}")
    )

    loaded.check_broker_version((3, 10, 8))


def test_a_queue_name_too_long_for_delayed_routing_keys_is_reported() -> None:
    name = "q" * 200
    text = f"version: 1\nqueues:\n  {name}: {{type: classic}}\n"
    with pytest.raises(TopologyLoadError) as caught:
        load_topology_text(text, "long.yaml")
    (problem,) = caught.value.problems
    assert problem.startswith("long.yaml:3:")
    assert f" queues.{name}: queue name is too long for delayed jobs" in problem
    assert "RabbitMQ allows 255" in problem
