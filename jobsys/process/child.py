"""One worker process started by the supervisor: ``python -m jobsys.process.child SPEC``.

A lightweight entry point: it imports no click and none of the command line, and the
OpenTelemetry SDK only when ``OTEL_*`` variables ask for an exporter, so each of the
supervisor's children carries only what a worker needs. Importing this module loads nothing
heavy either (not even asyncio); the supervisor imports it for ``ChildSpec``.

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
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from jobsys.consume.options import WorkerOptions
from jobsys.observe.telemetry_env import telemetry_from_env

if TYPE_CHECKING:
    from jobsys.app import App
    from jobsys.consume.worker import Worker
    from jobsys.process.serve import StopRequests

log = logging.getLogger(__name__)

#: Environment variable naming the pipe a child reports on.
REPORT_FD_ENV = "JOBSYS_SUPERVISOR_FD"


@dataclass(frozen=True)
class ChildSpec:
    """What a child runs: the app, the topology file and the worker's options (everything of
    ``jobsys worker`` but ``--processes`` and ``--max-memory``). The broker URL travels in the
    environment, never on a command line."""

    app_target: str
    topology_file: str
    options: WorkerOptions = field(default_factory=WorkerOptions)
    verbose: int = 0
    #: Where this process serves its Prometheus metrics (None: it does not).
    metrics_port: int | None = None
    metrics_bind: str = "127.0.0.1"

    def command(self) -> list[str]:
        """The child's command line."""
        return [sys.executable, "-m", "jobsys.process.child", self.to_json()]

    def to_json(self) -> str:
        """The spec as ``from_json`` reads it."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ChildSpec:
        """The spec that ``command()`` put on the command line."""
        data = json.loads(text)
        options = dict(data.get("options") or {})
        options["queues"] = tuple(options.get("queues", ()))
        return cls(
            app_target=data["app_target"],
            topology_file=data["topology_file"],
            options=WorkerOptions(**options),
            verbose=int(data.get("verbose", 0)),
            metrics_port=data.get("metrics_port"),
            metrics_bind=data.get("metrics_bind", "127.0.0.1"),
        )


def load_app(target: str) -> App:
    """The ``App`` named by ``module:attribute`` (the current directory is importable);
    ``ConfigError`` says what is wrong with ``target`` in one line, and carries the import's
    own exception as its cause (for ``-v`` to show its traceback)."""
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
    except ModuleNotFoundError as exc:
        raise ConfigError(_not_found(module_name, exc)) from exc
    except (Exception, SystemExit) as exc:
        # Anything the module raises while it loads (a missing setting, a handler with a bad
        # signature, even sys.exit): one line that says what and where, not a traceback.
        raise ConfigError(f"cannot import {module_name!r}: {_raised_where(exc)}") from exc
    if not hasattr(module, attribute):
        raise ConfigError(f"module {module_name!r} has no {attribute!r}")
    app = getattr(module, attribute)
    if not isinstance(app, App):
        raise ConfigError(f"{target} is not a jobsys App (got {type(app).__name__})")
    return app


def _not_found(module_name: str, exc: ModuleNotFoundError) -> str:
    missing = exc.name or "?"
    if module_name == missing or module_name.startswith(missing + "."):
        return (
            f"cannot import {module_name!r}: no module {missing!r} in the current directory "
            f"({os.getcwd()}) or on PYTHONPATH; run jobsys where the module is, or set "
            "PYTHONPATH to its directory"
        )
    # The app was found; something it imports was not.
    return f"cannot import {module_name!r}: {_raised_where(exc)}"


def _raised_where(exc: BaseException) -> str:
    """``RuntimeError: config missing (myapp.py:3)``: the error and the line of the app's own
    code that raised it (not a line of the import machinery, or of jobsys when the app called
    it wrongly)."""
    import traceback

    import jobsys

    ours = os.path.dirname(os.path.abspath(jobsys.__file__))
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<frozen")
    ]
    theirs = [f for f in frames if not os.path.abspath(f.filename).startswith(ours + os.sep)]
    chosen = theirs or frames
    where = f" ({os.path.relpath(chosen[-1].filename)}:{chosen[-1].lineno})" if chosen else ""
    return f"{type(exc).__name__}: {exc}{where}"


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
    # Imported here, not at the top: the supervisor imports this module for ``ChildSpec``
    # and must not load asyncio (see ``jobsys.process.logs``).
    from jobsys.process.serve import StopRequests, configure_logging, exit_code_for

    requests = StopRequests()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Until the worker's loop takes the signals over: a stop that comes while the child is
        # still starting is kept and honoured as soon as the worker exists.
        signal.signal(sig, lambda _signum, _frame: requests.request())
    # The supervisor starts the child with both held back (a stop sent during the imports
    # above would have killed it); one sent meanwhile is delivered now, to the handlers.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))
    report = _Report()
    configure_logging(spec.verbose, service=True)
    from jobsys.errors import JobsysError

    try:
        worker, code = _run(spec, requests)
    except JobsysError as exc:
        code = exit_code_for(exc)
        report.send(outcome="fatal", code=code, error=str(exc))
        return code
    stats = worker.stats
    report.send(
        outcome="stopped",
        reason="signal" if requests.count else "max_jobs",
        graceful=worker.graceful,
        done=stats.done,
        dead_lettered=stats.dead_lettered,
        requeued=stats.requeued,
        unfinished=stats.unfinished,
    )
    log.info("%s (pid %d)", stats.summary(), os.getpid())
    # The worker is done and has reported. Python puts the default dispositions back while it
    # finalizes, and a stop arriving then (the supervisor stopping every child just as this
    # one recycles) would end it "killed by SIGTERM", a failure; held back, it is moot.
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))
    if worker.lingering_threads:
        # A sync handler cannot be interrupted; do not let it hold the process open.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(spec: ChildSpec, requests: StopRequests) -> tuple[Worker, int]:
    import asyncio

    from jobsys.consume.worker import Worker
    from jobsys.process.serve import serve
    from jobsys.settings import Settings
    from jobsys.topology.loader import load_topology

    app = load_app(spec.app_target)
    loaded = load_topology(spec.topology_file)
    worker = Worker(app, loaded, Settings.from_env(), spec.options)
    with contextlib.ExitStack() as stack:
        if spec.metrics_port is not None:
            from jobsys.observe.prometheus import serve_metrics

            server = serve_metrics(spec.metrics_bind, spec.metrics_port, worker.health)
            stack.callback(server.close)
        stack.enter_context(telemetry_from_env("jobsys-worker"))
        return worker, asyncio.run(serve(worker, requests))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m jobsys.process.child SPEC (started by jobsys worker)")
    sys.exit(child_main(ChildSpec.from_json(sys.argv[1])))
