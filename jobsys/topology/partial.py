"""Cross-checks of the sound part of a topology whose shape is partly wrong (pure).

So that one run of ``validate`` reports every problem, the entries whose shape is right are
checked against each other even while other entries are wrong. A problem is kept only when it
cannot depend on an entry that was left out: "exchange 'x' is not declared" is dropped when
``x`` is declared but malformed, and whether a job type reaches a queue is not judged while any
exchange, queue or binding is missing from the picture.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from jobsys.topology.check import Malformed, Path, Problem, check_topology
from jobsys.topology.model import Topology

#: Sections whose entries are keyed by name; ``bindings`` is a list.
_NAMED = ("exchanges", "queues", "job_types", "schedules", "pools")


def sound_part_problems(data: dict[str, Any], error_paths: Iterable[Path]) -> list[Problem]:
    """Cross-reference problems among the entries of ``data`` that no shape error concerns
    (``error_paths``: the key paths of the shape errors). Empty when the errors leave too
    little known: one outside an entry of ``exchanges``, ``queues``, ``job_types`` or
    ``bindings``."""
    left_out: dict[str, set[str | int]] = {name: set() for name in (*_NAMED, "bindings")}
    for path in error_paths:
        if len(path) < 2 or path[0] not in left_out:
            return []
        left_out[str(path[0])].add(path[1])
    sound = dict(data)
    for name in _NAMED:
        section = data.get(name)
        if isinstance(section, dict):
            sound[name] = {k: v for k, v in section.items() if k not in left_out[name]}
    kept_bindings: list[int] = []
    bindings = data.get("bindings")
    if isinstance(bindings, list):
        kept_bindings = [i for i in range(len(bindings)) if i not in left_out["bindings"]]
        sound["bindings"] = [bindings[i] for i in kept_bindings]
    try:
        topology = Topology.model_validate(sound)
    except ValidationError:
        return []  # an error pydantic reports only once others are gone: nothing is certain
    routing_known = not (left_out["exchanges"] or left_out["queues"] or left_out["bindings"])
    malformed = Malformed(
        exchanges={str(name) for name in left_out["exchanges"]},
        queues={str(name) for name in left_out["queues"]},
        job_types={str(name) for name in left_out["job_types"]},
    )
    kept = []
    for problem in check_topology(topology, malformed):
        path = problem.path
        if path[0] == "bindings":
            binding = topology.bindings[int(path[1])]
            if _names_left_out(path, binding.exchange, binding.queue, left_out):
                continue
            problem = Problem(("bindings", kept_bindings[int(path[1])], *path[2:]), problem.message)
        elif (
            (
                path[0] == "job_types"
                and _depends_on_left_out(path, topology, left_out, routing_known)
            )
            or (
                path[0] == "schedules"
                and topology.schedules[str(path[1])].job_type in left_out["job_types"]
            )
            or (path[0] == "pools" and len(path) > 3 and path[3] in left_out["queues"])
        ):
            continue
        kept.append(problem)
    return kept


def _names_left_out(
    path: Path, exchange: str, queue: str, left_out: dict[str, set[str | int]]
) -> bool:
    """Whether a binding problem at ``path`` names an exchange or queue that was left out."""
    field = path[2] if len(path) > 2 else None
    if field == "queue":
        return queue in left_out["queues"]
    return exchange in left_out["exchanges"]


def _depends_on_left_out(
    path: Path, topology: Topology, left_out: dict[str, set[str | int]], routing_known: bool
) -> bool:
    """Whether a job-type problem at ``path`` may be wrong for want of what was left out: its
    exchange, or (reaching no queue, priorities of the queues reached) the routing as a whole."""
    field = path[2] if len(path) > 2 else None
    if field == "exchange":
        return topology.job_types[str(path[1])].exchange in left_out["exchanges"]
    return not routing_known and field in (None, "priority")
