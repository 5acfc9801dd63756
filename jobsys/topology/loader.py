"""Topology file -> ``Topology``, with every problem reported as ``file:line:column: message``.

Safe loading only: PyYAML's safe composer builds the node tree (so marks survive), and this
module builds plain Python from it, refusing unknown tags, duplicate keys, oversized files and
alias bombs. Then pydantic checks shapes and ``check`` relates the parts; all problems are
collected and raised together.
"""

from __future__ import annotations

import difflib
import os
import stat
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from jobsys.errors import TopologyLoadError, TopologyValidationError
from jobsys.topology.check import Problem, check_broker_support, check_topology
from jobsys.topology.model import Topology
from jobsys.topology.partial import sound_part_problems

MAX_FILE_BYTES = 1024 * 1024
#: Nodes built, aliases expanded every time they are used; a "billion laughs" stops here.
MAX_NODES = 100_000
#: Deepest nesting of mappings and lists; a topology needs about six levels. Deeper input (or an
#: alias that contains itself) is refused before it can exhaust Python's recursion limit.
MAX_DEPTH = 64

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    """1-based line and column in a file."""

    line: int
    column: int


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

    def _format(self, problem: Problem) -> str:
        return f"{self.locate(problem.path)}: {_dotted(problem.path)}: {problem.message}"


def load_topology(path: str | Path) -> LoadedTopology:
    """Read and validate the topology file at ``path``."""
    filename = str(path)
    raw = _read_capped(path, filename)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyLoadError([f"{filename}:1:1: file is not UTF-8 text"]) from exc
    return load_topology_text(text, filename)


def _read_capped(path: str | Path, filename: str) -> bytes:
    """The bytes of the regular file at ``path``, at most the cap + 1 of them.

    Only a regular file is read: ``st_size`` is 0 for ``/dev/zero`` and most of ``/proc``, so a
    size check alone would read without end, and opening a FIFO waits for a writer. The file
    is opened non-blocking and checked again once open, in case it was swapped meanwhile.
    """
    try:
        _refuse_unless_regular(os.stat(path).st_mode, filename)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            _refuse_unless_regular(os.fstat(handle.fileno()).st_mode, filename)
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise TopologyLoadError([f"{filename}:1:1: cannot read file: {exc.strerror}"]) from exc
    if len(raw) > MAX_FILE_BYTES:
        shown = f"{size} bytes" if size > MAX_FILE_BYTES else f"over {MAX_FILE_BYTES} bytes"
        raise TopologyLoadError(
            [f"{filename}:1:1: file is {shown}; topology files are capped at 1 MiB"]
        )
    return raw


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _refuse_unless_regular(mode: int, filename: str) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
    raise TopologyLoadError([f"{filename}:1:1: cannot read file: it is {kind}, not a regular file"])


def load_topology_text(text: str, filename: str = "<string>") -> LoadedTopology:
    """Validate topology ``text``; ``filename`` is only used in messages."""
    if len(text.encode("utf-8")) > MAX_FILE_BYTES:
        raise TopologyLoadError([f"{filename}:1:1: topology files are capped at 1 MiB"])
    builder = _Builder(filename)
    data = builder.build(text)
    problems = list(builder.problems)
    if data is not None and data is not REFUSED and not isinstance(data, dict):
        problems.append(f"{filename}:1:1: a topology file is a mapping with version: 1")
    if not isinstance(data, dict):
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
            f"{_dotted(p.path)}: {p.message}"
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


