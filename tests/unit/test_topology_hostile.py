"""Hostile topology files: whatever a file holds, loading it ends in a located problem (exit 2
from the CLI), never in a traceback, a hang or a machine out of memory."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from jobsys.errors import TopologyLoadError
from jobsys.topology.loader import load_topology, load_topology_text

JOBSYS = str(Path(sys.executable).with_name("jobsys"))

ROUTED = """\
version: 1
exchanges:
  ex: {type: direct}
queues:
  q: {type: classic, QUEUE}
bindings:
  - {exchange: ex, queue: q, routing_key: k}
job_types:
  j: {exchange: ex, routing_key: k, priority: 1}
"""


def problems_of(text: str) -> list[str]:
    """The problems ``text`` is refused with (fails the test when it loads)."""
    with pytest.raises(TopologyLoadError) as caught:
        load_topology_text(text, "t.yaml")
    return caught.value.problems


def _limit_memory() -> None:
    # A reader that does not stop at the cap must fail fast here, not starve the machine.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def validate(path: str) -> subprocess.CompletedProcess[str]:
    """``jobsys topology validate PATH`` with a memory ceiling and a deadline."""
    return subprocess.run(
        [JOBSYS, "topology", "validate", path],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        preexec_fn=_limit_memory,
    )


# -- numbers Python cannot hold as the model wants them -----------------------------------------


def test_an_integer_of_5000_digits_is_a_located_problem_not_a_crash() -> None:
    text = ROUTED.replace("QUEUE", "max_priority: " + "9" * 5000)

    assert problems_of(text) == [
        "t.yaml:5:36: queues.q.max_priority: a number of 5000 digits; numbers in a topology "
        "file have at most 4300"
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "version: 1\ndelays:\n  max_delay: " + "9" * 400 + "\n",
            "t.yaml:3:3: delays.max_delay: a duration must be a finite number of seconds, "
            "zero or more",
        ),
        (
            ROUTED.replace("QUEUE", "message_ttl: 1" + "0" * 400),
            "t.yaml:5:22: queues.q.message_ttl: a duration must be a finite number of seconds, "
            "zero or more",
        ),
        (
            ROUTED.replace("priority: 1", "timeout: 1" + "0" * 400).replace(
                "QUEUE", "durable: true"
            ),
            "t.yaml:9:37: job_types.j.timeout: a duration must be a finite number of seconds, "
            "zero or more",
        ),
    ],
    ids=["max_delay", "message_ttl", "timeout"],
)
def test_a_bare_integer_beyond_float_range_in_a_duration_is_a_located_problem(
    text: str, problem: str
) -> None:
    assert problems_of(text) == [problem]


# -- a malformed or missing queue that a prioritised job type routes to -------------------------


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("max_priority: 0", "queues.q.max_priority: Input should be greater than or equal to 1"),
        ("max_priority: -1", "queues.q.max_priority: Input should be greater than or equal to 1"),
        ("max_priority: 256", "queues.q.max_priority: Input should be less than or equal to 255"),
        (
            "max_priority: 10.5",
            "queues.q.max_priority: Input should be a valid integer, got a number with a "
            "fractional part",
        ),
        ("max_length: -3", "queues.q.max_length: Input should be greater than or equal to 0"),
    ],
)
def test_a_malformed_queue_a_prioritised_job_type_routes_to_is_reported_not_a_crash(
    spec: str, problem: str
) -> None:
    assert problems_of(ROUTED.replace("QUEUE", spec)) == [f"t.yaml:5:22: {problem}"]


def test_a_binding_to_an_undeclared_queue_with_a_prioritised_job_type_is_reported() -> None:
    text = ROUTED.replace("queue: q,", "queue: nowhere,").replace("QUEUE", "max_priority: 5")

    assert problems_of(text) == [
        "t.yaml:7:27: bindings.0.queue: queue 'nowhere' is not declared (declared: q)"
    ]


# -- files that are not regular files -----------------------------------------------------------


def test_a_character_device_is_refused_without_reading_it() -> None:
    with pytest.raises(TopologyLoadError) as caught:
        load_topology("/dev/zero")

    assert caught.value.problems == [
        "/dev/zero:1:1: cannot read file: it is a character device, not a regular file"
    ]


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "topology.yaml"
    os.mkfifo(fifo)

    with pytest.raises(TopologyLoadError) as caught:
        load_topology(fifo)

    assert caught.value.problems == [
        f"{fifo}:1:1: cannot read file: it is a named pipe (FIFO), not a regular file"
    ]


def test_validate_of_dev_zero_exits_2_at_once_with_one_located_problem() -> None:
    result = validate("/dev/zero")

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "/dev/zero:1:1: cannot read file: it is a character device, not a regular file",
        "/dev/zero: 1 problem",
    ]


def test_validate_of_a_fifo_exits_2_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)

    result = validate(str(fifo))

    assert result.returncode == 2, result.stderr
    assert "not a regular file" in result.stderr and "Traceback" not in result.stderr


def test_validate_of_a_5000_digit_number_exits_2_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "digits.yaml"
    path.write_text(ROUTED.replace("QUEUE", "max_priority: " + "9" * 5000))

    result = validate(str(path))

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{path}:5:36: queues.q.max_priority: a number of 5000 digits" in result.stderr


def test_a_refused_value_is_not_judged_as_if_it_were_missing() -> None:
    # Dropping the value would leave a queue without max_priority, and the prioritised job
    # type would be told that its priority "has no effect": a problem the file does not have.
    text = ROUTED.replace("QUEUE", "max_priority: !custom 5")

    assert problems_of(text) == [
        "t.yaml:5:36: queues.q.max_priority: could not determine a constructor for the tag "
        "'!custom'"
    ]


def test_a_date_python_cannot_build_is_a_located_problem() -> None:
    text = ROUTED.replace("QUEUE", "max_priority: 2024-13-45")

    assert problems_of(text) == [
        "t.yaml:5:36: queues.q.max_priority: cannot read this timestamp: month must be in 1..12"
    ]


# -- keys that are not strings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("123", "an integer"),
        ("0x10", "an integer"),
        ("1.5", "a number"),
        ("true", "a boolean"),
        ("on", "a boolean"),
        ("null", "null"),
        ("2024-01-01", "a date"),
    ],
)
def test_a_key_yaml_reads_as_another_type_is_refused_with_its_position(key: str, kind: str) -> None:
    text = f"version: 1\nqueues:\n  good: {{type: classic}}\n  {key}: {{type: classic}}\n"

    assert problems_of(text) == [
        f"t.yaml:4:3: queues: key {key} is {kind} to YAML, not a string; quote it ('{key}') "
        "to use it as a name"
    ]


def test_a_quoted_or_explicitly_tagged_number_is_a_name_like_any_other() -> None:
    text = (
        "version: 1\nexchanges:\n  '123': {type: direct}\n  !!str 456: {type: direct}\n"
        "queues:\n  '0x10': {type: classic}\n"
    )

    loaded = load_topology_text(text, "t.yaml")

    assert list(loaded.topology.exchanges) == ["123", "456"]
    assert list(loaded.topology.queues) == ["0x10"]


# -- the node limit -----------------------------------------------------------------------------


def test_a_wide_file_over_the_node_limit_is_called_too_large_not_recursive() -> None:
    text = "version: 1\nbindings: [" + "0, " * 100_001 + "]\n"

    problems = problems_of(text)

    assert len(problems) == 1
    assert problems[0].startswith("t.yaml:2:")
    assert problems[0].endswith(
        "too many nodes: over 100000 keys, values and list items; a topology file needs far fewer"
    )
    assert "alias" not in problems[0]


# -- control characters are shown escaped -------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "shown"),
    [(r"a\nb", r"'a\nb'"), (r"a\0b", r"'a\x00b'"), (r"a\eb", r"'a\x1bb'"), (r"\t", r"'\t'")],
    ids=["newline", "nul", "esc", "tab"],
)
def test_a_name_with_a_control_character_is_shown_escaped(written: str, shown: str) -> None:
    text = f'version: 1\nqueues:\n  "{written}": {{type: classic}}\n'

    problems = problems_of(text)

    assert problems == [
        f"t.yaml:3:3: queues.{shown}: String should match pattern '^[A-Za-z0-9_.:\\-]+$'"
    ]


def test_a_duplicate_key_with_a_control_character_is_shown_escaped() -> None:
    text = 'version: 1\nqueues:\n  "a\\eb": {type: classic}\n  "a\\eb": {type: classic}\n'

    problems = problems_of(text)

    assert "t.yaml:4:3: queues.'a\\x1bb': duplicate key (first at line 3, column 3)" in problems
    assert not any("\x1b" in problem for problem in problems)


def test_a_file_name_with_a_control_character_is_shown_escaped(tmp_path: Path) -> None:
    path = tmp_path / "bad\nname.yaml"
    path.write_text("version: 2\n")

    with pytest.raises(TopologyLoadError) as caught:
        load_topology(path)

    assert caught.value.problems == [f"{str(path)!r}:1:1: version: Input should be 1"]
    assert "\n" not in caught.value.problems[0]


def test_validate_shows_a_file_name_with_a_control_character_escaped(tmp_path: Path) -> None:
    path = tmp_path / "evil\x1b[2J.yaml"
    path.write_text("version: 2\n")

    result = validate(str(path))

    assert result.returncode == 2
    assert "\x1b" not in result.stderr
    assert result.stderr.splitlines()[-1] == f"{str(path)!r}: 1 problem"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("\x08", r"t.yaml:1:1: YAML: character '\x08' is not allowed in a YAML file"),
        (
            "version: 1\nqueues: {q\x00: 1}\n",
            r"t.yaml:2:11: YAML: character '\x00' is not allowed in a YAML file",
        ),
        (
            "version: 1\n# \x1b[2J\n",
            r"t.yaml:2:3: YAML: character '\x1b' is not allowed in a YAML file",
        ),
    ],
    ids=["backspace", "nul", "esc-in-comment"],
)
def test_a_control_character_in_the_text_is_a_located_problem_not_a_traceback(
    text: str, problem: str
) -> None:
    assert problems_of(text) == [problem]


@pytest.mark.parametrize("text", ["null\n", "~\n", "NULL\n", "&anchor\n", "--- ~\n"])
def test_a_document_that_is_only_null_is_refused_with_a_problem(text: str) -> None:
    assert problems_of(text) == ["t.yaml:1:1: a topology file is a mapping with version: 1"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("!!timestamp nope", "cannot read nope as a timestamp"),
        ("!!bool maybe", "cannot read maybe as a bool"),
        ("!!int 1.5", "cannot read this int: invalid literal for int() with base 10: '1.5'"),
        ("!!float x", "cannot read this float: could not convert string to float: 'x'"),
    ],
)
def test_a_scalar_whose_explicit_tag_does_not_fit_it_is_a_located_problem(
    value: str, problem: str
) -> None:
    text = ROUTED.replace("QUEUE", f"max_priority: {value}")

    assert problems_of(text) == [f"t.yaml:5:36: queues.q.max_priority: {problem}"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "version: 1\nqueues: !a%0Ab {q: {type: classic}}\n",
            r"t.yaml:2:9: queues: unsupported tag !a\nb",
        ),
        (
            "version: 1\nqueues: !a%1Bb [1]\n",
            r"t.yaml:2:9: queues: unsupported tag !a\x1bb",
        ),
        (
            "version: 1\nqueues: {!a%0Ab q: 1}\n",
            r"t.yaml:2:10: queues: key q is tagged !a\nb to YAML, not a string; quote it ('q') "
            "to use it as a name",
        ),
    ],
    ids=["tag-on-mapping", "tag-on-list", "tag-on-key"],
)
def test_a_tag_with_an_escaped_control_character_is_shown_escaped(text: str, problem: str) -> None:
    assert problems_of(text) == [problem]


# -- a YAML boolean where a count belongs ---------------------------------------------------------


@pytest.mark.parametrize(
    ("queue", "job", "where"),
    [
        ("max_priority: true", "priority: 1", "queues.q.max_priority"),
        ("max_priority: 5", "priority: true", "job_types.j.priority"),
        ("max_length: yes", "timeout: 5s", "queues.q.max_length"),
        ("consumer: {concurrency: true}", "timeout: 5s", "queues.q.consumer.concurrency"),
        ("consumer: {prefetch: on}", "timeout: 5s", "queues.q.consumer.prefetch"),
        ("max_priority: 5", "retry: {max_attempts: true}", "job_types.j.retry.max_attempts"),
        ("max_priority: 5", "retry: {backoff: {jitter: yes}}", "job_types.j.retry.backoff.jitter"),
        (
            "max_priority: 5",
            "retry: {backoff: {multiplier: on}}",
            "job_types.j.retry.backoff.multiplier",
        ),
    ],
)
def test_a_boolean_where_a_count_belongs_is_refused_not_read_as_1(
    queue: str, job: str, where: str
) -> None:
    # YAML reads `true`, `yes` and `on` as booleans, and Python's True is the integer 1: a
    # file that says `priority: true` meant something, but not priority 1.
    problems = problems_of(ROUTED.replace("QUEUE", queue).replace("priority: 1}", job + "}"))
    assert any(where in p and "expected a number, not" in p for p in problems), problems
