"""The job history recorder: events batched in memory and written off the hot path.

``record`` only appends to a bounded buffer (no I/O, no await): a job's ack never waits for its
history. A background task hands the buffer to ``sink`` (the publisher of the history stream,
given by the worker) every ``interval_s`` or as soon as ``batch`` events wait. A history write
that fails never fails a job: it is counted in ``failed`` and logged once (and once more when
writes succeed again), and its batch goes back to the head of the buffer to be written on the
next try, after a backoff that doubles up to ``MAX_BACKOFF_S``: a broker restart, or a stream
that is not yet writable just after one, costs no events. A buffer that fills up (the stream
unreachable for long) drops the oldest events, counted in ``dropped``; so does ``close`` when
the stream still refuses them. Like every observer here, it disables nothing else when it
breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from jobsys.wire.history import HistoryEvent

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[HistoryEvent]], Awaitable[None]]

#: Events waiting at most; beyond it the oldest go.
DEFAULT_BUFFER = 100_000
#: The longest wait between two tries of a batch that could not be written.
MAX_BACKOFF_S = 5.0
#: The longest wait between two tries while closing: soon after the stream accepts again.
CLOSE_BACKOFF_S = 1.0


class HistoryRecorder:
    """Buffers events and writes them in batches through ``sink``."""

    def __init__(
        self,
        sink: Sink,
        *,
        interval_s: float = 0.2,
        batch: int = 500,
        buffer: int = DEFAULT_BUFFER,
    ) -> None:
        self._sink = sink
        self._interval_s = interval_s
        self._batch = batch
        self._events: deque[HistoryEvent] = deque(maxlen=buffer)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self._failing = False
        self._last_failure = ""
        self._backoff_s = interval_s

    def record(self, event: HistoryEvent) -> None:
        """Note ``event``; it is written within ``interval_s`` (never raises)."""
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
        self._events.append(event)
        if len(self._events) >= self._batch:
            self._wake.set()

    def start(self) -> None:
        """Start writing in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write what is buffered and stop, within ``timeout_s``.

        A write that fails is tried again, after a backoff capped at ``CLOSE_BACKOFF_S``, until
        ``timeout_s``: just after a broker restart the stream may refuse events for a moment
        (its exchange routes nowhere yet), and a producer closed right after its last publish
        would otherwise drop that job's ``published``. What is still unwritten then is given
        up, counted in ``dropped`` and logged: closing never waits out an outage."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        backoff_s = self._interval_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._events:
                    if await self._flush():
                        continue
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, CLOSE_BACKOFF_S)
        if self._events:
            log.warning(
                "job history: %d events not written: the stream still refused them when closing "
                "after %gs (%s); jobs are not affected",
                len(self._events),
                timeout_s,
                self._last_failure or "the write did not finish",
            )
        self.dropped += len(self._events)
        self._events.clear()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            self._wake.clear()
            if not await self._flush():
                await asyncio.sleep(self._backoff_s)
                self._backoff_s = min(self._backoff_s * 2, MAX_BACKOFF_S)

    async def _flush(self) -> bool:
        """Write the oldest batch; False when the write failed (the batch is kept)."""
        if not self._events:
            return True
        batch = [self._events.popleft() for _ in range(min(self._batch, len(self._events)))]
        try:
            await self._sink(batch)
        except asyncio.CancelledError:
            self._put_back(batch)
            raise
        except Exception as exc:
            self.failed += len(batch)
            self._put_back(batch)
            self._last_failure = f"{type(exc).__name__}: {exc}"
            if not self._failing:
                self._failing = True
                log.warning(
                    "job history: %d events could not be written yet (%s: %s); they are kept "
                    "and tried again; jobs are not affected; further failures are counted, "
                    "not logged",
                    len(batch),
                    type(exc).__name__,
                    exc,
                )
            return False
        self.written += len(batch)
        self._backoff_s = self._interval_s
        if self._failing:
            self._failing = False
            log.info("job history: writing again (%d events dropped meanwhile)", self.dropped)
        return True

    def _put_back(self, batch: list[HistoryEvent]) -> None:
        """Return ``batch`` to the head of the buffer, dropping its oldest events when what was
        recorded meanwhile leaves no room."""
        room = (self._events.maxlen or len(batch)) - len(self._events)
        keep = batch[len(batch) - room :] if room < len(batch) else batch
        self.dropped += len(batch) - len(keep)
        self._events.extendleft(reversed(keep))
