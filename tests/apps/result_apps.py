"""Handlers that return results, for the results and ``call()`` tests.

``jobsys worker tests.apps.result_apps:app --topology FILE`` runs ``app`` in a subprocess (the
CLI tests); in-process tests use it directly.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from jobsys.app import App, JobContext
from jobsys.broker.connection import BrokerConnection
from jobsys.errors import Reject
from jobsys.ops.declare import apply_topology
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology, load_topology, load_topology_text

TOPOLOGY_YAML = """\
version: 1
exchanges:
  rs.jobs: {type: direct}
queues:
  rs.work:
    type: classic
    consumer: {concurrency: 4, prefetch: 8}
bindings:
  - {exchange: rs.jobs, queue: rs.work, routing_key: work}
job_types:
  add: {exchange: rs.jobs, routing_key: work, timeout: 10s}
  summary: {exchange: rs.jobs, routing_key: work, timeout: 10s}
  nothing: {exchange: rs.jobs, routing_key: work, timeout: 10s}
  echo: {exchange: rs.jobs, routing_key: work, timeout: 10s}
  sync_add: {exchange: rs.jobs, routing_key: work, timeout: 10s}
  bad_set: {exchange: rs.jobs, routing_key: work, timeout: 10s}
  bad_nan: {exchange: rs.jobs, routing_key: work, timeout: 10s}
  bad_big: {exchange: rs.jobs, routing_key: work, timeout: 10s}
  bad_coroutine: {exchange: rs.jobs, routing_key: work, timeout: 10s}
  bad_model: {exchange: rs.jobs, routing_key: work, timeout: 10s}
  flaky:
    exchange: rs.jobs
    routing_key: work
    timeout: 10s
    retry: {max_attempts: 3, delays: [1s]}
  always_fails:
    exchange: rs.jobs
    routing_key: work
    timeout: 10s
    retry: {max_attempts: 2, delays: [1s]}
  refuse: {exchange: rs.jobs, routing_key: work, timeout: 10s}
  refuse_garbled: {exchange: rs.jobs, routing_key: work, timeout: 10s}
  hold: {exchange: rs.jobs, routing_key: work, timeout: 30s}
"""

WORK = "rs.work"
WORK_DEAD = "rs.work.dead"

app = App()
#: Released by a test to let ``hold`` jobs finish.
RELEASE = asyncio.Event()
#: How many times ``flaky`` ran, by job id.
FLAKY_RUNS: dict[str, int] = {}


class Summary(BaseModel):
    """The result of ``summary`` jobs."""

    count: int
    names: list[str]


@app.handler("add")
async def add(payload: dict[str, int]) -> int:
    return payload["a"] + payload["b"]


@app.handler("summary")
async def summary(payload: list[str]) -> Summary:
    return Summary(count=len(payload), names=payload)


@app.handler("nothing")
async def nothing(payload: Any) -> None:
    return None


@app.handler("echo")
async def echo(payload: Any) -> Any:
    return payload


@app.handler("sync_add")
def sync_add(payload: dict[str, int]) -> int:
    return payload["a"] + payload["b"]


@app.handler("bad_set")
async def bad_set(payload: Any) -> Any:
    return {1, 2, 3}


@app.handler("bad_nan")
async def bad_nan(payload: Any) -> Any:
    return {"value": math.nan}


@app.handler("bad_big")
async def bad_big(payload: Any) -> Any:
    return "x" * (2 * 1024 * 1024)


async def _forgotten() -> int:
    return 1


@app.handler("bad_coroutine")
def bad_coroutine(payload: Any) -> Any:
    return _forgotten()  # a sync handler calling async code without awaiting it


@app.handler("bad_model")
async def bad_model(payload: Any) -> Summary:
    return {"count": "many"}  # type: ignore[return-value]


@app.handler("flaky")
async def flaky(payload: dict[str, int], ctx: JobContext) -> dict[str, int]:
    """Fails until its attempt reaches ``payload["succeed_at"]``; returns the attempt."""
    FLAKY_RUNS[ctx.job_id] = FLAKY_RUNS.get(ctx.job_id, 0) + 1
    if ctx.attempt < payload["succeed_at"]:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return {"attempt": ctx.attempt}


@app.handler("always_fails")
async def always_fails(payload: Any) -> int:
    raise ValueError("it never works")


@app.handler("refuse")
async def refuse(payload: Any) -> int:
    raise Reject("not for us")


@app.handler("refuse_garbled")
async def refuse_garbled(payload: Any) -> int:
    # A message built from bytes that are not UTF-8: lone surrogates no encoder accepts.
    raise Reject("bad name " + b"caf\xe9".decode("utf-8", "surrogateescape"))


@app.handler("hold")
async def hold(payload: Any) -> str:
    await RELEASE.wait()
    return "released"


#: The same topology with the job history on.
HISTORY_YAML = TOPOLOGY_YAML + "history: {max_age: 1h, max_bytes: 67108864}\n"


def loaded_topology(tmp_path: Path | None = None, *, history: bool = False) -> LoadedTopology:
    """The test topology (with the job history on when ``history``); written to
    ``tmp_path/topology.yaml`` when a path is given."""
    text = HISTORY_YAML if history else TOPOLOGY_YAML
    if tmp_path is None:
        return load_topology_text(text, "results-test.yaml")
    file = tmp_path / "topology.yaml"
    file.write_text(text, encoding="utf-8")
    return load_topology(file)


async def apply(settings: Settings, loaded: LoadedTopology) -> None:
    """Declare the topology in the test's vhost."""
    async with BrokerConnection(settings) as conn:
        await apply_topology(conn, loaded, use_management=False)
