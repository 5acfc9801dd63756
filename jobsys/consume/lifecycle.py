"""Running the ``App``'s lifecycle hooks: the startup hooks before a worker takes any job, the
shutdown hooks after it drained.

A startup hook that raises anything (``SystemExit`` and ``KeyboardInterrupt`` included) or
overruns its timeout stops the worker with one ``StartupFailed`` naming the hook and the
error; the hooks after it do not run, and neither do the shutdown hooks (what the hooks before
it opened goes with the process). A shutdown hook that fails is logged with its traceback and
the others still run: the worker has drained, so no job depends on it any more.

A sync hook runs in a daemon thread of its own: one that blocks past its timeout is left
behind and cannot hold the process open at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from jobsys.app import App, HookSpec
from jobsys.broker.connection import cancel_requested
from jobsys.duration import format_duration
from jobsys.errors import StartupFailed
from jobsys.wire.deadletter import error_text
from jobsys.wire.display import escape

log = logging.getLogger(__name__)

#: How long one hook may take, unless the worker is told otherwise (``--hook-timeout``).
DEFAULT_HOOK_TIMEOUT_S = 60.0
_MAX_ERROR_CHARS = 500


async def run_startup_hooks(app: App, timeout_s: float) -> None:
    """Run ``app``'s startup hooks in order; ``StartupFailed`` for the first that fails."""
    for hook in app.startup_hooks:
        try:
            await _run(hook, app, timeout_s)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and cancel_requested():
                raise
            raise StartupFailed(
                f"startup hook {escape(hook.name)} failed: {describe(exc, timeout_s)}; the "
                "worker stopped before taking any job"
            ) from exc
        log.info("startup hook %s done", hook.name)


async def run_shutdown_hooks(app: App, timeout_s: float) -> int:
    """Run ``app``'s shutdown hooks in order, logging each failure; returns how many failed."""
    failed = 0
    for hook in app.shutdown_hooks:
        try:
            await _run(hook, app, timeout_s)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and cancel_requested():
                raise
            failed += 1
            log.error(
                "shutdown hook %s failed: %s", hook.name, describe(exc, timeout_s), exc_info=exc
            )
    return failed


def describe(exc: BaseException, timeout_s: float) -> str:
    """``RuntimeError: no database`` (shortened), or what the hook's timeout means."""
    if isinstance(exc, _Overran):
        return f"it did not finish within {format_duration(timeout_s)} (--hook-timeout)"
    said = error_text(exc)
    text = escape(f"{type(exc).__name__}: {said}" if said != type(exc).__name__ else said)
    if len(text) > _MAX_ERROR_CHARS:
        text = text[:_MAX_ERROR_CHARS] + "…"
    return text


class _Overran(Exception):
    """A hook ran past its timeout."""


async def _run(hook: HookSpec, app: App, timeout_s: float) -> None:
    args: tuple[Any, ...] = (app.state,) if hook.wants_state else ()
    try:
        async with asyncio.timeout(timeout_s) as deadline:
            if hook.is_async:
                await hook.func(*args)
                return
            result = await _in_thread(hook, args)
            if asyncio.iscoroutine(result):  # e.g. a partial of an async function
                await result
    except TimeoutError:
        if deadline.expired():
            raise _Overran from None
        raise


async def _in_thread(hook: HookSpec, args: tuple[Any, ...]) -> Any:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return  # given up at the timeout
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def call() -> None:
        result, error = None, None
        try:
            result = hook.func(*args)
        except BaseException as exc:  # SystemExit too: it is the hook's failure, not ours
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=call, name=f"jobsys hook {hook.name}", daemon=True).start()
    return await future
