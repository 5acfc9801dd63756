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
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from jobsys.errors import PayloadValidationError, UnknownJobTypeError

Handler = Callable[..., Any]
_MAX_VALIDATION_ERRORS = 5


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


def _inspect_handler(job_type: str, func: Handler) -> HandlerSpec:
    if not callable(func):
        raise ValueError(f"the handler of {job_type!r} is not callable")
    params = list(inspect.signature(func).parameters.values())
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    required_rest = [
        p
        for p in params[len(positional) :]
        if p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
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
