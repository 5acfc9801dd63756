"""``bench.worker --processes P``: ``jobsys worker --processes P`` against one raw aio-pika
consumer, draining the same pre-filled queue in the same run, rounds interleaved.

The supervised run is timed from the first worker process consuming (its "worker ready" log
line) to the queue holding no ready message (a passive declare every 20 ms; what is still
unacked then is at most P x prefetch jobs, a few milliseconds of work), or to the last job's
line with ``JOBSYS_BENCH_APPEND_TO``. Until 2026-12-01 the workers ran with ``-v``, which logs
one line per job: 20,000 lines written by the workers and read by this process, on the same
cores, that neither the raw consumer nor the one-process row pays. Resident memory (``VmRSS``
and peak ``VmHWM``) of every worker process is sampled from /proc during the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.worker import _fill, drain, topology_yaml

_SUMMARY = re.compile(r"supervisor stopped: .*?; (\d+) jobs done")


def _status(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


async def _wait_empty(url: str, queue: str, on_poll: Any) -> None:
    # One connection for all polls: a connection per poll would load the broker being measured.
    from jobsys.broker.connection import BrokerConnection
    from jobsys.settings import Settings

    async with BrokerConnection(Settings(url=url)) as conn:
        channel = await conn.channel(confirms=False)
        while True:
            # On the aiormq channel: aio-pika's robust channel would answer from its cache.
            underlay = await channel.get_underlay_channel()
            declared = await underlay.queue_declare(queue, passive=True)
            if not declared.message_count:
                return
            on_poll()
            await asyncio.sleep(0.02)


def _lines(path: Path) -> int:
    # A local file of at most a few hundred kB, read between polls: blocking is not a concern.
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _forget(path: str) -> None:
    Path(path).unlink(missing_ok=True)


async def _wait_lines(path: Path, n: int, on_poll: Any) -> None:
    while _lines(path) < n:
        on_poll()
        await asyncio.sleep(0.02)


async def drain_supervised(url: str, token: str, n: int, processes: int) -> dict[str, Any]:
    """Fill the queue with ``n`` jobs, then let ``jobsys worker --processes`` empty it."""
    await _fill(url, token, n)
    if os.environ.get("JOBSYS_BENCH_APPEND_TO"):
        _forget(os.environ["JOBSYS_BENCH_APPEND_TO"])
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as topology:
        topology.write(topology_yaml(token))
        topology.flush()
        command = ["-m", "jobsys", "worker", "bench.noop_app:app", "--topology"]
        command += [topology.name, "--processes", str(processes)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *command,
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            env=dict(os.environ, JOBSYS_URL=url),
        )
        assert proc.stderr is not None
        lines: list[str] = []
        consuming = asyncio.Event()

        async def read_log() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                lines.append(raw.decode(errors="replace"))
                if "worker ready" in lines[-1]:
                    consuming.set()

        reader = asyncio.create_task(read_log())
        waiting = asyncio.create_task(consuming.wait())
        await asyncio.wait({reader, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if not consuming.is_set():
            raise SystemExit("supervisor failed:\n" + "".join(lines))
        start = time.perf_counter()
        memory: dict[int, dict[str, float]] = {}
        queue = f"bench.q-{token}"

        supervisor: dict[str, float] = {}

        def sample() -> None:
            supervisor.update(_status(proc.pid))
            for child in _children(proc.pid):
                memory[child] = {**memory.get(child, {}), **_status(child)}

        append_to = os.environ.get("JOBSYS_BENCH_APPEND_TO")
        if append_to:
            # Every handler appends a line: done when n lines are there. (An empty queue is not
            # enough: with a large prefetch, jobs delivered but not yet started would be
            # handed back at SIGTERM.)
            await _wait_lines(Path(append_to), n, sample)
        else:
            await _wait_empty(url, queue, sample)
        elapsed = time.perf_counter() - start
        sample()
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await reader
        match = _SUMMARY.search("".join(lines))
        done = int(match.group(1)) if match else 0
    if proc.returncode != 0 or done < n:
        raise SystemExit(f"supervised drain: exit {proc.returncode}, {done} of {n} jobs done")
    return {
        "elapsed_s": elapsed,
        "done": n,
        "rate": n / elapsed,
        "memory": memory,
        "supervisor": supervisor,
    }


async def run(args: argparse.Namespace, url: str, token: str) -> None:
    """Interleaved rounds: raw aio-pika, then ``jobsys worker --processes``."""
    raw_rates: list[float] = []
    sup_rates: list[float] = []
    rss: list[float] = []
    hwm: list[float] = []
    for round_no in range(args.rounds):
        raw = await drain("raw", url, token, args.n)
        raw_rates.append(raw["rate"])
        sup = await drain_supervised(url, token, args.n, args.processes)
        sup_rates.append(sup["rate"])
        per_child = sup["memory"].values()
        rss += [m["VmRSS"] for m in per_child if "VmRSS" in m]
        hwm += [m["VmHWM"] for m in per_child if "VmHWM" in m]
        print(
            f"round {round_no + 1}: raw {raw['rate']:6.0f} jobs/s, jobsys --processes "
            f"{args.processes} {sup['rate']:6.0f} jobs/s -> {sup['rate'] / raw['rate']:.2f}x; "
            "per process RSS "
            + ", ".join(f"{m.get('VmRSS', 0):.1f}/{m.get('VmHWM', 0):.1f}" for m in per_child)
            + " MiB (now/peak)"
        )
    ratios = [s / r for s, r in zip(sup_rates, raw_rates, strict=True)]
    print()
    print(
        f"drain, median of {args.rounds}: raw {statistics.median(raw_rates):.0f} jobs/s, "
        f"jobsys --processes {args.processes} {statistics.median(sup_rates):.0f} jobs/s; "
        f"ratio median {statistics.median(ratios):.2f}x, "
        f"best {max(sup_rates) / max(raw_rates):.2f}x (target >= 1.4x)"
    )
    print(
        f"worker process memory: RSS {min(rss):.1f}-{max(rss):.1f} MiB, peak {max(hwm):.1f} MiB "
        "(target <= 40 MiB)"
    )
