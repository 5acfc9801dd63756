"""The tracer jobsys's spans use, and the switch that turns tracing off for the process after
the tracing machinery itself failed (``jobsys.observe.tracing`` makes the spans).
"""

from __future__ import annotations

import logging

from opentelemetry import trace

#: The warning keeps the logger name it had when it lived in `tracing`.
log = logging.getLogger("jobsys.observe.tracing")

_INSTRUMENTATION_NAME = "jobsys"


class State:
    """The tracer in use and whether tracing switched itself off after a failure."""

    def __init__(self) -> None:
        self.tracer: trace.Tracer | None = None
        self.disabled = False


state = State()


def use_tracer_provider(provider: trace.TracerProvider | None) -> None:
    """Trace through ``provider`` instead of the global one (None: back to the global one).

    Also re-enables tracing after it switched itself off. Meant for tests and for programs
    that keep their own provider rather than setting the global one.
    """
    state.tracer = provider.get_tracer(_INSTRUMENTATION_NAME) if provider is not None else None
    state.disabled = False


def current_tracer() -> trace.Tracer:
    """The tracer spans are made with: the one set by `use_tracer_provider`, else the global."""
    tracer = state.tracer
    if tracer is None:
        # A proxy when no SDK is set yet: it starts recording once a provider is installed.
        tracer = state.tracer = trace.get_tracer(_INSTRUMENTATION_NAME)
    return tracer


def recording(tracer: trace.Tracer) -> bool:
    """False for the API's no-op tracers, whose spans would drop every attribute anyway."""
    if isinstance(tracer, trace.NoOpTracer):
        return False
    if isinstance(tracer, trace.ProxyTracer):
        # Delegates to a no-op tracer until an SDK provider is installed.
        return not isinstance(getattr(tracer, "_tracer", None), trace.NoOpTracer)
    return True


def instrumentation_failed(exc: BaseException) -> None:
    """Turn tracing off for this process, saying why once: instrumentation never fails a job."""
    if not state.disabled:
        state.disabled = True
        log.warning(
            "tracing failed and is now off for this process; jobs are not affected",
            exc_info=exc,
        )
