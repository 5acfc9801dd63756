"""Lifecycle hooks: registration checks and how they run (no broker involved)."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time

import pytest

from jobsys.app import App, State
from jobsys.consume.lifecycle import run_shutdown_hooks, run_startup_hooks
from jobsys.errors import StartupFailed
from jobsys.process.serve import EXIT_STARTUP, exit_code_for


def test_a_hook_that_is_not_callable_is_refused_at_registration() -> None:
    app = App()
    with pytest.raises(ValueError, match="must be a function, got str"):
        app.on_startup("open_pool")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a function, got NoneType"):
        app.on_shutdown(None)  # type: ignore[arg-type]


def test_a_hook_that_needs_more_than_the_state_is_refused() -> None:
    app = App()

    def two(state: State, other: int) -> None: ...

    def keyword_only(*, pool: int) -> None: ...

    with pytest.raises(ValueError, match=r"must take \(\) or \(state\)"):
        app.on_startup(two)
    with pytest.raises(ValueError, match=r"must take \(\) or \(state\)"):
        app.on_shutdown(keyword_only)


async def test_hooks_run_in_registration_order_sync_and_async_with_or_without_the_state() -> None:
    app = App()
    seen: list[str] = []

    @app.on_startup
    async def first(state: State) -> None:
        state.pool = "pool"
        seen.append("first")

    @app.on_startup
    def second(state: State) -> None:
        seen.append(f"second {state.pool}")

    @app.on_startup
    def third() -> None:
        seen.append("third")

    async def partial_target(name: str) -> None:
        seen.append(name)

    app.on_startup(functools.partial(partial_target, "partial"))

    await run_startup_hooks(app, 5)
    assert seen == ["first", "second pool", "third", "partial"]
    assert app.state.pool == "pool"


@pytest.mark.parametrize(
    ("raised", "shown"),
    [
        (RuntimeError("no database"), "RuntimeError: no database"),
        (SystemExit(3), "SystemExit: 3"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (asyncio.CancelledError(), "CancelledError"),
    ],
)
@pytest.mark.parametrize("is_async", [True, False])
async def test_a_failing_startup_hook_names_itself_and_its_error_and_stops_the_rest(
    raised: BaseException, shown: str, is_async: bool
) -> None:
    app = App()
    later: list[str] = []

    async def failing_async() -> None:
        raise raised

    def failing_sync() -> None:
        raise raised

    app.on_startup(failing_async if is_async else failing_sync)
    app.on_startup(lambda: later.append("ran"))

    with pytest.raises(StartupFailed) as caught:
        await run_startup_hooks(app, 5)
    message = str(caught.value)
    name = "failing_async" if is_async else "failing_sync"
    assert message.startswith(f"startup hook {__name__}.")
    assert f".{name} failed: {shown}" in message
    assert "the worker stopped before taking any job" in message
    assert later == []
    assert exit_code_for(caught.value) == EXIT_STARTUP == 5


@pytest.mark.parametrize("is_async", [True, False])
async def test_a_blocking_startup_hook_is_given_up_at_its_timeout(is_async: bool) -> None:
    app = App()

    async def stuck_async() -> None:
        await asyncio.sleep(3600)

    def stuck_sync() -> None:
        time.sleep(3600)  # a daemon thread: it cannot hold the test process open

    app.on_startup(stuck_async if is_async else stuck_sync)
    with pytest.raises(StartupFailed, match=r"did not finish within 200ms \(--hook-timeout\)"):
        await run_startup_hooks(app, 0.2)


async def test_the_hooks_own_timeout_error_is_its_failure_not_the_deadline() -> None:
    app = App()

    @app.on_startup
    async def times_out() -> None:
        raise TimeoutError("the database did not answer")

    with pytest.raises(StartupFailed, match="TimeoutError: the database did not answer"):
        await run_startup_hooks(app, 5)


async def test_an_error_message_with_control_characters_is_escaped_and_shortened() -> None:
    app = App()

    @app.on_startup
    def noisy() -> None:
        raise RuntimeError("line\n\x1b[31mforged" + "x" * 2000)

    with pytest.raises(StartupFailed) as caught:
        await run_startup_hooks(app, 5)
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message
    assert len(message) < 800


async def test_a_failing_shutdown_hook_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App()
    ran: list[str] = []

    @app.on_shutdown
    def close_pool() -> None:
        raise ValueError("pool already closed")

    @app.on_shutdown
    async def flush() -> None:
        ran.append("flush")

    @app.on_shutdown
    def leave() -> None:
        sys.exit(1)  # not the worker's exit: a failure like any other

    with caplog.at_level(logging.ERROR, logger="jobsys.consume.lifecycle"):
        failed = await run_shutdown_hooks(app, 5)
    assert failed == 2
    assert ran == ["flush"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("close_pool failed: ValueError: pool already closed" in m for m in messages)
    assert any("leave failed: SystemExit: 1" in m for m in messages)


async def test_an_app_without_hooks_runs_nothing() -> None:
    app = App()
    await run_startup_hooks(app, 5)
    assert await run_shutdown_hooks(app, 5) == 0


# -- middleware registration -------------------------------------------------------------------


def test_middleware_must_be_an_async_function_of_two_arguments() -> None:
    app = App()

    def sync_mw(ctx: object, call_next: object) -> None: ...

    async def one_arg(ctx: object) -> None: ...

    with pytest.raises(ValueError, match="must be async def mw\\(ctx, call_next\\): it is not"):
        app.add_middleware(sync_mw)
    with pytest.raises(ValueError, match="must be async def mw\\(ctx, call_next\\)"):
        app.add_middleware(one_arg)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got int"):
        app.add_middleware(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="async def mw\\(request, call_next\\)"):
        app.add_publish_middleware(sync_mw)


def test_an_object_with_an_async_call_is_a_middleware_and_order_is_kept() -> None:
    app = App()

    class Timing:
        async def __call__(self, ctx: object, call_next: object) -> None: ...

    async def second(ctx: object, call_next: object) -> None: ...

    first = Timing()
    app.add_middleware(first)  # type: ignore[arg-type]
    app.middleware(second)  # type: ignore[arg-type]
    assert app.middlewares == (first, second)
    assert app.publish_middlewares == ()
