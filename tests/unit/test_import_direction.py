"""The dependency direction of docs/design: errors <- pure core <- I/O <- tracing <- cli.

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

#: Plain Python, testable without a broker.
PURE_CORE = (
    "jobsys.errors",
    "jobsys.settings",
    "jobsys.wire.envelope",
    "jobsys.duration",
    "jobsys.consume.retry",
    "jobsys.topology.model",
    "jobsys.topology.loader",
    "jobsys.topology.check",
    "jobsys.topology.routing",
    "jobsys.topology.delays",
    "jobsys.topology.entities",
)
#: Modules that talk to RabbitMQ (or export telemetry); the pure core never reaches them.
IO_MODULES = (
    "jobsys.broker.connection",
    "jobsys.publish.producer",
    "jobsys.publish.sync",
    "jobsys.consume.worker",
    "jobsys.process.supervisor",
    "jobsys.ops.dlq",
    "jobsys.ops.declare",
    "jobsys.observe.tracing",
)
BROKER_CLIENTS = ("aio_pika", "aiormq", "pamqp")
#: Programs, not library code: they may import the command line.
CLI_USERS = ("jobsys.__main__", "jobsys.cli.demo_run")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def existing(names: tuple[str, ...]) -> list[str]:
    return [name for name in names if name in all_modules()]


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
    assert reachable("jobsys.topology.loader")["jobsys.topology.entities"] == [
        "jobsys.topology.loader",
        "jobsys.topology.check",
        "jobsys.topology.entities",
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


@pytest.mark.parametrize("module", existing(PURE_CORE))
def test_the_pure_core_never_reaches_a_broker_client_or_an_io_module(module: str) -> None:
    chains = reachable(module)

    forbidden = {
        name: " -> ".join(chain)
        for name, chain in chains.items()
        if name in BROKER_CLIENTS or name in IO_MODULES
    }
    assert forbidden == {}


def test_errors_imports_no_other_jobsys_module() -> None:
    assert {name for name in direct_imports("jobsys.errors") if name.startswith("jobsys")} == set()


@pytest.mark.parametrize("module", existing(("jobsys.publish.producer", "jobsys.publish.sync")))
def test_the_producer_never_imports_the_worker(module: str) -> None:
    chain = reachable(module).get("jobsys.consume.worker")

    assert chain is None, " -> ".join(chain or [])


def test_nothing_outside_the_command_line_imports_it() -> None:
    offenders = {
        module: sorted(name for name in direct_imports(module) if _is_cli(name))
        for module in all_modules()
        if not _is_cli(module) and module not in CLI_USERS
    }

    assert {module: names for module, names in offenders.items() if names} == {}


def _is_cli(name: str) -> bool:
    return name == "jobsys.cli" or name.startswith("jobsys.cli.")
