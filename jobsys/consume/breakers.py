"""A worker's circuit breakers (``job_types.<name>.breaker``): which jobs are held back, what
each attempt's result does to its type's breaker, and where a change of state shows.

The state machine is pure (``jobsys.consume.breaker``). Here each change is logged, counted in
the metrics, and published through ``<namespace>.breakers`` to the type's last-state queue
``<namespace>.breaker.<job type>`` (one message, the newest), which ``jobsys status`` reads, and to
the stream ``<namespace>.breakers.events``, which every worker reads: a breaker one worker opens
pauses the type in every worker until the same moment, and a trial that succeeds anywhere closes
it everywhere. Publishing never fails a job: a failure is logged and the next change tries again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import time
from datetime import UTC, datetime, timedelta

import aiormq.abc
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel
from aiormq import spec

from jobsys.broker.connection import BrokerConnection, broker_errors, close_quietly
from jobsys.broker.passive import declaring
from jobsys.consume.breaker import Breaker, State
from jobsys.consume.outcome import Outcome
from jobsys.errors import MessageError
from jobsys.observe import metrics
from jobsys.topology.model import Topology
from jobsys.topology.own import OwnLayout
from jobsys.wire.display import escape

log = logging.getLogger(__name__)

__all__ = ["Breakers"]

#: Outcomes that count as a failed attempt: the handler raised or overran its deadline.
_FAILED = ("retry", "dead_letter")


class Breakers:
    """The breakers of every job type with ``breaker:`` in the topology."""

    def __init__(self, connection: BrokerConnection, topology: Topology) -> None:
        self._connection = connection
        self._own = OwnLayout(topology.namespace)
        self.breakers = {
            name: Breaker(job_type.breaker)
            for name, job_type in topology.job_types.items()
            if job_type.breaker is not None
        }
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._publishing: set[asyncio.Task[None]] = set()
        self._reader: AbstractRobustChannel | None = None
        #: Who this worker is in the events: its own are not applied twice.
        self.me = f"{socket.gethostname()} pid {os.getpid()} {id(self):x}"

    async def start(self) -> None:
        """Read the breakers' stream from one longest cool-down back: the breakers open
        elsewhere now are open here before the first job."""
        longest = max(b.spec.cool_down for b in self.breakers.values())
        since = datetime.now(UTC) - timedelta(seconds=longest + 1)
        channel = self._reader = await self._connection.channel(confirms=False, prefetch=100)
        stream = self._own.breaker_events
        with broker_errors(self._connection.settings):
            with declaring(f"the breakers' stream {stream!r}"):
                queue = await channel.get_queue(stream, ensure=True)
            await queue.consume(self._on_event, arguments={"x-stream-offset": since})

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        try:
            record = json.loads(message.body)
            job_type, state, worker = record["job_type"], record["state"], record["worker"]
        except (ValueError, KeyError, TypeError):
            return
        breaker = self.breakers.get(job_type) if isinstance(job_type, str) else None
        if breaker is None or worker == self.me:
            return
        if state == "open" and isinstance(record.get("until_ms"), int):
            remaining_s = (record["until_ms"] - time.time() * 1000) / 1000
            if remaining_s > 0 and breaker.open_for(time.monotonic(), remaining_s):
                metrics.record_breaker(job_type, True)
                log.warning(
                    "circuit breaker of job type %s opened by %s: its jobs wait %.0fs unrun",
                    job_type,
                    escape(str(worker)),
                    remaining_s,
                )
        elif state == "closed" and breaker.close_from_elsewhere():
            metrics.record_breaker(job_type, False)
            log.info("circuit breaker of job type %s closed by %s", job_type, escape(str(worker)))

    def hold_back(self, job_type: str | None) -> Outcome | None:
        """The outcome for a job whose type's breaker is open (wait, unrun), else None: the job
        may run (in half-open state, as the trial: ``record`` must follow)."""
        breaker = self.breakers.get(job_type or "")
        if breaker is None:
            return None
        assert job_type is not None
        was = breaker.state
        wait_s = breaker.wait_s(time.monotonic())
        if was == "open" and breaker.state == "half-open":
            log.info("circuit breaker of job type %s half-open: one trial runs", job_type)
            self._changed(job_type, breaker, "half-open")
        if wait_s is None:
            return None
        metrics.record_held_back(job_type, "breaker")
        return Outcome.hold_back(
            max(1, math.ceil(wait_s)), f"held back: the circuit breaker of {job_type} is open"
        )

    def record(self, job_type: str | None, outcome: Outcome) -> None:
        """Count the result of an attempt that ran (after ``hold_back`` let it through)."""
        breaker = self.breakers.get(job_type or "")
        if breaker is None:
            return
        assert job_type is not None
        if outcome.kind == "ack":
            ok = True
        elif outcome.kind in _FAILED and not isinstance(outcome.error, MessageError):
            ok = False
        else:
            # Not a run of the handler (held back, cancelled, bad input): a trial is given back.
            breaker.abandon_trial()
            return
        changed = breaker.record(time.monotonic(), ok)
        if changed == "open":
            log.warning(
                "circuit breaker of job type %s opened (%s): its jobs wait %gs unrun, then one "
                "trial runs",
                job_type,
                breaker.describe(),
                breaker.spec.cool_down,
            )
        elif changed == "closed":
            log.info("circuit breaker of job type %s closed: the trial succeeded", job_type)
        if changed is not None:
            self._changed(job_type, breaker, changed)

    async def close(self) -> None:
        """Wait for state publishes under way (briefly), then close the channels."""
        if self._publishing:
            await asyncio.wait(set(self._publishing), timeout=2)
        await close_quietly(self._channel)
        await close_quietly(self._reader)

    def _changed(self, job_type: str, breaker: Breaker, state: State) -> None:
        metrics.record_breaker(job_type, state != "closed")
        until_ms = None
        if state == "open":
            until_ms = int((time.time() + breaker.spec.cool_down) * 1000)
        record: dict[str, object] = {
            "job_type": job_type,
            "state": state,
            "until_ms": until_ms,
            "trigger": breaker.describe(),
            "worker": self.me,
            "at_ms": int(time.time() * 1000),
        }
        task = asyncio.get_running_loop().create_task(self._publish(job_type, record))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, job_type: str, record: dict[str, object]) -> None:
        try:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._connection.plain_channel()
            await self._channel.basic_publish(
                json.dumps(record).encode(),
                exchange=self._own.breaker_exchange,
                routing_key=job_type,
                properties=spec.Basic.Properties(delivery_mode=2, content_type="application/json"),
            )
        except Exception as exc:  # a status record: never a reason to fail a job
            log.warning("could not publish the circuit breaker state of %s: %s", job_type, exc)
