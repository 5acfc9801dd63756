"""Refuse, before anything fires, a schedule whose job could never be published: its payload
fails the job type's model, or is larger than the producer allows (pure)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from jobsys.errors import MessageError, TopologyValidationError
from jobsys.publish.prepare import JobRequest, build_routes, prepare_job
from jobsys.topology.loader import LoadedTopology
from jobsys.topology.schedules import job_id_for


def check_payloads(
    loaded: LoadedTopology,
    models: Mapping[str, type[BaseModel]],
    max_payload_bytes: int = 1024 * 1024,
) -> None:
    """Raise ``TopologyValidationError`` (each problem at ``file:line:column``) for every
    schedule whose job ``publish`` would refuse, as the scheduler would build it."""
    topology = loaded.topology
    routes = build_routes(topology)
    problems = []
    for name, schedule in topology.schedules.items():
        request = JobRequest(schedule.job_type, schedule.payload, job_id=job_id_for(name, 0))
        try:
            prepare_job(request, routes, models, max_payload_bytes, topology.delay_layout)
        except MessageError as exc:
            path = ("schedules", name, "payload")
            problems.append(f"{loaded.locate(path)}: schedules.{name}.payload: {exc}")
    if problems:
        raise TopologyValidationError(problems)
