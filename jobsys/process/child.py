"""One worker process started by the supervisor: ``python -m jobsys.process.child SPEC``.

A lightweight entry point: it imports no click and none of the command line, and the
OpenTelemetry SDK only when ``OTEL_*`` variables ask for an exporter, so each of the
supervisor's children carries only what a worker needs. Importing this module loads nothing
heavy either; the supervisor imports it for ``ChildSpec``.

The child runs an ordinary ``Worker``: SIGTERM/SIGINT drains, a second signal stops at once;
a signal that arrives while the child is still starting is honoured as soon as the worker
exists. When it ends it writes one JSON line to the pipe named by ``JOBSYS_SUPERVISOR_FD``:
``{"outcome": "stopped", "reason": "max_jobs"|"signal", "graceful": ..., "done": ...}`` or
``{"outcome": "fatal", "code": N, "error": "..."}`` for what a restart cannot fix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobsys.app import App
    from jobsys.consume.worker import Worker
    from jobsys.errors import JobsysError

log = logging.getLogger(__name__)

#: Environment variable naming the pipe a child reports on.
REPORT_FD_ENV = "JOBSYS_SUPERVISOR_FD"


@dataclass(frozen=True)
class ChildSpec:
    """What a child runs: the options of ``jobsys worker`` except ``--processes`` and
    ``--max-memory``. The broker URL travels in the environment, never on a command line."""

    app_target: str
    topology_file: str
    queues: tuple[str, ...] = ()
    concurrency: int | None = None
    prefetch: int | None = None
    grace_s: float = 30.0
    max_jobs: int | None = None
    verbose: int = 0

    def command(self) -> list[str]:
        """The child's command line."""
        return [sys.executable, "-m", "jobsys.process.child", json.dumps(asdict(self))]

    @classmethod
    def from_json(cls, text: str) -> ChildSpec:
        """The spec that ``command()`` put on the command line."""
        data = json.loads(text)
        data["queues"] = tuple(data.get("queues", ()))
        return cls(**data)


def load_app(target: str) -> App:
    """The ``App`` named by ``module:attribute`` (the current directory is importable);
    ``ConfigError`` says what is wrong with ``target``."""
    import importlib

    from jobsys.app import App
    from jobsys.errors import ConfigError

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError("expected MODULE:OBJECT, e.g. myapp.jobs:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    if not hasattr(module, attribute):
        raise ConfigError(f"module {module_name!r} has no {attribute!r}")
    app = getattr(module, attribute)
    if not isinstance(app, App):
        raise ConfigError(f"{target} is not a jobsys App (got {type(app).__name__})")
    return app


def exit_code_for(exc: JobsysError) -> int:
    """The exit code for ``exc``: the table of ``jobsys.cli.common.exit_code_for``, repeated
    here because library modules never import the command line (a unit test keeps the two
    equal)."""
    from jobsys.errors import (
        AccessRefused,
        ConfigError,
        ConnectionFailed,
        MessageError,
        TopologyConflictError,
        TopologyLoadError,
    )

    if isinstance(exc, TopologyConflictError):
        return 3
    if isinstance(exc, TopologyLoadError | ConfigError | MessageError):
        return 2
    if isinstance(exc, ConnectionFailed | AccessRefused):
        return 4
    return 1


def _configure_logging(verbose: int) -> None:
    # The same format and levels as the command line's ``-v``.
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if verbose < 2:
        logging.getLogger("aio_pika").setLevel(logging.CRITICAL)
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)


def _telemetry_wanted(env: dict[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = [env.get("OTEL_TRACES_EXPORTER"), env.get("OTEL_METRICS_EXPORTER")]
    named = any(e and any(n.strip() not in ("", "none") for n in e.split(",")) for e in exporters)
    return named or any(k.startswith("OTEL_EXPORTER_OTLP_") and k.endswith("ENDPOINT") for k in env)


class _Report:
    """The pipe to the supervisor (absent when the child runs on its own)."""

    def __init__(self) -> None:
        fd = os.environ.pop(REPORT_FD_ENV, None)
        self.fd = int(fd) if fd else None
        if self.fd is not None:
            os.set_inheritable(self.fd, False)  # not for the handlers' own subprocesses

    def send(self, **fields: Any) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
            os.write(self.fd, (json.dumps(fields) + "\n").encode())


def child_main(spec: ChildSpec) -> int:
    """Run one worker as the supervisor's child; returns the exit code."""
    early: list[int] = []  # signals that arrive before the worker can take them
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    report = _Report()
    _configure_logging(spec.verbose)
    from jobsys.errors import JobsysError

    try:
        worker, stop_requests = _run(spec, early)
    except JobsysError as exc:
        code = exit_code_for(exc)
        report.send(outcome="fatal", code=code, error=str(exc))
        return code
    stats = worker.stats
    reason = "signal" if stop_requests else "max_jobs"
    report.send(
        outcome="stopped",
        reason=reason,
        graceful=worker.graceful,
        done=stats.done,
        dead_lettered=stats.dead_lettered,
        requeued=stats.requeued,
        unfinished=stats.unfinished,
    )
    log.info("%s (pid %d)", stats.summary(), os.getpid())
    code = 0 if worker.graceful else 1
    if worker.lingering_threads:
        # A sync handler cannot be interrupted; do not let it hold the process open.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(spec: ChildSpec, early: list[int]) -> tuple[Worker, int]:
    # Returns the worker and how many stop requests (signals) it got.
    import asyncio

    from jobsys.consume.worker import Worker, WorkerOptions
    from jobsys.settings import Settings
    from jobsys.topology.loader import load_topology

    app = load_app(spec.app_target)
    loaded = load_topology(spec.topology_file)
    settings = Settings.from_env()
    options = WorkerOptions(
        queues=spec.queues,
        concurrency=spec.concurrency,
        prefetch=spec.prefetch,
        grace_s=spec.grace_s,
        max_jobs=spec.max_jobs,
    )
    worker = Worker(app, loaded, settings, options)

    requests = 0

    def stop() -> None:
        nonlocal requests
        requests += 1
        worker.request_stop()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        for _ in early:
            stop()
        await worker.run()

    if _telemetry_wanted(dict(os.environ)):
        from jobsys.observe.telemetry_setup import configure_from_env

        with configure_from_env("jobsys-worker"):
            asyncio.run(serve())
    else:
        asyncio.run(serve())
    return worker, requests


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m jobsys.process.child SPEC (started by jobsys worker)")
    sys.exit(child_main(ChildSpec.from_json(sys.argv[1])))
