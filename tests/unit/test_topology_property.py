"""Property: any text or bytes given to the loader end in a ``LoadedTopology`` or a
``TopologyLoadError`` whose problems are all ``file:line:column: ...`` lines that print, never
in another exception. And what loads, apply can declare: every entity it derives fits what
AMQP and the broker accept (the delay levels aside, whose limits belong to ``delays``).

Four sources of input: arbitrary text, arbitrary bytes through a file, documents built from a
valid topology with hostile tokens in its keys and values (so that the model and the
cross-checks are reached, not only the YAML parser), and the valid topology with its numbers
and durations redrawn around the limits (so that many load, and the loaded ones are held to
what apply can declare). ``JOBSYS_PROPERTY_EXAMPLES`` raises the
number of cases per source (default 300); ``--hypothesis-show-statistics`` reports them.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jobsys.errors import TopologyLoadError
from jobsys.topology.entities import desired_entities
from jobsys.topology.limits import check_entities
from jobsys.topology.loader import LoadedTopology, load_topology, load_topology_text

EXAMPLES = int(os.environ.get("JOBSYS_PROPERTY_EXAMPLES", "300"))
CASES = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
_LOCATED = re.compile(r"^.+:\d+:\d+: \S")

VALID = """\
version: 1
exchanges:
  jobs: {type: topic}
  fmt: {type: headers}
queues:
  emails: {type: classic, max_priority: 10, max_length: 100, overflow: drop-head, message_ttl: 1h}
  billing: {type: quorum, delivery_limit: 5, overflow: reject-publish, max_length: 10}
bindings:
  - {exchange: jobs, queue: emails, routing_key: "email.#"}
  - {exchange: jobs, queue: billing, routing_key: "billing.*"}
  - {exchange: fmt, queue: emails, match: any, headers: {format: pdf}}
job_types:
  send_email: {exchange: jobs, routing_key: email.send, priority: 5, timeout: 30s}
  charge: {exchange: jobs, routing_key: billing.charge, retry: {max_attempts: 4, delays: [1s, 5m]}}
  render: {exchange: fmt, headers: {format: pdf}}
delays: {max_delay: 30d, queue_type: classic}
"""

#: Tokens a hostile file puts where a name, a number, a duration or a mapping is expected.
HOSTILE = [
    "0",
    "-1",
    "256",
    "10.5",
    "123",
    "0x10",
    "0o17",
    "1_000",
    "1:30",
    "true",
    "on",
    "no",
    "null",
    "~",
    "''",
    ".inf",
    "-.inf",
    ".nan",
    "1e309",
    "2024-13-45",
    "2024-01-01",
    "9" * 5000,
    "1" + "0" * 400,
    str(2**63),
    str(2**64),
    "-" + str(2**63 + 1),
    "10000000000d",
    "3650d",
    "3651d",
    "5 minutes",
    "1h30m",
    "-5s",
    "0.0001",
    '"✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓✓"',
    '"a\\nb"',
    '"a\\0b"',
    '"\\e[2J"',
    '"\\t"',
    '"' + "é" * 200 + '"',
    "x" * 300,
    "!!binary AAAA",
    "!!binary '!!'",
    "!custom 5",
    "!!python/name:os.system",
    "!!float x",
    "!!int 1.5",
    "!!timestamp nope",
    "!a%0Ab {a: 1}",
    "!a%1Bb [1]",
    "!a%00b x",
    "[]",
    "{}",
    "[a, b]",
    "{a: 1}",
    "&a [1]",
    "*nope",
    "<<: {a: 1}",
    "? [a, b]",
    "|\n  text",
    ">\n  folded",
    '"\\ud800"',
    "@",
    "`",
    "%YAML 1.1",
    "---",
    "...",
    "#",
    "- a",
    "{type: classic}",
    "{type: quorum, max_priority: 3}",
    "{exchange: jobs, queue: emails}",
    "{exchange: nope, queue: emails, routing_key: '#'}",
]

token = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=20))


def check_outcome(load: object) -> None:
    """``load()`` gives a LoadedTopology, or raises TopologyLoadError with located problems."""
    assert callable(load)
    try:
        loaded = load()
    except TopologyLoadError as exc:
        event("refused")
        assert exc.problems, "an error with no problem in it"
        for problem in exc.problems:
            assert _LOCATED.match(problem), problem
            assert problem.isprintable(), problem
        return
    assert isinstance(loaded, LoadedTopology)
    event("loaded")
    beyond = [
        message
        for name, message in check_entities(desired_entities(loaded.topology))
        if not name.startswith("jobsys.wait.")
    ]
    assert beyond == [], beyond


@CASES
@given(st.text(max_size=2000))
def test_any_text_loads_or_is_refused_with_located_problems(text: str) -> None:
    check_outcome(lambda: load_topology_text(text, "t.yaml"))


@CASES
@given(st.binary(max_size=2000))
def test_any_bytes_in_a_file_load_or_are_refused_with_located_problems(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "t.yaml"
        path.write_bytes(raw)
        check_outcome(lambda: load_topology(path))


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """The valid topology with one to four of its words, or whole lines, replaced by hostile
    tokens; a line may also be duplicated or get a hostile key."""
    lines = VALID.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(lines) - 1))
        line = lines[index]
        how = draw(st.sampled_from(["word", "word", "word", "key", "line", "duplicate"]))
        if how == "word":
            words = re.findall(r"[^\s{},:\[\]]+", line)
            if words:
                word = draw(st.sampled_from(words))
                line = line.replace(word, draw(token), 1)
        elif how == "key":
            indent = line[: len(line) - len(line.lstrip())]
            line = f"{indent}{draw(token)}: {draw(token)}"
        elif how == "line":
            line = draw(token)
        else:
            lines.insert(index, line)
        lines[index] = line
    return "\n".join(lines) + "\n"


@CASES
@given(mutated())
def test_a_valid_file_with_hostile_tokens_loads_or_is_refused_with_located_problems(
    text: str,
) -> None:
    check_outcome(lambda: load_topology_text(text, "t.yaml"))


#: Numbers near the limits that matter: AMQP's 64-bit integers, the broker's longest TTL.
number = st.one_of(
    st.integers(-(2**66), 2**66),
    st.integers(2**63 - 3, 2**63 + 3),
    st.integers(0, 300),
    st.floats(allow_nan=True, allow_infinity=True),
)
duration = st.one_of(
    number.map(str),
    st.tuples(st.integers(0, 10**13), st.sampled_from(["ms", "s", "m", "h", "d"])).map(
        lambda pair: f"{pair[0]}{pair[1]}"
    ),
    st.sampled_from(["3650d", "3650.0001d", "315360000000ms", "315360000001ms"]),
)
_NUMERIC = re.compile(r"(?<=: )(\d+(?:\.\d+)?(?:ms|s|m|h|d)?)(?=[,}\]])")


@st.composite
def renumbered(draw: st.DrawFn) -> str:
    """The valid topology with one to three of its numbers or durations redrawn."""
    text = VALID
    for _ in range(draw(st.integers(1, 3))):
        spots = list(_NUMERIC.finditer(text))
        spot = draw(st.sampled_from(spots))
        text = text[: spot.start()] + draw(duration) + text[spot.end() :]
    return text


@CASES
@given(renumbered())
def test_a_valid_file_with_numbers_redrawn_loads_only_what_apply_can_declare(text: str) -> None:
    check_outcome(lambda: load_topology_text(text, "t.yaml"))
