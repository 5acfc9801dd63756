"""Every row of the performance table in one run, each against raw aio-pika in the same run.

The configuration of the comparison the team keeps: persistent jobs of ~100 bytes of JSON, a
durable classic queue, a handler that only appends a line to a file (opened once per process,
raw and jobsys alike), rounds interleaved. The raw consumer is an aio-pika ``queue.consume``
callback (aiormq runs each delivery in a task of its own) that acks after the handler.

Rows, each with its raw reference:

* confirmed publish one by one, and ``publish_many`` against gathered confirms (``bench.publish``);
* drain in one process at prefetch 100 / concurrency 100, and at prefetch 1000 / concurrency
  1000 (``bench.worker``'s children);
* drain with ``jobsys worker --processes 2`` at prefetch 1000 against the raw consumer at
  prefetch 1000 in one process (``bench.worker_processes``);
* p99 from publish to handler at 200 jobs/s (prefetch 100);
* peak RSS of a worker process, and the RSS of the supervisor of ``--processes 2``;
* start-up: from spawning the process (``jobsys worker`` as users start it; the raw consumer
  as ``python -m bench.worker --child raw``) to the first job's line in the file. Both run
  from compiled bytecode, as an installed package does (pip compiles a wheel's modules):
  ``jobsys/`` and ``bench/`` are compiled before the first row, for where
  ``PYTHONDONTWRITEBYTECODE`` is set or the checkout is fresh and every start would otherwise
  compile jobsys from source (every row's processes run from that bytecode).

Run with ``.venv/bin/python -m bench.table [-n 20000] [--rounds 3] [--url AMQP_URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import publish as publish_bench
from bench import worker as worker_bench
from bench import worker_processes

APPEND_TO = Path(tempfile.gettempdir()) / f"jobsys-bench-{os.getpid()}.lines"


@contextmanager
def _config(prefetch: int, concurrency: int) -> Iterator[None]:
    """The environment every child of ``bench.worker`` reads (see its ``bench_config``)."""
    saved = {k: os.environ.get(k) for k in worker_bench.CONFIG_ENV}
    os.environ.update(
        {
            "JOBSYS_BENCH_PREFETCH": str(prefetch),
            "JOBSYS_BENCH_CONCURRENCY": str(concurrency),
            "JOBSYS_BENCH_PAYLOAD": "small",
            "JOBSYS_BENCH_APPEND_TO": str(APPEND_TO),
        }
    )
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def _apply(url: str, token: str) -> None:
    from jobsys.broker.connection import BrokerConnection
    from jobsys.ops.declare import apply_topology
    from jobsys.settings import Settings
    from jobsys.topology.loader import load_topology_text

    async with BrokerConnection(Settings(url=url)) as conn:
        topology = load_topology_text(worker_bench.topology_yaml(token))
        await apply_topology(conn, topology, use_management=False)


def _row(name: str, ours: float, raw: float, unit: str, target: str) -> str:
    ratio = ours / raw if raw else float("nan")
    shown = ",.0f" if unit == "jobs/s" or unit == "us" else ".2f"
    return f"| {name} | {ours:{shown}} {unit} | {raw:{shown}} {unit} | {ratio:.2f}x | {target} |"


async def _drains(url: str, n: int, rounds: int, prefetch: int) -> dict[str, list[dict[str, Any]]]:
    token = uuid.uuid4().hex[:8]
    with _config(prefetch, prefetch):
        await _apply(url, token)
        runs: dict[str, list[dict[str, Any]]] = {"raw": [], "jobsys": []}
        for _ in range(rounds):
            for consumer in ("raw", "jobsys"):
                runs[consumer].append(await worker_bench.drain(consumer, url, token, n))
    return runs


async def _supervised(
    url: str, n: int, rounds: int
) -> tuple[list[float], list[float], float, float]:
    """Raw at prefetch 1000 in one process, then ``--processes 2``, interleaved."""
    token = uuid.uuid4().hex[:8]
    raw_rates, ours, supervisor_rss, worker_hwm = [], [], 0.0, 0.0
    with _config(1000, 1000):
        await _apply(url, token)
        for _ in range(rounds):
            raw_rates.append((await worker_bench.drain("raw", url, token, n))["rate"])
            run = await worker_processes.drain_supervised(url, token, n, 2)
            ours.append(run["rate"])
            supervisor_rss = max(supervisor_rss, run["supervisor"].get("VmHWM", 0.0))
            worker_hwm = max([worker_hwm, *(m.get("VmHWM", 0.0) for m in run["memory"].values())])
    return raw_rates, ours, supervisor_rss, worker_hwm


async def _latency(url: str, n: int, rounds: int) -> dict[str, list[float]]:
    token = uuid.uuid4().hex[:8]
    pooled: dict[str, list[float]] = {"raw": [], "jobsys": []}
    with _config(100, 100):
        await _apply(url, token)
        for _ in range(rounds):
            for consumer in ("raw", "jobsys"):
                pooled[consumer] += (await worker_bench.latency(consumer, url, token, n, 200.0))[
                    "ms"
                ]
    return pooled


async def _startup_once(url: str, token: str, consumer: str, topology_file: str) -> float:
    """Seconds from spawning ``consumer`` to the first line it appends; one job is waiting."""
    await worker_bench._fill(url, token, 1)
    APPEND_TO.unlink(missing_ok=True)
    if consumer == "jobsys":
        command = ["-m", "jobsys", "worker", "bench.noop_app:app", "--topology", topology_file]
    else:
        command = ["-m", "bench.worker", "--child", "raw", "--mode", "drain", "-n", "1"]
        command += ["--token", token, "--url", url]
    began = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *command,
        env=dict(os.environ, JOBSYS_URL=url),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        while not (APPEND_TO.exists() and APPEND_TO.stat().st_size):
            if proc.returncode is not None or time.perf_counter() - began > 30:
                raise SystemExit(f"start-up: {consumer} did not run the job")
            await asyncio.sleep(0.002)
        return time.perf_counter() - began
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


def _compile_bytecode() -> None:
    """Compile jobsys and the benchmark as installing a wheel would have."""
    root = Path(__file__).resolve().parents[1]
    for package in ("jobsys", "bench"):
        compileall.compile_dir(root / package, quiet=1)


async def _startup(url: str, rounds: int) -> dict[str, list[float]]:
    token = uuid.uuid4().hex[:8]
    out: dict[str, list[float]] = {"raw": [], "jobsys": []}
    with _config(100, 100), tempfile.NamedTemporaryFile("w", suffix=".yaml") as topology:
        topology.write(worker_bench.topology_yaml(token))
        topology.flush()
        await _apply(url, token)
        for _ in range(max(rounds, 3)):
            for consumer in ("raw", "jobsys"):
                out[consumer].append(await _startup_once(url, token, consumer, topology.name))
    return out


async def run(args: argparse.Namespace) -> None:
    med = statistics.median
    rows: list[str] = []
    # Before every row: a process started from source compiles jobsys first, which costs time
    # and memory (the supervisor's peak RSS was 15.3 MiB on a fresh checkout, 14.5 MiB after).
    _compile_bytecode()
    with worker_bench.private_vhost(args.url) as url:
        with _config(100, 100):
            best, ratios = await publish_bench.run(url, args.n, args.rounds)
        one = publish_bench.ONE, publish_bench.RAW_ONE
        many = publish_bench.MANY, publish_bench.RAW_MANY
        rows.append(
            _row(
                "confirmed publish, one by one (best)",
                best[one[0]].rate,
                best[one[1]].rate,
                "jobs/s",
                ">= 1.05x",
            )
        )
        rows.append(
            _row(
                "`publish_many` vs gathered confirms (best)",
                best[many[0]].rate,
                best[many[1]].rate,
                "jobs/s",
                ">= 1.4x",
            )
        )
        print(f"publish ratios per round (one by one, many): {ratios}", flush=True)
        for prefetch, target in ((100, ">= 1.2x"), (1000, ">= 1.3x")):
            runs = await _drains(url, args.n, args.rounds, prefetch)
            rates = {k: [r["rate"] for r in v] for k, v in runs.items()}
            rows.append(
                _row(
                    f"drain, 1 process, prefetch {prefetch} (median)",
                    med(rates["jobsys"]),
                    med(rates["raw"]),
                    "jobs/s",
                    target,
                )
            )
            print(f"drain prefetch {prefetch}: {rates}", flush=True)
            if prefetch == 100:
                hwm = {k: max(r["VmHWM"] for r in v) for k, v in runs.items()}
                cpu = {k: med(r["cpu_s"] / r["done"] * 1e6 for r in v) for k, v in runs.items()}
                rows.append(
                    _row(
                        "drain CPU per job, prefetch 100 (median)",
                        cpu["jobsys"],
                        cpu["raw"],
                        "us",
                        "<= 1.0x",
                    )
                )
        raw_rates, sup_rates, supervisor_rss, worker_hwm = await _supervised(
            url, args.n, args.rounds
        )
        rows.append(
            _row(
                "drain, `--processes 2`, prefetch 1000 (median)",
                med(sup_rates),
                med(raw_rates),
                "jobs/s",
                ">= 1.6x",
            )
        )
        lat = await _latency(url, args.latency_n, args.rounds)
        p99 = {k: sorted(v)[int(len(v) * 0.99)] for k, v in lat.items()}
        rows.append(
            _row("p99 publish to handler at 200 jobs/s", p99["jobsys"], p99["raw"], "ms", "<= 1.0x")
        )
        rows.append(
            _row("worker peak RSS (prefetch 100)", hwm["jobsys"], hwm["raw"], "MiB", "<= 35 MiB")
        )
        rows.append(
            f"| supervisor peak RSS (`--processes 2`; workers {worker_hwm:.1f} MiB) "
            f"| {supervisor_rss:.1f} MiB | - | - | <= 15 MiB |"
        )
        start = await _startup(url, args.rounds)
        rows.append(
            _row(
                "start-up to first job (median)",
                med(start["jobsys"]),
                med(start["raw"]),
                "s",
                "<= 0.15 s",
            )
        )
    APPEND_TO.unlink(missing_ok=True)
    print()
    print(f"n = {args.n}, {args.rounds} rounds, ~100-byte persistent jobs, append-a-line handler")
    print("| measure | jobsys | raw aio-pika | ratio | target |")
    print("|---|---:|---:|---:|---|")
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="jobs per publish and drain run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row")
    parser.add_argument("--latency-n", type=int, default=2000, help="jobs per latency run")
    parser.add_argument("--url", default=os.environ.get("JOBSYS_URL", worker_bench.DEFAULT_URL))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
