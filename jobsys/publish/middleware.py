"""The app's publish middleware, around each publish of a ``Producer(..., app=app)``:
``async def mw(request, call_next)``.

The first registered is the outermost. ``await call_next(request)`` validates, sends and
awaits the confirm of ``request`` (the one given, or a new ``JobRequest`` the middleware built,
e.g. with a header added: ``dataclasses.replace(request, headers=...)``), and returns the
``Receipt``. A middleware may return without publishing (the caller gets what it returned)
or raise (the caller gets the error; nothing was published unless ``call_next`` ran). Passing
``call_next`` anything but a ``JobRequest`` is a ``ConfigError``; calling it twice publishes
twice, which is the middleware's business (a retry of a refused publish, say).

A producer without publish middleware never comes here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel

from jobsys.app import App, PublishMiddleware
from jobsys.errors import ConfigError
from jobsys.publish.prepare import JobRequest

Send = Callable[[JobRequest], Awaitable[Any]]


def from_app(
    app: App | None, models: Mapping[str, type[BaseModel]] | None
) -> tuple[dict[str, type[BaseModel]], tuple[PublishMiddleware, ...]]:
    """A producer's payload models and publish middleware: the app's handlers' models, with
    ``models`` winning for the job types it names, and the app's publish middleware."""
    if app is None:
        return dict(models or {}), ()
    return {**app.payload_models, **(models or {})}, app.publish_middlewares


async def around_publish(
    middleware: tuple[PublishMiddleware, ...], request: JobRequest, send: Send
) -> Any:
    """Publish ``request`` with ``send`` inside ``middleware``; returns what the chain
    returned (the receipt, unless a middleware returned something else)."""
    return await _step(middleware, 0, request, send)


async def _step(
    middleware: tuple[PublishMiddleware, ...], index: int, request: JobRequest, send: Send
) -> Any:
    if index == len(middleware):
        return await send(request)
    mw = middleware[index]

    async def call_next(next_request: JobRequest) -> Any:
        if not isinstance(next_request, JobRequest):
            raise ConfigError(
                f"publish middleware {_name(mw)} passed call_next a "
                f"{type(next_request).__name__}, not a JobRequest"
            )
        return await _step(middleware, index + 1, next_request, send)

    return await mw(request, call_next)


def _name(func: Any) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
