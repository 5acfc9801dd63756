"""Topology file -> ``Topology``, with every problem reported as ``file:line:column: message``.

``source`` reads the file (bounded) and builds plain Python from its YAML safely, with every
key's position. Then pydantic checks shapes and ``check`` relates the parts; all problems are
collected and raised together. Names and file names that do not print are shown escaped.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from jobsys.errors import TopologyLoadError, TopologyValidationError
from jobsys.topology.broker_facts import BrokerFacts, cluster_problems
from jobsys.topology.check import Problem, check_broker_support, check_topology
from jobsys.topology.entities import Entities
from jobsys.topology.limits import check_entities
from jobsys.topology.model import DEAD_LETTER_SUFFIX, Topology
from jobsys.topology.partial import sound_part_problems
from jobsys.topology.source import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    REFUSED,
    KeyPath,
    Position,
    TreeBuilder,
    dotted,
    escaped,
    printable,
    read_capped,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "KeyPath",
    "LoadedTopology",
    "Position",
    "load_topology",
    "load_topology_text",
    "printable",
]


@dataclass(frozen=True)
class LoadedTopology:
    """A valid topology and where each of its keys stands in its file."""

    topology: Topology
    filename: str
    value_positions: dict[KeyPath, Position] = field(repr=False)
    key_positions: dict[KeyPath, Position] = field(repr=False)

    def locate(self, path: KeyPath) -> str:
        """``file:line:column`` of ``path`` (or of its nearest enclosing key)."""
        return _locate(self.filename, path, self.value_positions, self.key_positions)

    def check_broker_version(self, version: tuple[int, ...]) -> None:
        """Raise ``TopologyValidationError`` for arguments broker ``version`` lacks."""
        problems = check_broker_support(self.topology, version)
        if problems:
            raise TopologyValidationError([self._format(p) for p in problems])

    def check_cluster(self, facts: BrokerFacts) -> None:
        """Raise ``TopologyValidationError`` for classic queues that would hold jobs on a
        cluster (``broker_facts.cluster_problems``); nothing on a single node."""
        problems = [
            Problem(path, message) for path, message in cluster_problems(self.topology, facts)
        ]
        if problems:
            raise TopologyValidationError([self._format(p) for p in problems])

    def check_declarable(self, entities: Entities) -> None:
        """Raise ``TopologyValidationError`` when an entity ``apply`` would declare for this
        file (``entities``, the derived ones included) is past what AMQP or the broker
        accepts, so that nothing is declared rather than a part."""
        problems = [
            Problem(self._origin(name), message) for name, message in check_entities(entities)
        ]
        if problems:
            raise TopologyValidationError([self._format(p) for p in problems])

    def _origin(self, entity: str) -> KeyPath:
        """The key an entity comes from: its own entry, its work queue's for a dead-letter
        queue, else ``delays`` (the delay levels and jobsys's own exchanges)."""
        for section in ("exchanges", "queues"):
            if entity in getattr(self.topology, section):
                return (section, entity)
        work_queue = entity.removesuffix(DEAD_LETTER_SUFFIX)
        if work_queue != entity and work_queue in self.topology.queues:
            return ("queues", work_queue)
        return ("delays",)

    def _format(self, problem: Problem) -> str:
        return f"{self.locate(problem.path)}: {dotted(problem.path)}: {problem.message}"


def load_topology(path: str | Path) -> LoadedTopology:
    """Read and validate the topology file at ``path``."""
    filename = printable(str(path))
    raw = read_capped(path, filename)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyLoadError([f"{filename}:1:1: file is not UTF-8 text"]) from exc
    return load_topology_text(text, filename)


def load_topology_text(text: str, filename: str = "<string>") -> LoadedTopology:
    """Validate topology ``text``; ``filename`` is only used in messages."""
    filename = printable(filename)
    if len(text.encode("utf-8")) > MAX_FILE_BYTES:
        raise TopologyLoadError([f"{filename}:1:1: topology files are capped at 1 MiB"])
    builder = TreeBuilder(filename)
    data = builder.build(text)
    problems = list(builder.problems)
    if not isinstance(data, dict):
        # A scalar or a list at the top, or a document that is only `null` or `~`; a value
        # refused outright, or nothing built at all, has been reported already.
        if (data is not None and data is not REFUSED) or not problems:
            problems.append(f"{filename}:1:1: a topology file is a mapping with version: 1")
        raise TopologyLoadError(problems)
    try:
        topology = Topology.model_validate(data)
    except ValidationError as exc:
        shape = _shape_problems(
            filename, exc, builder.value_positions, builder.key_positions, builder.refused_paths
        )
        # The entries that are well formed are still checked against each other, so that one
        # run reports every problem the file has.
        paths = [_clean_loc(error["loc"]) for error in exc.errors(include_url=False)]
        cross = [
            f"{_locate(filename, p.path, builder.value_positions, builder.key_positions)}: "
            f"{dotted(p.path)}: {p.message}"
            for p in sound_part_problems(data, paths)
        ]
        raise TopologyLoadError(sorted({*problems, *shape, *cross}, key=_by_position)) from None
    loaded = LoadedTopology(topology, filename, builder.value_positions, builder.key_positions)
    cross_problems = [loaded._format(p) for p in check_topology(topology)]
    if problems:
        raise TopologyLoadError(sorted({*problems, *cross_problems}, key=_by_position))
    if cross_problems:
        raise TopologyValidationError(cross_problems)
    return loaded


def _shape_problems(
    filename: str,
    exc: ValidationError,
    value_positions: dict[KeyPath, Position],
    key_positions: dict[KeyPath, Position],
    refused_paths: set[KeyPath],
) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = _clean_loc(error["loc"])
        if any(loc[:end] in refused_paths for end in range(len(loc) + 1)):
            continue  # already reported as a refused value
        where = _locate(filename, loc, value_positions, key_positions, prefer_key=True)
        problems.append(f"{where}: {dotted(loc) or '(top)'}: {_shape_message(error, loc)}")
    return sorted(set(problems), key=_by_position)


def _clean_loc(loc: tuple[str | int, ...]) -> KeyPath:
    # pydantic adds pseudo-steps for unions, annotated validators and dict keys.
    return tuple(
        step
        for step in loc
        if not (isinstance(step, str) and step.startswith(("function-", "[key]")))
    )


def _shape_message(error: Any, loc: KeyPath) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = ""
        if allowed:
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = (
                f"; did you mean {close[0]!r}?"
                if close
                else f"; expected one of: {', '.join(allowed)}"
            )
        return f"unknown key {loc[-1]!r}{hint}"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return escaped(message)


def _allowed_keys(path: KeyPath) -> list[str]:
    """Keys the model accepts at ``path``, for 'did you mean' hints."""
    annotation: Any = Topology
    for step in path:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field_info = annotation.model_fields.get(str(step))
            if field_info is None:
                return []
            annotation = field_info.annotation
        elif typing.get_origin(annotation) in (dict, list):
            annotation = typing.get_args(annotation)[-1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return options[0] if len(options) == 1 else annotation
    if typing.get_origin(annotation) is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def _locate(
    filename: str,
    path: KeyPath,
    value_positions: dict[KeyPath, Position],
    key_positions: dict[KeyPath, Position],
    prefer_key: bool = False,
) -> str:
    for end in range(len(path), -1, -1):
        prefix = path[:end]
        position = (key_positions.get(prefix) if prefer_key else None) or value_positions.get(
            prefix
        )
        if position is None and not prefer_key:
            position = key_positions.get(prefix)
        if position is not None:
            return f"{filename}:{position.line}:{position.column}"
    return f"{filename}:1:1"


def _by_position(problem: str) -> tuple[int, int, str]:
    parts = problem.split(":", 3)
    try:
        return int(parts[-3]), int(parts[-2]), problem
    except (ValueError, IndexError):
        return 0, 0, problem
