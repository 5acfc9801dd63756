"""Publishing from code without asyncio (Flask, Django, scripts): a thread-safe facade.

``SyncProducer`` runs one ``Producer`` on an event loop of its own, in a daemon thread; every
call is submitted to that loop and waited for in the caller's thread. Any number of threads
may publish at once: their jobs share one connection and one confirm channel, so their
confirms are in flight together. Errors are the producer's own, raised in the caller's thread,
with the same guarantee: a ``Receipt`` only for a job the broker confirmed as routed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel

from jobsys.app import App
from jobsys.errors import ConnectionFailed
from jobsys.publish.producer import DEFAULT_WINDOW, JobRequest, Producer, PublishResult, Receipt
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.topology.model import Topology

__all__ = ["SyncProducer"]

T = TypeVar("T")
# How long close() waits for the loop thread beyond the publish timeout.
_GRACE_S = 10.0


class SyncProducer:
    """A blocking, thread-safe ``Producer``: ``publish``, ``publish_many``, ``call``,
    ``cancel``, ``close``.

    ``app`` brings the payload models and publish middleware of an ``App``, as for
    ``Producer``. It connects on construction (or lazily on first use with ``connect=False``)
    and must be closed, or used as a context manager, to stop its thread and connection.
    """

    def __init__(
        self,
        settings: Settings,
        topology: Topology | LoadedTopology,
        models: Mapping[str, type[BaseModel]] | None = None,
        *,
        connect: bool = True,
        app: App | None = None,
    ) -> None:
        self.settings = settings
        self._producer = Producer(settings, topology, models=models, app=app)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run_loop, name="jobsys-sync-producer", daemon=True
        )
        self._closed = False
        self._lock = threading.Lock()
        self._thread.start()
        if connect:
            try:
                self.open()
            except BaseException:
                self.close()
                raise

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        # No timeout here: every producer call bounds itself (connect deadline, publish
        # timeout), so waiting for the loop's answer cannot hang.
        if self._closed:
            coro.close()
            raise ConnectionFailed("the producer is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # Stop the work on the loop too when the caller gives up (e.g. KeyboardInterrupt).
            future.cancel()
            raise

    def open(self) -> SyncProducer:
        """Connect and open the confirm channel (done by the constructor unless
        ``connect=False``); raises ``AccessRefused`` or ``ConnectionFailed``."""
        self._call(self._producer.open())
        return self

    def publish(
        self,
        job_type: str,
        payload: Any,
        *,
        priority: int | None = None,
        delay_s: float | None = None,
        job_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        run_at: datetime | None = None,
        then: str | None = None,
    ) -> Receipt:
        """Publish one job and block until the broker confirmed it (see ``Producer.publish``)."""
        request = JobRequest(job_type, payload, priority, delay_s, job_id, headers, run_at, then)
        return self._call(self._publish(request))

    async def _publish(self, request: JobRequest) -> Receipt:
        await self._producer.open()  # a no-op once open; connects lazily with connect=False
        return await self._producer.publish_request(request)

    def call(
        self,
        job_type: str,
        payload: Any,
        *,
        timeout_s: float,
        returns: Any = None,
        priority: int | None = None,
        delay_s: float | None = None,
        job_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        run_at: datetime | None = None,
    ) -> Any:
        """Publish one job and block until its outcome arrives or ``timeout_s`` passes (see
        ``Producer.call``): the result, or ``JobFailed``, ``CallTimeout``, ``ResultUnknown``."""
        return self._call(
            self._call_job(
                job_type,
                payload,
                timeout_s=timeout_s,
                returns=returns,
                priority=priority,
                delay_s=delay_s,
                job_id=job_id,
                headers=headers,
                run_at=run_at,
            )
        )

    async def _call_job(self, job_type: str, payload: Any, **options: Any) -> Any:
        await self._producer.open()
        return await self._producer.call(job_type, payload, **options)

    def cancel(self, job_id: str) -> Receipt:
        """Cancel a job that has not started and block until the broker confirmed the
        cancellation (see ``Producer.cancel``)."""
        return self._call(self._cancel(job_id))

    async def _cancel(self, job_id: str) -> Receipt:
        await self._producer.open()
        return await self._producer.cancel(job_id)

    def publish_many(
        self, requests: Iterable[JobRequest], *, window: int = DEFAULT_WINDOW
    ) -> list[PublishResult]:
        """Publish many jobs with many confirms in flight; one result per request, in order
        (see ``Producer.publish_many``)."""
        batch = list(requests)
        return self._call(self._publish_many(batch, window))

    async def _publish_many(self, batch: list[JobRequest], window: int) -> list[PublishResult]:
        await self._producer.open()
        return await self._producer.publish_many(batch, window=window)

    def close(self) -> None:
        """Close the connection and stop the loop thread; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._producer.close(), self._loop)
            try:
                future.result(self.settings.publish_timeout_s + _GRACE_S)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(_GRACE_S)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
