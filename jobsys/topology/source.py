"""A topology file's text -> plain Python, with the position of every key and value.

Reading is bounded: only a regular file, at most the cap + 1 bytes. Building is safe: PyYAML's
safe composer builds the node tree (so marks survive) and ``TreeBuilder`` builds plain Python
from it, refusing unknown tags, merge keys, keys that are not strings, duplicate keys, alias
bombs and deep nesting, each with its position. The only I/O is ``read_capped``.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jobsys.errors import TopologyLoadError

MAX_FILE_BYTES = 1024 * 1024
#: Nodes built, aliases expanded every time they are used; a "billion laughs" stops here, and so
#: does a file that is simply far too large to be a topology.
MAX_NODES = 100_000
#: Deepest nesting of mappings and lists; a topology needs about six levels. Deeper input (or an
#: alias that contains itself) is refused before it can exhaust Python's recursion limit.
MAX_DEPTH = 64

KeyPath = tuple[str | int, ...]

_STR = "tag:yaml.org,2002:str"
#: What a plain key such as ``123`` or ``on`` is to YAML 1.1 instead of a string.
_KEY_KINDS = {
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
}


@dataclass(frozen=True)
class Position:
    """1-based line and column in a file."""

    line: int
    column: int


def printable(text: str) -> str:
    """``text`` as it may be shown: as is when every character prints, else quoted with escapes
    (``'a\\nb'``), so that a name cannot forge lines or send escape codes to a terminal."""
    return text if text and text.isprintable() else repr(text)


def escaped(text: str) -> str:
    """``text`` with each character that does not print written as its escape (``\\n``,
    ``\\x1b``): for messages made by libraries, which may quote the input."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def dotted(path: KeyPath) -> str:
    """``queues.emails.max_priority``; a step that does not print is shown escaped."""
    return ".".join(printable(step) if isinstance(step, str) else str(step) for step in path)


# -- reading -----------------------------------------------------------------------------------

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_capped(path: str | Path, filename: str) -> bytes:
    """The bytes of the regular file at ``path``, at most the cap + 1 of them; ``filename`` is
    the file as messages name it.

    Only a regular file is read: ``st_size`` is 0 for ``/dev/zero`` and most of ``/proc``, so a
    size check alone would read without end, and opening a FIFO waits for a writer. The file
    is opened non-blocking and checked again once open, in case it was swapped meanwhile.
    """
    try:
        _refuse_unless_regular(os.stat(path).st_mode, filename)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            status = os.fstat(handle.fileno())
            _refuse_unless_regular(status.st_mode, filename)
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise TopologyLoadError([f"{filename}:1:1: cannot read file: {exc.strerror}"]) from exc
    if len(raw) > MAX_FILE_BYTES:
        size = status.st_size
        shown = f"{size} bytes" if size > MAX_FILE_BYTES else f"over {MAX_FILE_BYTES} bytes"
        raise TopologyLoadError(
            [f"{filename}:1:1: file is {shown}; topology files are capped at 1 MiB"]
        )
    return raw


def _refuse_unless_regular(mode: int, filename: str) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
    raise TopologyLoadError([f"{filename}:1:1: cannot read file: it is {kind}, not a regular file"])


# -- building ----------------------------------------------------------------------------------


class _Refused:
    """Stands for a value the loader refused to build; no field of the model accepts it."""

    def __repr__(self) -> str:
        return "<refused>"


#: What a refused value is built as: its entry is then malformed, so no cross-check judges it as
#: if the value were simply not given.
REFUSED = _Refused()


