"""The handler registry: job type -> handler, with no connection (pure, no aio-pika).

An ``App`` is created at import time and handlers register on it with ``@app.handler``; it is
bound to a broker only when a worker starts. A handler takes the payload as its first
parameter and, optionally, a ``JobContext`` as its second::

    app = App()

    @app.handler("send_email")
    async def send(payload: EmailPayload, ctx: JobContext) -> None: ...

When the first parameter is annotated with a pydantic model, the payload is validated into it
before the handler runs; otherwise the handler gets the decoded JSON as it is. Sync functions
are allowed; the worker runs them in a thread pool.

Lifecycle hooks run once per worker process: ``@app.on_startup`` before it takes its first job
(to open a database pool, say, and put it on ``app.state``), ``@app.on_shutdown`` after it has
drained. A handler reaches ``app.state`` as ``ctx.state``. Running them is ``jobsys.consume``'s
job (``jobsys.consume.lifecycle``); here they are only registered and checked.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from jobsys.errors import PayloadValidationError, UnknownJobTypeError

Handler = Callable[..., Any]
Hook = Callable[..., Any]
#: ``async def mw(ctx, call_next)`` around every attempt; ``await call_next()`` runs the rest of
#: the chain and the handler, and returns the handler's return value.
Middleware = Callable[["JobContext", Callable[[], Awaitable[Any]]], Awaitable[Any]]
#: ``async def mw(request, call_next)`` around every publish of a ``Producer`` built with the
#: app; ``await call_next(request)`` publishes (a request it may have replaced) and returns the
#: ``Receipt``. Typed loosely here: the request and receipt types live in ``jobsys.publish``.
PublishMiddleware = Callable[[Any, Callable[[Any], Awaitable[Any]]], Awaitable[Any]]
_MAX_VALIDATION_ERRORS = 5


class State(SimpleNamespace):
    """What the startup hooks of one worker process share with its handlers (a database pool,
    an HTTP client): set attributes on ``app.state``, read them as ``ctx.state``."""


@dataclass(frozen=True)
class JobContext:
    """What a handler may know about the job it runs, besides the payload."""

    job_id: str
    job_type: str
    attempt: int
    headers: Mapping[str, Any]
    queue: str
    redelivered: bool
    #: When a delayed job or a retry after a delay was due (it never starts earlier); None for
    #: a job published to run at once.
    due_at: datetime | None = None
    #: The job's AMQP priority (None: published without one).
    priority: int | None = None
    #: The W3C trace id of the job's trace (32 hex digits), for logs that link to it; None when
    #: nothing traced the job.
    trace_id: str | None = None
    #: The app's ``state``: what its startup hooks opened for the handlers of this process.
    state: State = field(default_factory=State)
    #: Where ``publish`` holds follow-up jobs; set by the worker.
    outbox: Outbox | None = field(default=None, repr=False, compare=False)

    async def publish(
        self,
        job_type: str,
        payload: Any,
        *,
        priority: int | None = None,
        delay_s: float | None = None,
        headers: Mapping[str, Any] | None = None,
        run_at: datetime | None = None,
        then: str | None = None,
    ) -> str:
        """Hold a follow-up job, published (and confirmed) only if this attempt succeeds,
        before the job is acked; returns its id, derived from this job's id. The job is
        validated at once: a bad payload or job type raises here. See ``hold`` for sync
        handlers and docs/handlers.md for the guarantees."""
        return self.hold(
            job_type,
            payload,
            priority=priority,
            delay_s=delay_s,
            headers=headers,
            run_at=run_at,
            then=then,
        )

    def hold(
        self,
        job_type: str,
        payload: Any,
        *,
        priority: int | None = None,
        delay_s: float | None = None,
        headers: Mapping[str, Any] | None = None,
        run_at: datetime | None = None,
        then: str | None = None,
    ) -> str:
        """``publish`` for sync handlers (it does no I/O: the job is sent after the handler)."""
        if self.outbox is None:
            raise RuntimeError("follow-up jobs need a worker: this JobContext was not made by one")
        return self.outbox.hold(
            job_type,
            payload,
            priority=priority,
            delay_s=delay_s,
            headers=headers,
            run_at=run_at,
            then=then,
        )


class Outbox(Protocol):
    """Where a job's follow-ups wait until its attempt succeeded (``jobsys.consume.followups``)."""

    def hold(
        self,
        job_type: str,
        payload: Any,
        *,
        priority: int | None,
        delay_s: float | None,
        headers: Mapping[str, Any] | None,
        run_at: datetime | None,
        then: str | None,
    ) -> str:
        """Validate and keep one follow-up; returns its job id."""


