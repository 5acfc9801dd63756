"""Running one coroutine per item with at most ``window`` of them in flight, results in order:
how ``publish_many`` keeps its confirms in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

__all__ = ["in_window"]

Item = TypeVar("Item")
Result = TypeVar("Result")


async def in_window(
    items: Sequence[Item],
    result_of: Callable[[Item], Awaitable[Result]],
    window: int,
    on_result: Callable[[int, Result], object] | None = None,
) -> list[Result]:
    """``result_of`` of every item, in the items' order, with at most ``window`` running at
    once; ``on_result`` hears each index and result as soon as it is known. ``result_of``
    must not raise (a raise ends the whole run)."""
    results: list[Result | None] = [None] * len(items)
    cursor = iter(range(len(items)))

    async def lane() -> None:
        # A fixed set of lanes pulling from one cursor keeps ``window`` in flight without
        # creating a task per item.
        for index in cursor:
            result = results[index] = await result_of(items[index])
            if on_result is not None:
                on_result(index, result)

    await asyncio.gather(*(lane() for _ in range(min(window, len(items)))))
    return [r for r in results if r is not None]