class _Builder:
    """Builds plain Python from a YAML node tree, recording each key's position."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[str] = []
        self.value_positions: dict[KeyPath, Position] = {}
        self.key_positions: dict[KeyPath, Position] = {}
        self._nodes = 0
        # Ids of the mappings and lists being built: meeting one again means an alias cycle.
        self._open: set[int] = set()
        #: Paths whose value was refused (bad tag, alias cycle) and left out.
        self.refused_paths: set[KeyPath] = set()
        self._loader: yaml.SafeLoader | None = None

    def build(self, text: str) -> Any:
        loader = _DepthLimitedLoader(text)
        self._loader = loader
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = self._at(mark) if mark else f"{self.filename}:1:1"
            self.problems.append(f"{where}: YAML syntax: {exc.problem or exc.context}")
            return None
        except yaml.YAMLError as exc:
            self.problems.append(f"{self.filename}:1:1: YAML: {exc}")
            return None
        finally:
            loader.dispose()
        if node is None:
            self.problems.append(f"{self.filename}:1:1: the file is empty")
            return None
        try:
            return self._value(node, ())
        except _TooManyNodes:
            self.problems.append(
                f"{self._at(node.start_mark)}: too many nodes (over {MAX_NODES}, counting alias "
                "expansions); is an alias used recursively?"
            )
            return None
        except _TooDeep as exc:
            self.problems.append(
                f"{self._at(exc.node.start_mark)}: {_dotted(exc.path)}: nested deeper than "
                f"{MAX_DEPTH} levels; is an alias used inside itself?"
            )
            return None

    def _at(self, mark: yaml.Mark) -> str:
        return f"{self.filename}:{mark.line + 1}:{mark.column + 1}"

    def _value(self, node: yaml.Node, path: KeyPath) -> Any:
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _TooManyNodes
        if len(path) > MAX_DEPTH:
            raise _TooDeep(node, path)
        self.value_positions.setdefault(
            path, Position(node.start_mark.line + 1, node.start_mark.column + 1)
        )
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            if id(node) in self._open:
                return self._refuse(node, path, "an alias is used inside its own anchor")
            self._open.add(id(node))
            try:
                if isinstance(node, yaml.MappingNode):
                    return self._mapping(node, path)
                return self._sequence(node, path)
            finally:
                self._open.discard(id(node))
        assert self._loader is not None
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            return self._refuse(node, path, str(exc.problem))
        except (ValueError, OverflowError) as exc:
            # A scalar PyYAML recognises but Python cannot build: an integer past Python's
            # digit limit, a date like 2024-13-45.
            return self._refuse(node, path, _unbuildable(node, exc))

    def _refuse(self, node: yaml.Node, path: KeyPath, message: str) -> _Refused:
        """Report a value that is not built at all; shape errors at or under it are noise.

        The value is replaced by ``REFUSED``, which no field of the model accepts: the entry is
        then malformed, so no cross-check judges it as if the value were simply not given."""
        self.problems.append(f"{self._at(node.start_mark)}: {_dotted(path)}: {message}")
        self.refused_paths.add(path)
        return REFUSED

    def _sequence(self, node: yaml.SequenceNode, path: KeyPath) -> list[Any] | _Refused:
        if node.tag != "tag:yaml.org,2002:seq":
            return self._refuse(node, path, f"unsupported tag {node.tag}")
        return [self._value(item, (*path, i)) for i, item in enumerate(node.value)]

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any] | _Refused:
        result: dict[str, Any] = {}
        if node.tag != "tag:yaml.org,2002:map":
            return self._refuse(node, path, f"unsupported tag {node.tag}")
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.problems.append(
                    f"{self._at(key_node.start_mark)}: {_dotted(path) or '(top)'}: merge keys (<<) "
                    "are not supported"
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(
                    f"{self._at(key_node.start_mark)}: {_dotted(path) or '(top)'}: keys must be "
                    "plain strings"
                )
                continue
            key = str(key_node.value)
            key_path = (*path, key)
            where = Position(key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in result:
                first = self.key_positions[key_path]
                self.problems.append(
                    f"{self._at(key_node.start_mark)}: {_dotted(key_path)}: duplicate key "
                    f"(first at line {first.line}, column {first.column})"
                )
                continue
            self.key_positions[key_path] = where
            result[key] = self._value(value_node, key_path)
        return result


class _Refused:
    """Stands for a value the loader refused to build; no field of the model accepts it."""

    def __repr__(self) -> str:
        return "<refused>"


REFUSED = _Refused()


def _unbuildable(node: yaml.Node, exc: ValueError | OverflowError) -> str:
    if node.tag == "tag:yaml.org,2002:int":
        digits = sum(ch.isdigit() for ch in str(node.value))
        limit = sys.get_int_max_str_digits()
        if limit and digits > limit:
            return f"a number of {digits} digits; numbers in a topology file have at most {limit}"
    kind = str(node.tag).rsplit(":", 1)[-1]
    return f"cannot read this {kind}: {exc}"


class _TooManyNodes(Exception):
    pass


class _TooDeep(Exception):
    def __init__(self, node: yaml.Node, path: KeyPath) -> None:
        self.node = node
        self.path = path


class _DepthLimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but its (recursive) composer refuses deep nesting with a position
    instead of overflowing the Python stack."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


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
        problems.append(f"{where}: {_dotted(loc) or '(top)'}: {_shape_message(error, loc)}")
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
    return message


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


def _dotted(path: KeyPath) -> str:
    return ".".join(str(step) for step in path)


def _by_position(problem: str) -> tuple[int, int, str]:
    parts = problem.split(":", 3)
    try:
        return int(parts[-3]), int(parts[-2]), problem
    except (ValueError, IndexError):
        return 0, 0, problem
