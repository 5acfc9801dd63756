"""The cancellations a worker knows of: read from the topology's cancellations stream.

``Producer.cancel(job_id)`` appends the job id to the stream. Every worker reads the stream
from as far back as a job can wait in the delay levels (``delays.max_delay``) and keeps the ids
it read; a delivery whose job id is among them is acked without running (``CANCEL``).

Before its pools consume, a worker appends a marker of its own to the stream and waits until it
reads it back: it then knows every cancellation made before it started. A cancellation made
while a worker runs reaches it in milliseconds; a job that starts before then runs (a running
job is never stopped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel

from jobsys.broker.connection import BrokerConnection, broker_errors, close_quietly
from jobsys.broker.passive import declaring
from jobsys.publish.producer import CANCEL_TYPE, SYNC_TYPE, Producer
from jobsys.topology.own import OwnLayout
from jobsys.wire.headers import HEADER_JOB_ID, now_ms, text

log = logging.getLogger(__name__)

#: How long a worker waits to read its own marker back before it starts anyway.
SYNC_TIMEOUT_S = 60.0
#: Extra look-back beyond ``delays.max_delay``: a job that waits that long may still sit in its
#: queue a while after it arrives.
_MARGIN_S = 86400


class Cancellations:
    """The job ids cancelled within the look-back, read from the stream as it grows."""

    def __init__(self, connection: BrokerConnection, namespace: str, lookback_s: float) -> None:
        self._connection = connection
        self._stream = OwnLayout(namespace).cancellations
        self.lookback_s = lookback_s + _MARGIN_S
        self._cancelled: dict[str, int] = {}  # job id -> when it was cancelled (ms)
        self._channel: AbstractRobustChannel | None = None
        self._markers: dict[str, asyncio.Event] = {}
        self._pruned_ms = now_ms()

    def __contains__(self, job_id: object) -> bool:
        return isinstance(job_id, str) and job_id in self._cancelled

    def __len__(self) -> int:
        return len(self._cancelled)

    async def start(self, producer: Producer) -> None:
        """Read the stream from the look-back on, and return once every cancellation made
        before now was read (or after ``SYNC_TIMEOUT_S``, logged)."""
        channel = self._channel = await self._connection.channel(confirms=False, prefetch=1000)
        since = datetime.now(UTC) - timedelta(seconds=min(self.lookback_s, 2**31))
        with broker_errors(self._connection.settings):
            with declaring(f"the cancellations stream {self._stream!r}"):
                queue = await channel.get_queue(self._stream, ensure=True)
            await queue.consume(self._on_message, arguments={"x-stream-offset": since})
        marker = f"sync-{time.time_ns()}-{id(self)}"
        seen = self._markers[marker] = asyncio.Event()
        await producer.cancel_marker(marker)
        try:
            await asyncio.wait_for(seen.wait(), SYNC_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "read %d cancellations but not yet all of them after %.0fs; starting anyway",
                len(self._cancelled),
                SYNC_TIMEOUT_S,
            )
        finally:
            self._markers.pop(marker, None)
        log.debug("%d cancelled job ids known", len(self._cancelled))

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        job_id = text(headers.get(HEADER_JOB_ID))
        if job_id:
            if message.type == CANCEL_TYPE:
                stamp = message.timestamp
                at_ms = int(stamp.timestamp() * 1000) if stamp is not None else now_ms()
                self._cancelled[job_id] = at_ms
            elif message.type == SYNC_TYPE and job_id in self._markers:
                self._markers[job_id].set()
        await message.ack()
        self._prune()

    def _prune(self) -> None:
        """Forget cancellations older than the look-back, once an hour."""
        now = now_ms()
        if now - self._pruned_ms < 3_600_000:
            return
        self._pruned_ms = now
        oldest = now - int(self.lookback_s * 1000)
        for job_id in [j for j, at in self._cancelled.items() if at < oldest]:
            del self._cancelled[job_id]

    async def close(self) -> None:
        """Stop reading."""
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await close_quietly(channel)
