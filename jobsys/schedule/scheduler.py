"""The scheduler: any number of copies, exactly one of them firing, chosen by the broker.

**Election.** Every copy consumes the topology's leader queue (``x-single-active-consumer``),
which holds a token message. The broker delivers to one consumer only; the copy that holds the
token unacked leads. When its channel or connection closes (a crash, ``kill -9``, a lost
network, a heartbeat missed), the broker takes the token back and hands it to the next copy.

**Firing exactly once.** A leader fires a slot in one AMQP transaction that holds two
publishes: the job (mandatory, to its job type's exchange) and the new state record (the slot
as the schedule's cursor, to a queue that keeps one message). The broker commits both or
neither: a leader killed before its commit leaves nothing, one killed after it left both. A
new leader reads the state first, so it continues at the slot after the last one committed:
no slot fires twice, none is skipped (the catch-up policy aside), across any number of
leader changes. A commit whose outcome is unknown (the connection died on the way) is settled
the same way, by the state the next leader reads. A leader whose connection died cannot
commit any more, and the broker hands the token on only once that connection is gone, so two
leaders never commit at once. Each fire's job id is derived from the schedule and the slot
(``nightly@2026-12-01T02:00:00Z``).

A job that reached no queue (its bindings were deleted) was committed with its state; the
leader writes the previous state back and stops with a ``TopologyError``, so that the slot
fires once the topology is applied again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiormq.abc
from pamqp import commands as spec
from pydantic import BaseModel

from jobsys.broker.connection import BrokerConnection, broker_errors, close_quietly
from jobsys.broker.passive import APPLY_HINT, not_found
from jobsys.broker.transaction import Transaction
from jobsys.errors import (
    AccessRefused,
    BrokerError,
    ConnectionFailed,
    JobsysError,
    TopologyError,
)
from jobsys.publish.prepare import JobRequest, build_routes, prepare_job
from jobsys.publish.properties import message_properties
from jobsys.schedule.plan import (
    Cursor,
    Fire,
    Leader,
    State,
    StateUnreadable,
    decode_state,
    next_fire,
)
from jobsys.settings import Settings
from jobsys.topology.loader import LoadedTopology
from jobsys.topology.model import Topology
from jobsys.topology.own import STATE_KEY, TOKEN_KEY, OwnLayout
from jobsys.wire.envelope import new_message_id
from jobsys.wire.headers import HEADER_SCHEDULE, HEADER_SLOT_MS, now_ms

log = logging.getLogger(__name__)

#: How long a copy waits before trying again after losing its connection.
_RETRY_S = 1.0
_MAX_RETRY_S = 10.0


@dataclass
class SchedulerStats:
    """What a scheduler did."""

    fired: int = 0
    skipped: int = 0
    terms: int = 0  # times it became the leader


def scheduler_name() -> str:
    """This copy's name, as ``jobsys schedules list`` shows the leader: host, pid, a tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Scheduler:
    """Fires the ``schedules:`` of ``topology`` while the broker elects this copy.

    ``run()`` serves until ``request_stop()``; fatal problems (the scheduler's queues are
    missing, a fired job reached no queue, refused access) raise from ``run()``. ``models``
    validate the payloads (and normalise them) before anything fires.
    """

    def __init__(
        self,
        settings: Settings,
        topology: LoadedTopology | Topology,
        *,
        models: Mapping[str, type[BaseModel]] | None = None,
    ) -> None:
        self.topology = topology.topology if isinstance(topology, LoadedTopology) else topology
        if not self.topology.schedules:
            raise TopologyError("the topology has no schedules: nothing to fire")
        self.settings = settings
        self.models = dict(models or {})
        self.name = scheduler_name()
        self.own = OwnLayout(self.topology.namespace)
        self.stats = SchedulerStats()
        self.graceful = True
        #: Set while this copy leads; cleared when it stops leading.
        self.leading = asyncio.Event()
        self._routes = build_routes(self.topology)
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        """Stop leading (or waiting to) and return from ``run()``."""
        self._stop.set()

    async def run(self) -> SchedulerStats:
        """Stand for election and fire while leading, until stopped."""
        connection = BrokerConnection(self.settings)
        try:
            await connection.open()
            pause_s = _RETRY_S
            while not self._stop.is_set():
                terms = self.stats.terms
                try:
                    await self._term(connection)
                except AccessRefused:
                    raise  # the same settings cannot do better next time
                except (ConnectionFailed, BrokerError) as exc:
                    self.leading.clear()
                    if self.stats.terms != terms:
                        pause_s = _RETRY_S  # it led since the last failure: start over
                    log.warning(
                        "scheduler %s lost the broker: %s; standing again in %.0fs",
                        self.name,
                        exc,
                        pause_s,
                    )
                    await self._pause(pause_s)
                    pause_s = min(pause_s * 2, _MAX_RETRY_S)
        finally:
            self.leading.clear()
            await connection.close()
        return self.stats

    # -- one term: stand, then lead until the channel goes --------------------------------

    async def _term(self, connection: BrokerConnection) -> None:
        election = await connection.plain_channel()
        try:
            await self._check_entities(election)
            token = await self._stand(election)
            if token is None:
                return
            self.stats.terms += 1
            transaction = await Transaction(connection).open()
            try:
                await self._lead(election, transaction, connection.node)
            finally:
                self.leading.clear()
                await transaction.close()
        finally:
            await close_quietly(election)

    async def _check_entities(self, channel: aiormq.abc.AbstractChannel) -> None:
        for queue in (self.own.leader_queue, self.own.state_queue, self.own.status_queue):
            try:
                with broker_errors(self.settings):
                    await channel.queue_declare(queue, passive=True)
            except BrokerError as exc:
                if "NOT_FOUND" not in str(exc):
                    raise
                raise not_found(
                    f"the scheduler's queue {queue!r}",
                    str(exc),
                    f"{APPLY_HINT} with the topology that has the schedules",
                ) from None

    async def _stand(self, channel: aiormq.abc.AbstractChannel) -> int | None:
        """Consume the leader queue until the token comes (its delivery tag), or stop."""
        with broker_errors(self.settings):
            await channel.basic_qos(prefetch_count=1)
            declared = await channel.queue_declare(self.own.leader_queue, passive=True)
            if not declared.message_count:
                # No token waits (the first copy ever, or the leader holds it): add one. The
                # queue keeps at most one waiting, so extra tokens are dropped, never stacked.
                await channel.basic_publish(
                    b"",
                    exchange=self.own.scheduler_exchange,
                    routing_key=TOKEN_KEY,
                    properties=spec.Basic.Properties(delivery_mode=2, message_type="jobsys.token"),
                )
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_token(message: aiormq.abc.DeliveredMessage) -> None:
            if not got.done():
                got.set_result(message.delivery_tag or 0)

        with broker_errors(self.settings):
            await channel.basic_consume(
                self.own.leader_queue, on_token, consumer_tag=f"jobsys-scheduler.{self.name}"
            )
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            waits: set[asyncio.Future[Any]] = {got, stop, channel.closing}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if got.done() and not channel.is_closed and not self._stop.is_set():
            return got.result()
        if channel.is_closed and not self._stop.is_set():
            raise ConnectionFailed("the election channel closed")
        return None

    async def _lead(self, election: aiormq.abc.AbstractChannel, tx: Transaction, node: str) -> None:
        leader = Leader(self.name, now_ms())
        state = await self._read_state(election)
        now_s = int(time.time())
        for name in self.topology.schedules:
            if name not in state.cursors:
                # First sight: slots after now fire. Written at once, so a leader after this
                # one continues from here instead of from its own "now".
                state = state.with_cursor(name, Cursor(now_s, fired=False, at_ms=now_ms()))
        await self._commit(tx, state, leader, job=None)
        self.leading.set()
        log.info(
            "scheduler %s leads (%d schedules) on %s",
            self.name,
            len(self.topology.schedules),
            node,
        )
        while not self._stop.is_set():
            if not self._still_leading(election, tx):
                raise ConnectionFailed("lost the channel that held the leader token")
            fire = min(
                (
                    next_fire(name, schedule, state.cursors[name], int(time.time()))
                    for name, schedule in self.topology.schedules.items()
                ),
                key=lambda f: (f.at_s, f.name),
            )
            wait_s = fire.at_s - time.time()
            if wait_s > 0:
                await self._pause(wait_s, election.closing)
                continue
            state = await self._fire(tx, state, leader, fire)

    def _still_leading(self, election: aiormq.abc.AbstractChannel, tx: Transaction) -> bool:
        return (
            not election.is_closed
            and tx.is_open
            and f"jobsys-scheduler.{self.name}" in getattr(election, "consumers", {})
        )

    async def _read_state(self, channel: aiormq.abc.AbstractChannel) -> State:
        """The state record, left in its queue (only leaders read it, one at a time)."""
        with broker_errors(self.settings):
            message = await channel.basic_get(self.own.state_queue, no_ack=False)
            if not isinstance(message.delivery, spec.Basic.GetOk):
                return State()
            await channel.basic_nack(message.delivery.delivery_tag or 0, requeue=True)
        try:
            return decode_state(message.body)
        except StateUnreadable as exc:
            # Starting afresh fires nothing twice (first sight means "slots after now").
            log.error("scheduler state unreadable (%s); schedules start afresh from now", exc)
            return State()

    # -- firing ---------------------------------------------------------------------------

    async def _fire(self, tx: Transaction, state: State, leader: Leader, fire: Fire) -> State:
        schedule = self.topology.schedules[fire.name]
        job = prepare_job(
            JobRequest(schedule.job_type, schedule.payload, job_id=fire.job_id),
            self._routes,
            self.models,
            self.settings.max_payload_bytes,
            self.topology.delay_layout,
            max_header_bytes=self.settings.max_header_bytes,
        )
        job.headers[HEADER_SCHEDULE] = fire.name
        job.headers[HEADER_SLOT_MS] = fire.slot_s * 1000
        exchange, routing_key, _ = job.targets[0]
        properties = message_properties(job.job_type, job.priority, job.headers, new_message_id())
        fired = state.with_cursor(
            fire.name, Cursor(fire.slot_s, fired=True, at_ms=now_ms(), job_id=fire.job_id)
        )
        try:
            await self._commit(tx, fired, leader, job=(job.body, exchange, routing_key, properties))
        except TopologyError:
            # Committed, but the job went nowhere: put the cursor back so the slot fires again
            # once the topology is applied, then stop.
            with contextlib.suppress(JobsysError):
                await self._commit(tx, state, leader, job=None)
            raise
        late_ms = now_ms() - fire.slot_s * 1000
        self.stats.fired += 1
        self.stats.skipped += fire.skipped
        if fire.skipped:
            log.warning(
                "schedule %s: %d slot(s) missed while no scheduler ran were passed over "
                "(catch_up: %s)",
                fire.name,
                fire.skipped,
                schedule.catch_up,
            )
        log.info("schedule %s fired job %s (%dms after its slot)", fire.name, fire.job_id, late_ms)
        return fired

    async def _commit(
        self,
        tx: Transaction,
        state: State,
        leader: Leader,
        job: tuple[bytes, str, str, spec.Basic.Properties] | None,
    ) -> None:
        if job is not None:
            body, exchange, routing_key, properties = job
            await tx.publish(
                body, exchange=exchange, routing_key=routing_key, properties=properties
            )
        record = state.encode(leader, now_ms())
        await tx.publish(
            record,
            exchange=self.own.scheduler_exchange,
            routing_key=STATE_KEY,
            properties=spec.Basic.Properties(
                delivery_mode=2, content_type="application/json", message_type="jobsys.state"
            ),
        )
        returned = await tx.commit()
        if not returned:
            return
        where = ", ".join(f"exchange {r.exchange!r} key {r.routing_key!r}" for r in returned)
        raise TopologyError(
            f"a scheduled job or the scheduler's state reached no queue ({where}): the "
            "bindings are missing — run `jobsys topology apply FILE`; the slot fires once "
            "they are back"
        )

    async def _pause(self, seconds: float, *also: asyncio.Future[Any]) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            waits: set[asyncio.Future[Any]] = {stop, *also}
            # The first of them ends the pause: a stop request must not wait for the next slot
            # (an hour for ``every: 1h``), nor for the election channel to close as well.
            await asyncio.wait(
                waits, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop


__all__ = ["Scheduler", "SchedulerStats", "scheduler_name"]