@dataclass(frozen=True)
class HookSpec:
    """One lifecycle hook: a function of no argument or of the app's ``State``."""

    name: str
    func: Hook
    wants_state: bool
    is_async: bool


@dataclass(frozen=True)
class HandlerSpec:
    """One registered handler and how to call it, worked out once at registration."""

    job_type: str
    func: Handler
    payload_model: type[BaseModel] | None
    wants_context: bool
    is_async: bool

    def parse_payload(self, payload: Any) -> Any:
        """The payload as the handler wants it; ``PayloadValidationError`` names the fields.

        The error text carries field paths and pydantic's messages, never input values: it
        ends up in dead-letter headers, which must not leak the job's content.
        """
        if self.payload_model is None:
            return payload
        try:
            return self.payload_model.model_validate(payload)
        except ValidationError as exc:
            raise PayloadValidationError(_describe(exc, self.job_type)) from None


def _describe(exc: ValidationError, job_type: str) -> str:
    errors = exc.errors(include_input=False, include_url=False)
    parts = []
    for error in errors[:_MAX_VALIDATION_ERRORS]:
        path = ".".join(str(part) for part in error["loc"]) or "payload"
        parts.append(f"{path}: {error['msg']}")
    more = len(errors) - _MAX_VALIDATION_ERRORS
    if more > 0:
        parts.append(f"and {more} more")
    return f"invalid payload for job type {job_type!r}: " + "; ".join(parts)


