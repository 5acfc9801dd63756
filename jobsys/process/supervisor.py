"""Several worker processes under one supervisor: ``jobsys worker --processes P``.

The supervisor starts P children, each an ordinary single-process worker run by this module's
lightweight child entry point (``python -m jobsys.process.child SPEC``), which imports
neither click nor the command line, nor the OpenTelemetry SDK unless ``OTEL_*`` asks for it.

- A child that crashes (non-zero exit without a report, or killed by a signal) is restarted
  after a backoff (1 s doubling to 30 s per process slot); more than 5 crashes within 60 s is
  a crash loop: every child is stopped and the supervisor exits 1.
- ``--max-jobs K`` is the child's ``WorkerOptions(max_jobs=K)``: it drains after K settled jobs
  and exits; ``--max-memory MB``: the supervisor reads each child's ``VmRSS`` every second and
  sends SIGTERM (a graceful drain) to one above the limit. Either way a replacement starts as
  soon as the child has exited. A drain requeues prefetched jobs and finishes running ones, so
  recycling neither loses nor duplicates a job.
- A child that fails for a reason a restart cannot fix (bad input, refused access, topology
  drift) reports it; the supervisor stops every child and exits with that child's code,
  printing the error once.
- SIGTERM/SIGINT: one SIGTERM to every child (each drains within its own ``--grace``); a second
  signal forwards a second SIGTERM (children stop at once, unfinished jobs are redelivered).
  Exit 0 when every child exited 0, else 1; one summary line at the end.

Each child reports how it ended as one JSON line on a pipe (fd in ``JOBSYS_SUPERVISOR_FD``).
Children never outlive the supervisor: each is started with ``PR_SET_PDEATHSIG`` = SIGTERM
(Linux), so a supervisor killed with ``kill -9`` still leaves its children draining, not
orphaned. Children run in their own process group, so a terminal's Ctrl-C reaches only the
supervisor, which forwards exactly one SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from jobsys.process.child import REPORT_FD_ENV, ChildSpec
from jobsys.process.exits import EXIT_INVALID
from jobsys.wire.display import escape

log = logging.getLogger(__name__)

# Extra time after a child's own grace period before the supervisor kills it outright.
_KILL_MARGIN_S = 15.0
_TICK_S = 0.1


@dataclass(frozen=True)
class SupervisorOptions:
    """How many children, when to recycle them, and how patient to be with crashes."""

    processes: int = 2
    max_memory_mb: float | None = None
    restart_initial_s: float = 1.0
    restart_max_s: float = 30.0
    crash_limit: int = 5  # more crashes than this within crash_window_s is a crash loop
    crash_window_s: float = 60.0
    memory_check_s: float = 1.0


class Backoff:
    """Restart delays of one process slot: initial, doubling, capped; ``reset`` after a child
    ran well."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next restart (and count one more failure)."""
        delay = min(self.max_s, self.initial_s * 2.0**self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """Forget earlier failures."""
        self.failures = 0


class CrashGuard:
    """Counts crashes in a sliding window; ``record`` says when there are too many."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()

    def record(self, now: float) -> bool:
        """Note a crash at ``now``; True when more than ``limit`` fell within the window."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        return len(self._times) > self.limit


def describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def read_rss_mib(pid: int) -> float | None:
    """Resident memory of ``pid`` (``VmRSS``) in MiB; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


@dataclass
class _Child:
    slot: int
    proc: subprocess.Popen[bytes]
    report_fd: int
    started: float
    signalled: int = 0
    signalled_at: float = 0.0
    over_memory: bool = False
    over_memory_mib: float = 0.0
    killed: bool = False

    def signal(self, now: float) -> None:
        self.signalled += 1
        self.signalled_at = now
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)

    def read_report(self) -> dict[str, Any] | None:
        chunks = []
        try:
            while chunk := os.read(self.report_fd, 65536):
                chunks.append(chunk)
        except BlockingIOError:
            pass
        finally:
            os.close(self.report_fd)
        lines = b"".join(chunks).decode("utf-8", "replace").strip().splitlines()
        try:
            report = json.loads(lines[-1]) if lines else None
        except ValueError:
            return None
        return report if isinstance(report, dict) else None


@dataclass
class _Tally:
    started: int = 0
    restarted: int = 0
    recycled: int = 0
    jobs: dict[int, int] = field(default_factory=dict)  # pid -> jobs done
    dead_lettered: int = 0

    def summary(self) -> str:
        per_child = " ".join(f"{pid}:{n}" for pid, n in list(self.jobs.items())[:8])
        if len(self.jobs) > 8:
            per_child += f" (and {len(self.jobs) - 8} more)"
        return (
            f"supervisor stopped: {self.started} worker processes started "
            f"({self.restarted} restarted after a crash, {self.recycled} recycled); "
            f"{sum(self.jobs.values())} jobs done, {self.dead_lettered} dead-lettered; "
            f"done per process: {per_child or 'none'}"
        )


class Supervisor:
    """Runs ``options.processes`` children of ``spec`` until a signal, a fatal child error or
    a crash loop; ``run()`` returns the exit code."""

    def __init__(
        self,
        spec: ChildSpec,
        options: SupervisorOptions,
        env: Mapping[str, str],
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.options = options
        self.env = dict(env)
        self.tally = _Tally()
        self._echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self._children: dict[int, _Child] = {}  # slot -> running child
        self._due: dict[int, float] = {}  # slot -> when its replacement starts
        self._backoff = [
            Backoff(options.restart_initial_s, options.restart_max_s)
            for _ in range(options.processes)
        ]
        self._guard = CrashGuard(options.crash_limit, options.crash_window_s)
        self._signals = 0
        self._handled_signals = 0
        self._stopping = False
        self._code: int | None = None  # set by a fatal error or a crash loop
        self._all_clean = True

    def run(self) -> int:
        """Supervise until done; the exit code (0 only if every child ended cleanly)."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for slot in range(self.options.processes):
                self._start(slot)
            next_memory_check = time.monotonic()
            while self._children or not self._stopping:
                now = time.monotonic()
                self._handle_signals(now)
                self._reap(now)
                if not self._stopping:
                    for slot, due in list(self._due.items()):
                        if now >= due:
                            del self._due[slot]
                            self.tally.restarted += 1
                            self._start(slot)
                    if now >= next_memory_check:
                        self._check_memory(now)
                        next_memory_check = now + self.options.memory_check_s
                self._kill_overdue(now)
                time.sleep(_TICK_S)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self._echo(self.tally.summary())
        if self._code is not None:
            return self._code
        return 0 if self._all_clean else 1

    # -- children ----------------------------------------------------------------------------

    def _start(self, slot: int) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        env = {**self.env, REPORT_FD_ENV: str(write_fd)}
        parent = os.getpid()
        spec = self.spec
        if spec.metrics_port is not None:
            # Each slot has its own metrics port; a replacement takes over its slot's port.
            spec = replace(spec, metrics_port=spec.metrics_port + slot)
        try:
            proc = subprocess.Popen(
                spec.command(),
                env=env,
                pass_fds=(write_fd,),
                process_group=0,
                preexec_fn=lambda: _die_with_parent(parent),
            )
        finally:
            os.close(write_fd)
        self._children[slot] = _Child(slot, proc, read_fd, time.monotonic())
        self.tally.started += 1
        log.info("started worker process %d (slot %d)", proc.pid, slot)

    def _reap(self, now: float) -> None:
        for slot, child in list(self._children.items()):
            code = child.proc.poll()
            if code is None:
                continue
            del self._children[slot]
            report = child.read_report()
            if report is not None and "done" in report:
                self.tally.jobs[child.proc.pid] = int(report["done"])
                self.tally.dead_lettered += int(report.get("dead_lettered", 0))
            self._exited(child, code, report, now)

    def _exited(self, child: _Child, code: int, report: dict[str, Any] | None, now: float) -> None:
        pid, outcome = child.proc.pid, (report or {}).get("outcome")
        if outcome == "fatal":
            if self._code is None:
                self._code = int(report["code"]) if report else 1
                # The child's message may quote a name or a job id: never raw to a terminal.
                self._echo(f"error: {escape(str(report['error'])) if report else 'worker failed'}")
                self._echo("stopping every worker process; a restart would fail the same way")
            self._stop_all(now)
            return
        if self._stopping:
            self._all_clean = self._all_clean and code == 0
            log.info("worker process %d stopped (%s)", pid, describe_exit(code))
            return
        if report is not None and outcome == "stopped":
            if child.over_memory and not int(report.get("done", 0) or 0):
                # Over the limit before its first job: every replacement would be too, and
                # recycling them once a second is no service.
                if self._code is None:
                    self._code = EXIT_INVALID
                    self._echo(
                        f"error: a new worker process uses {child.over_memory_mib:.0f} MiB before "
                        f"running any job, above --max-memory {self.options.max_memory_mb:g}; "
                        "raise --max-memory"
                    )
                self._stop_all(now)
                return
            self.tally.recycled += 1
            self._backoff[child.slot].reset()
            why = "over --max-memory" if child.over_memory else report.get("reason", "?")
            log.info("worker process %d recycled (%s); starting a replacement", pid, why)
            self._start(child.slot)
            return
        backoff = self._backoff[child.slot]
        if now - child.started > self.options.crash_window_s:
            backoff.reset()  # it ran well for a while: this is not a loop
        if self._guard.record(now):
            self._echo(
                f"error: worker processes crashed more than {self.options.crash_limit} times "
                f"within {self.options.crash_window_s:g}s (last: {pid}, {describe_exit(code)}); "
                "stopping every worker process"
            )
            self._code = 1
            self._stop_all(now)
            return
        delay = backoff.next_delay()
        self._echo(
            f"worker process {pid} crashed ({describe_exit(code)}); restarting in {delay:g}s"
        )
        self._due[child.slot] = now + delay

    def _check_memory(self, now: float) -> None:
        limit = self.options.max_memory_mb
        if limit is None:
            return
        for child in self._children.values():
            rss = read_rss_mib(child.proc.pid)
            if rss is not None and rss > limit and not child.signalled:
                log.warning(
                    "worker process %d uses %.0f MiB, over --max-memory %g; draining it",
                    child.proc.pid,
                    rss,
                    limit,
                )
                child.over_memory = True
                child.over_memory_mib = rss
                child.signal(now)

    def _kill_overdue(self, now: float) -> None:
        # A child gets its own grace period and a margin, then it is killed: the broker
        # redelivers whatever it held, so nothing is lost.
        limit = self.spec.options.grace_s + _KILL_MARGIN_S
        for child in self._children.values():
            if child.signalled and not child.killed and now - child.signalled_at > limit:
                self._echo(f"worker process {child.proc.pid} did not stop; killing it")
                child.killed = True
                child.proc.kill()

    # -- signals -----------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals += 1

    def _handle_signals(self, now: float) -> None:
        while self._handled_signals < self._signals:
            self._handled_signals += 1
            if not self._stopping:
                log.warning("stopping: draining every worker process")
                self._stop_all(now)
            else:
                log.warning("second stop request: worker processes stop now")
                for child in self._children.values():
                    if child.signalled < 2:
                        child.signal(now)

    def _stop_all(self, now: float) -> None:
        self._stopping = True
        self._due.clear()
        for child in self._children.values():
            if not child.signalled:
                child.signal(now)


def _die_with_parent(parent: int) -> None:
    # Runs in the child between fork and exec; PR_SET_PDEATHSIG survives the exec, and so does
    # the signal mask: the child starts with SIGTERM/SIGINT held back until child_main has its
    # handlers (jobsys.process.child). Otherwise a stop sent while it is still importing kills
    # it by the default disposition, and the supervisor counts a clean stop as a failure.
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the supervisor died before the prctl took effect
        os._exit(1)
