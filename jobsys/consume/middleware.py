"""The app's attempt middleware, around the handler: ``async def mw(ctx, call_next)``.

The first middleware registered is the outermost. ``await call_next()`` runs the middleware
inside it and then the handler, and returns the handler's return value; a middleware that
returns without calling it short-circuits the attempt, which then counts as done (raise
``Retry`` or ``Reject`` to have it retried or dead-lettered instead). Whatever a middleware
raises is the attempt's failure, settled exactly as a handler's (the dead-letter record names
it). ``call_next`` runs the chain once: a second call is a ``RuntimeError``.

The job type's ``timeout`` covers the chain: an async handler runs under the chain's deadline
alone (one timer per attempt, as without middleware); a sync handler keeps its own deadline
(its thread's accounting needs it) and the chain gets ``MIDDLEWARE_SLACK_S`` more, so that its
own deadline fires first for it while a middleware that blocks is stopped too.

A worker whose app has no middleware never comes here: the handler is called directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from jobsys.app import JobContext, Middleware
from jobsys.duration import format_duration

#: How much longer than the handler's deadline the whole chain may take.
MIDDLEWARE_SLACK_S = 1.0


async def around(
    middleware: tuple[Middleware, ...],
    ctx: JobContext,
    handler: Callable[[], Awaitable[Any]],
    timeout_s: float,
    slack_s: float = MIDDLEWARE_SLACK_S,
) -> Any:
    """Run ``handler`` inside ``middleware`` (at least one) under the job's deadline plus
    ``slack_s``; returns what the chain returned."""
    try:
        async with asyncio.timeout(timeout_s + slack_s) as deadline:
            return await middleware[0](ctx, _next(middleware, 1, ctx, handler))
    except TimeoutError:
        if not deadline.expired():
            raise
        raise TimeoutError(
            f"job exceeded its deadline of {format_duration(timeout_s)} (the job type's "
            "timeout) with its middleware"
        ) from None


def _next(
    middleware: tuple[Middleware, ...],
    index: int,
    ctx: JobContext,
    handler: Callable[[], Awaitable[Any]],
) -> Callable[[], Awaitable[Any]]:
    """The ``call_next`` of ``middleware[index - 1]``: it returns the awaitable of the next
    middleware (or of the handler) itself, not a coroutine wrapping it, so each link of the
    chain costs one coroutine, the middleware's own."""
    called = False

    def call_next() -> Awaitable[Any]:
        nonlocal called
        if called:
            raise RuntimeError(f"middleware {_name(middleware[index - 1])} called call_next twice")
        called = True
        if index == len(middleware):
            return handler()
        return middleware[index](ctx, _next(middleware, index + 1, ctx, handler))

    return call_next


def _name(func: Any) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