class App:
    """Handlers by job type. Holds no connection; a worker binds it to one when it starts."""

    def __init__(self) -> None:
        self._handlers: dict[str, HandlerSpec] = {}
        #: Shared by the hooks and the handlers of one worker process (``ctx.state``).
        self.state = State()
        self._startup: list[HookSpec] = []
        self._shutdown: list[HookSpec] = []
        self._middleware: list[Middleware] = []
        self._publish_middleware: list[PublishMiddleware] = []

    def on_startup(self, func: Hook) -> Hook:
        """Register ``func`` (sync or async, taking nothing or the app's ``State``) to run once
        per worker process before it takes any job, in registration order. If it raises, the
        worker stops before consuming, with exit code 5."""
        self._startup.append(_inspect_hook("startup", func))
        return func

    def on_shutdown(self, func: Hook) -> Hook:
        """Register ``func`` to run once per worker process after it drained (also on SIGTERM),
        in registration order; one that raises is logged and the others still run."""
        self._shutdown.append(_inspect_hook("shutdown", func))
        return func

    def middleware(self, func: Middleware) -> Middleware:
        """Register ``func`` (``async def mw(ctx, call_next)``) around every attempt; see
        ``add_middleware``."""
        return self.add_middleware(func)

    def add_middleware(self, func: Middleware) -> Middleware:
        """Add ``func`` around every attempt, inside the ones added before it (the first added
        runs first). It gets the job's ``JobContext`` and ``call_next``; raising ``Retry``,
        ``Reject`` or any error settles the attempt as the handler's would."""
        self._middleware.append(_check_middleware("middleware", func, "ctx"))
        return func

    def publish_middleware(self, func: PublishMiddleware) -> PublishMiddleware:
        """Register ``func`` (``async def mw(request, call_next)``) around every publish of a
        ``Producer(..., app=app)``; see ``add_publish_middleware``."""
        return self.add_publish_middleware(func)

    def add_publish_middleware(self, func: PublishMiddleware) -> PublishMiddleware:
        """Add ``func`` around every publish of a producer built with this app, inside the ones
        added before it. It gets the ``JobRequest`` and ``call_next(request)``."""
        self._publish_middleware.append(_check_middleware("publish middleware", func, "request"))
        return func

    @property
    def middlewares(self) -> tuple[Middleware, ...]:
        """The attempt middleware, outermost first."""
        return tuple(self._middleware)

    @property
    def publish_middlewares(self) -> tuple[PublishMiddleware, ...]:
        """The publish middleware, outermost first."""
        return tuple(self._publish_middleware)

    @property
    def payload_models(self) -> dict[str, type[BaseModel]]:
        """The pydantic payload models of the handlers, by job type."""
        return {s.job_type: s.payload_model for s in self if s.payload_model is not None}

    @property
    def startup_hooks(self) -> tuple[HookSpec, ...]:
        """The startup hooks, in registration order."""
        return tuple(self._startup)

    @property
    def shutdown_hooks(self) -> tuple[HookSpec, ...]:
        """The shutdown hooks, in registration order."""
        return tuple(self._shutdown)

    def handler(self, job_type: str) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of ``job_type``.

        Raises ``ValueError`` when ``job_type`` already has a handler or the function's
        signature cannot take a payload (and optionally a context).
        """

        def register(func: Handler) -> Handler:
            self.register(job_type, func)
            return func

        return register

    def register(self, job_type: str, func: Handler) -> HandlerSpec:
        """Register ``func`` as the handler of ``job_type`` (the decorator's plain form)."""
        if not job_type or not isinstance(job_type, str):
            raise ValueError("a job type must be a non-empty string")
        if job_type in self._handlers:
            existing = self._handlers[job_type].func
            raise ValueError(f"job type {job_type!r} already has a handler: {_qualname(existing)}")
        spec = _inspect_handler(job_type, func)
        self._handlers[job_type] = spec
        return spec

    def get(self, job_type: str) -> HandlerSpec:
        """The handler of ``job_type``; ``UnknownJobTypeError`` when there is none."""
        spec = self._handlers.get(job_type)
        if spec is None:
            raise UnknownJobTypeError(f"no handler for job type {job_type!r} in this worker")
        return spec

    @property
    def job_types(self) -> list[str]:
        """The job types that have a handler, in registration order."""
        return list(self._handlers)

    def __contains__(self, job_type: object) -> bool:
        return job_type in self._handlers

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(self._handlers.values())

    def __len__(self) -> int:
        return len(self._handlers)


def _qualname(func: Handler) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def _positional(func: Callable[..., Any]) -> tuple[list[inspect.Parameter], bool]:
    """The positional parameters of ``func``, and whether it has required keyword-only ones."""
    params = list(inspect.signature(func).parameters.values())
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    required_rest = any(
        p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
        for p in params
    )
    return positional, required_rest


def _check_middleware(kind: str, func: Any, first: str) -> Any:
    shape = f"async def mw({first}, call_next)"
    if not callable(func):
        raise ValueError(f"a {kind} must be a function ({shape}), got {type(func).__name__}")
    call = func if inspect.isroutine(func) or isinstance(func, functools.partial) else func.__call__
    if not inspect.iscoroutinefunction(call):
        raise ValueError(f"the {kind} {_qualname(func)} must be {shape}: it is not async")
    positional, required_rest = _positional(func)
    if len(positional) != 2 or required_rest:
        raise ValueError(f"the {kind} {_qualname(func)} must be {shape}")
    return func


def _inspect_hook(kind: str, func: Hook) -> HookSpec:
    if not callable(func):
        raise ValueError(f"a {kind} hook must be a function, got {type(func).__name__}")
    try:
        positional, required_rest = _positional(func)
    except (TypeError, ValueError):  # a builtin without a signature: called with nothing
        positional, required_rest = [], False
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    if len(required) > 1 or required_rest:
        raise ValueError(f"the {kind} hook {_qualname(func)} must take () or (state)")
    return HookSpec(
        name=_qualname(func),
        func=func,
        wants_state=len(required) == 1,
        is_async=inspect.iscoroutinefunction(func),
    )


def _inspect_handler(job_type: str, func: Handler) -> HandlerSpec:
    if not callable(func):
        raise ValueError(f"the handler of {job_type!r} is not callable")
    positional, required_rest = _positional(func)
    if not positional or len(positional) > 2 or required_rest:
        raise ValueError(
            f"the handler of {job_type!r} ({_qualname(func)}) must take (payload) or (payload, ctx)"
        )
    return HandlerSpec(
        job_type=job_type,
        func=func,
        payload_model=_payload_model(func, positional[0].name),
        wants_context=len(positional) == 2,
        is_async=inspect.iscoroutinefunction(func),
    )


def _payload_model(func: Handler, name: str) -> type[BaseModel] | None:
    # get_type_hints resolves string annotations (``from __future__ import annotations``).
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:  # a NameError in an annotation is the user's to fix
        raise ValueError(f"cannot resolve the annotations of {_qualname(func)}: {exc}") from exc
    hint = hints.get(name)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint
    return None
