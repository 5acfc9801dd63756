"""``Producer.call`` on the kit, and the replies the worker's ``ReplySender`` sends back.

A call publishes its job with the properties a real ``Caller`` sends (``jobsys.publish.call``)
and a direct reply-to address of the kit's, then runs the kit, advancing its virtual clock
through delays and retries, until the reply comes or ``timeout_s`` of virtual time passed. The
reply is decoded by the same ``read_reply`` and ``reply_outcome`` as a real call's.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pamqp import commands as spec

from jobsys.app import PublishMiddleware
from jobsys.broker.confirm import Outgoing
from jobsys.errors import ConfigError, KitError
from jobsys.publish.call import call_timeout, reply_outcome
from jobsys.publish.middleware import around_publish
from jobsys.publish.prepare import JobRequest, PreparedJob
from jobsys.publish.properties import PERSISTENT
from jobsys.publish.receipt import Receipt
from jobsys.testing.edge import MemoryConfirms, MemoryReplyChannel
from jobsys.wire.envelope import CONTENT_ENCODING, CONTENT_TYPE, new_message_id
from jobsys.wire.reply import DIRECT_REPLY_TO, Reply, read_reply


class KitCalls:
    """Calls waiting for their replies on one kit."""

    def __init__(
        self,
        confirms: MemoryConfirms,
        now_ms: Callable[[], int],
        next_expiry_ms: Callable[[], int | None],
        run_until: Callable[[int], Awaitable[None]],
        running: Callable[[], bool],
    ) -> None:
        self._confirms = confirms
        self._now_ms = now_ms
        self._next_expiry_ms = next_expiry_ms
        self._run_until = run_until
        self._running = running
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        #: The channel the kit's ``ReplySender`` sends on.
        self.channel = MemoryReplyChannel(self._on_reply)

    async def open_channel(self) -> Any:
        """The reply channel (``ReplySender``'s ``open_channel``)."""
        return self.channel

    def _on_reply(self, props: spec.Basic.Properties, body: bytes) -> None:
        future = self._waiting.get(props.correlation_id or "")
        reply = read_reply(props.headers, body)
        if future is not None and not future.done() and reply is not None:
            future.set_result(reply)

    async def call_through(
        self,
        middleware: tuple[PublishMiddleware, ...],
        request: JobRequest,
        prepare: Callable[[JobRequest], PreparedJob],
        *,
        timeout_s: float,
        returns: Any,
        on_published: Callable[[PreparedJob, int], None],
    ) -> Any:
        """Publish ``request`` through the app's publish ``middleware`` (as
        ``Caller.call_through``: the call waits for the last job the chain published), run
        the kit until its outcome comes back, and return it as a real ``call`` does
        (``JobFailed``; ``CallTimeout`` after ``timeout_s`` of virtual time)."""
        if self._running():
            raise KitError("call() from inside a handler is not supported by the kit")
        began_ms = self._now_ms()
        started: list[tuple[PreparedJob, str]] = []

        async def send(sent: JobRequest) -> Receipt:
            job = prepare(sent)
            correlation_id = uuid.uuid4().hex
            self._waiting[correlation_id] = asyncio.get_running_loop().create_future()
            started.append((job, correlation_id))
            receipt = await self._publish(job, correlation_id)
            on_published(job, self._now_ms())
            return receipt

        try:
            await around_publish(middleware, request, send)
            if not started:
                raise ConfigError(
                    f"the publish middleware returned without publishing the "
                    f"{request.job_type!r} job of a call(): nothing was published, and there "
                    "is no outcome to wait for"
                )
            job, correlation_id = started[-1]
            return await self._wait(job, correlation_id, began_ms, timeout_s, returns)
        finally:
            for _, correlation_id in started:
                self._waiting.pop(correlation_id, None)

    async def _wait(
        self, job: PreparedJob, correlation_id: str, began_ms: int, timeout_s: float, returns: Any
    ) -> Any:
        future = self._waiting[correlation_id]
        deadline_ms = began_ms + math.ceil(timeout_s * 1000)
        while not future.done() and self._now_ms() < deadline_ms:
            next_ms = self._next_expiry_ms()
            await self._run_until(deadline_ms if next_ms is None else min(next_ms, deadline_ms))
        if not future.done():
            raise call_timeout(job, timeout_s, published=True)
        return reply_outcome(future.result(), job, returns)

    async def _publish(self, job: PreparedJob, correlation_id: str) -> Receipt:
        receipt: Receipt | None = None
        for exchange, routing_key, queues in job.targets:
            message_id = new_message_id()
            props = spec.Basic.Properties(
                content_type=CONTENT_TYPE,
                content_encoding=CONTENT_ENCODING,
                headers=job.headers,
                delivery_mode=PERSISTENT,
                priority=job.priority,
                correlation_id=correlation_id,
                reply_to=f"{DIRECT_REPLY_TO}.jobsys-kit.{correlation_id}",
                message_id=message_id,
                timestamp=datetime.fromtimestamp(self._now_ms() // 1000, UTC),
                message_type=job.job_type,
            )
            out = Outgoing(job.job_id, job.job_type, exchange, routing_key, job.body, queues)
            await self._confirms.publish(out, props)
            sent = Receipt(job.job_id, job.job_type, exchange, routing_key, message_id, job.delay_s)
            receipt = receipt or sent
        assert receipt is not None  # prepare_job always yields a target
        return receipt
