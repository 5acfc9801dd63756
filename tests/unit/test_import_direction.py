"""The dependency direction, room by room: errors <- settings <- wire/topology/app (pure) <-
observe <- broker <- publish <- consume/ops/schedule <- process <- dashboard <- cli.

Imports are read with ``ast`` from every module under ``jobsys/`` (so modules added later are
checked too) and followed through jobsys's own modules. Imports under ``if TYPE_CHECKING:``
do not run and are left out. A package's ``__init__`` counts only where a module imports the
package itself (``from jobsys import Settings``), not as a side effect of importing a module
inside it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "jobsys"

#: The rooms of ``jobsys/`` from the ground up. A module may import its own room and the rooms
#: below it, never one above; rooms on the same floor never import each other.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("jobsys.errors",),
    ("jobsys.duration", "jobsys.settings"),
    ("jobsys.wire", "jobsys.topology", "jobsys.app"),
    # Exactly-once effects in the user's database: over the app (JobContext), and never
    # reaching the broker.
    ("jobsys.inbox",),
    ("jobsys.observe",),
    ("jobsys.broker",),
    ("jobsys.publish",),
    ("jobsys.consume", "jobsys.ops", "jobsys.schedule"),
    # The in-memory test kit: over publish/ and consume/, which it runs; only the demo (cli/)
    # reaches it from above.
    ("jobsys.testing",),
    ("jobsys.process",),
    # The web dashboard: over ops/, below the command line that starts it.
    ("jobsys.dashboard",),
    ("jobsys.cli",),
)
#: Rooms that are plain Python: they never reach a broker client, directly or through jobsys.
PURE_ROOMS = (
    "jobsys.errors",
    "jobsys.duration",
    "jobsys.settings",
    "jobsys.wire",
    "jobsys.topology",
    "jobsys.app",
    "jobsys.inbox",
)
#: Modules of I/O rooms that are pure all the same (and are held to it).
PURE_MODULES = (
    "jobsys.publish.prepare",
    "jobsys.consume.retry",
    "jobsys.consume.outcome",
    "jobsys.consume.options",
    "jobsys.consume.result",
    "jobsys.schedule.plan",
)
BROKER_CLIENTS = ("aio_pika", "aiormq", "pamqp")
#: The public API (lazy for the names that need aio-pika) and the program entry point sit
#: above every room.
ABOVE_ALL = ("jobsys", "jobsys.__main__")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from (n for child in node.orelse for n in _runtime_imports_of(child))
            continue
        yield from _runtime_imports_of(node)


def _runtime_imports_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _runtime_imports(node)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@cache
def direct_imports(module: str) -> frozenset[str]:
    """Every module ``module`` imports at run time."""
    path = all_modules()[module]
    return imports_in(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool = False) -> frozenset[str]:
    """The run-time imports of ``source`` (the text of ``module``): jobsys modules resolved to
    the module file they name, others by their top-level package."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name) for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            found.add(submodule if submodule in all_modules() else _resolve(base))
    return frozenset(found)


def _resolve(name: str) -> str:
    if name.split(".")[0] != "jobsys":
        return name.split(".")[0]
    # 'import jobsys.topology.model' names the module; the longest existing prefix wins.
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in all_modules():
            return candidate
    return name


def reachable(module: str) -> dict[str, list[str]]:
    """Every module imported by ``module`` directly or through jobsys modules, each with the
    chain of imports that leads to it."""
    chains: dict[str, list[str]] = {}
    pending = [(module, [module])]
    while pending:
        current, chain = pending.pop()
        for imported in sorted(direct_imports(current)):
            if imported in chains or imported == module:
                continue
            chains[imported] = [*chain, imported]
            if imported in all_modules():
                pending.append((imported, chains[imported]))
    return chains


# -- the checker itself ------------------------------------------------------------------------


def test_the_checker_sees_the_imports_that_are_there() -> None:
    assert "jobsys.topology.check" in direct_imports("jobsys.topology.loader")
    assert "jobsys.topology.delays" in direct_imports("jobsys.topology.entities")
    assert "aio_pika" in direct_imports("jobsys.broker.connection")
    assert reachable("jobsys.topology.loader")["jobsys.topology.routing"] == [
        "jobsys.topology.loader",
        "jobsys.topology.check",
        "jobsys.topology.routing",
    ]
    assert "jobsys.cli" in direct_imports("jobsys.__main__")
    assert reachable("jobsys.consume.worker")["aio_pika"][0] == "jobsys.consume.worker"