class TreeBuilder:
    """Builds plain Python from YAML text, recording each key's position and every problem."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[str] = []
        self.value_positions: dict[KeyPath, Position] = {}
        self.key_positions: dict[KeyPath, Position] = {}
        #: Paths whose value was refused (bad tag, alias cycle, unbuildable scalar).
        self.refused_paths: set[KeyPath] = set()
        self._nodes = 0
        # Ids of the nodes built so far: meeting one again means an alias repeats it.
        self._seen: set[int] = set()
        self._repeated = 0
        # Ids of the mappings and lists being built: meeting one again means an alias cycle.
        self._open: set[int] = set()
        self._loader: yaml.SafeLoader | None = None

    def build(self, text: str) -> Any:
        """The document in ``text`` as plain Python; None when nothing could be built."""
        node = self._compose(text)
        if node is None:
            return None
        try:
            return self._value(node, ())
        except _TooManyNodes as exc:
            self.problems.append(f"{self._at(exc.node.start_mark)}: {self._too_many()}")
        except _TooDeep as exc:
            self.problems.append(
                f"{self._at(exc.node.start_mark)}: {dotted(exc.path)}: nested deeper than "
                f"{MAX_DEPTH} levels; is an alias used inside itself?"
            )
        return None

    def _compose(self, text: str) -> yaml.Node | None:
        try:
            # The reader checks every character as it is constructed.
            loader = _DepthLimitedLoader(text)
        except yaml.reader.ReaderError as exc:
            self.problems.append(self._unprintable(text, exc))
            return None
        self._loader = loader
        try:
            node = loader.get_single_node()
        except yaml.reader.ReaderError as exc:
            self.problems.append(self._unprintable(text, exc))
            return None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = self._at(mark) if mark else f"{self.filename}:1:1"
            self.problems.append(
                f"{where}: YAML syntax: {escaped(str(exc.problem or exc.context))}"
            )
            return None
        except yaml.YAMLError as exc:
            self.problems.append(f"{self.filename}:1:1: YAML: {escaped(str(exc))}")
            return None
        finally:
            loader.dispose()
        if node is None:
            self.problems.append(f"{self.filename}:1:1: the file is empty")
        return node

    def _unprintable(self, text: str, exc: yaml.reader.ReaderError) -> str:
        before = text[: exc.position]
        line = before.count("\n") + 1
        column = exc.position - (before.rfind("\n") + 1) + 1
        shown = repr(chr(exc.character)) if isinstance(exc.character, int) else "?"
        return (
            f"{self.filename}:{line}:{column}: YAML: character {shown} is not allowed in a "
            "YAML file"
        )

    def _too_many(self) -> str:
        counted = f"over {MAX_NODES} keys, values and list items"
        if not self._repeated:
            return f"too many nodes: {counted}; a topology file needs far fewer"
        return (
            f"too many nodes: {counted} once aliases are expanded ({self._repeated} of them "
            "repeat an anchor); is an alias expanding too far?"
        )

    def _at(self, mark: yaml.Mark) -> str:
        return f"{self.filename}:{mark.line + 1}:{mark.column + 1}"

    def _value(self, node: yaml.Node, path: KeyPath) -> Any:
        self._count(node, path)
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
            return self._refuse(node, path, escaped(str(exc.problem)))
        except Exception as exc:  # whatever the constructor raises for a scalar
            # A scalar PyYAML recognises but Python cannot build: an integer past Python's
            # digit limit, a date like 2024-13-45 (ValueError), or one whose explicit tag does
            # not fit it: `!!timestamp nope` (AttributeError), `!!bool maybe` (KeyError).
            return self._refuse(node, path, _unbuildable(node, exc))

    def _count(self, node: yaml.Node, path: KeyPath) -> None:
        self._nodes += 1
        if id(node) in self._seen:
            self._repeated += 1
        else:
            self._seen.add(id(node))
        if self._nodes > MAX_NODES:
            raise _TooManyNodes(node)
        if len(path) > MAX_DEPTH:
            raise _TooDeep(node, path)

    def _refuse(self, node: yaml.Node, path: KeyPath, message: str) -> _Refused:
        """Report a value that is not built at all; shape errors at or under it are noise."""
        self.problems.append(f"{self._at(node.start_mark)}: {dotted(path)}: {message}")
        self.refused_paths.add(path)
        return REFUSED

    def _sequence(self, node: yaml.SequenceNode, path: KeyPath) -> list[Any] | _Refused:
        if node.tag != "tag:yaml.org,2002:seq":
            return self._refuse(node, path, f"unsupported tag {escaped(node.tag)}")
        return [self._value(item, (*path, i)) for i, item in enumerate(node.value)]

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any] | _Refused:
        result: dict[str, Any] = {}
        if node.tag != "tag:yaml.org,2002:map":
            return self._refuse(node, path, f"unsupported tag {escaped(node.tag)}")
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            if key is None:
                continue
            key_path = (*path, key)
            if key in result:
                first = self.key_positions[key_path]
                self.problems.append(
                    f"{self._at(key_node.start_mark)}: {dotted(key_path)}: duplicate key "
                    f"(first at line {first.line}, column {first.column})"
                )
                continue
            mark = key_node.start_mark
            self.key_positions[key_path] = Position(mark.line + 1, mark.column + 1)
            result[key] = self._value(value_node, key_path)
        return result

    def _key(self, node: yaml.Node, path: KeyPath) -> str | None:
        """The key ``node`` as a string, or None (reported) when it is not one."""
        where = f"{self._at(node.start_mark)}: {dotted(path) or '(top)'}"
        if node.tag == "tag:yaml.org,2002:merge":
            self.problems.append(f"{where}: merge keys (<<) are not supported")
            return None
        if not isinstance(node, yaml.ScalarNode):
            self.problems.append(f"{where}: keys must be plain strings")
            return None
        if node.tag != _STR and not node.value:
            self.problems.append(f"{where}: a key is empty (null to YAML)")
            return None
        if node.tag != _STR:
            # Names are keys: `123`, `on` or `0x10` would otherwise become names that are not
            # what the file says (a queue "16" for 0x10, "True" for on).
            kind = _KEY_KINDS.get(node.tag, f"tagged {escaped(node.tag)}")
            text = printable(str(node.value))
            self.problems.append(
                f"{where}: key {text} is {kind} to YAML, not a string; quote it ('{text}') to "
                "use it as a name"
            )
            return None
        return str(node.value)


def _unbuildable(node: yaml.Node, exc: Exception) -> str:
    if node.tag == "tag:yaml.org,2002:int":
        digits = sum(ch.isdigit() for ch in str(node.value))
        limit = sys.get_int_max_str_digits()
        if limit and digits > limit:
            return f"a number of {digits} digits; numbers in a topology file have at most {limit}"
    kind = escaped(str(node.tag).rsplit(":", 1)[-1])
    if isinstance(exc, ValueError | OverflowError) and str(exc):
        return f"cannot read this {kind}: {printable(str(exc))}"
    return f"cannot read {printable(str(node.value))} as a {kind}"


class _TooManyNodes(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


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