def test_the_checker_resolves_relative_and_package_imports_and_skips_type_checking() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import delays\n"
        "from .model import Topology\n"
        "from .. import errors, Settings\n"
        "import jobsys.topology.routing\n"
        "if TYPE_CHECKING:\n"
        "    import aio_pika\n"
        "else:\n"
        "    import yaml\n"
        "def later() -> None:\n"
        "    import aiormq.exceptions\n"
    )

    assert imports_in(source, "jobsys.topology.probe") == {
        "typing",
        "jobsys.topology.delays",
        "jobsys.topology.model",
        "jobsys.errors",
        "jobsys",
        "jobsys.topology.routing",
        "yaml",
        "aiormq",
    }


# -- the rules ---------------------------------------------------------------------------------


def room_of(module: str) -> str | None:
    """The room (a folder, or a top-level module) ``module`` belongs to; None above them all."""
    for floor in FLOORS:
        for room in floor:
            if module == room or module.startswith(room + "."):
                return room
    return None


def floor_of(room: str) -> int:
    return next(i for i, floor in enumerate(FLOORS) if room in floor)


def jobsys_modules_outside(rooms: tuple[str, ...]) -> list[str]:
    return [m for m in all_modules() if m not in ABOVE_ALL and room_of(m) not in rooms]


def test_every_module_lives_in_a_room() -> None:
    assert jobsys_modules_outside(tuple(room for floor in FLOORS for room in floor)) == []


def test_every_room_and_named_module_exists() -> None:
    # A rule naming a module that was renamed away would silently check nothing.
    named = [room for floor in FLOORS for room in floor] + list(PURE_MODULES) + list(PURE_ROOMS)
    assert [name for name in named if name not in all_modules()] == []


@pytest.mark.parametrize("module", sorted(m for m in all_modules() if room_of(m) is not None))
def test_a_module_imports_only_its_own_room_and_the_rooms_below(module: str) -> None:
    room = room_of(module)
    assert room is not None
    upward = sorted(
        imported
        for imported in direct_imports(module)
        if (other := room_of(imported)) is not None
        and other != room
        and floor_of(other) >= floor_of(room)
    )

    assert upward == []


PURE = sorted(m for m in all_modules() if room_of(m) in PURE_ROOMS) + list(PURE_MODULES)


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_never_reach_a_broker_client(module: str) -> None:
    chains = reachable(module)

    forbidden = {
        name: " -> ".join(chain) for name, chain in chains.items() if name in BROKER_CLIENTS
    }
    assert forbidden == {}


def test_errors_imports_no_other_jobsys_module() -> None:
    assert {name for name in direct_imports("jobsys.errors") if name.startswith("jobsys")} == set()


@pytest.mark.parametrize(
    "module", sorted(m for m in all_modules() if room_of(m) == "jobsys.publish")
)
def test_publishing_never_reaches_consuming(module: str) -> None:
    chain = next(
        (chain for name, chain in reachable(module).items() if room_of(name) == "jobsys.consume"),
        None,
    )

    assert chain is None, " -> ".join(chain or [])


def test_nothing_outside_the_command_line_imports_click_or_the_command_line() -> None:
    offenders = {
        module: sorted(name for name in direct_imports(module) if name == "click" or _is_cli(name))
        for module in all_modules()
        if not _is_cli(module) and module != "jobsys.__main__"
    }

    assert {module: names for module, names in offenders.items() if names} == {}


def test_only_the_in_memory_demo_imports_the_test_kit() -> None:
    # The kit is for users' tests; the product runs without it (the demo offers it by choice).
    importers = {
        module
        for module in all_modules()
        if room_of(module) != "jobsys.testing"
        and any(room_of(name) == "jobsys.testing" for name in direct_imports(module))
    }

    assert importers == {"jobsys.cli.demo_memory"}


def test_the_command_line_reaches_the_broker_only_through_jobsys() -> None:
    offenders = {
        module: sorted(name for name in direct_imports(module) if name in BROKER_CLIENTS)
        for module in all_modules()
        if _is_cli(module)
    }

    assert {module: names for module, names in offenders.items() if names} == {}


def test_the_dashboard_reaches_the_broker_only_through_jobsys() -> None:
    offenders = {
        module: sorted(name for name in direct_imports(module) if name in BROKER_CLIENTS)
        for module in all_modules()
        if room_of(module) == "jobsys.dashboard"
    }

    assert {module: names for module, names in offenders.items() if names} == {}


def _is_cli(name: str) -> bool:
    return name == "jobsys.cli" or name.startswith("jobsys.cli.")
