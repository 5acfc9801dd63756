"""What ``jobsys schedules list`` shows and ``jobsys schedules fire`` does, beside the leader.

The status queue holds a copy of the leader's state (written in the same transaction as each
fire, and when a copy takes the lead). It is peeked with ``basic.get`` and given back by closing
the channel: only this command reads it, so a peek never disturbs a leader (leaders read the
state queue, which nothing else touches).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from pamqp import commands as spec

from jobsys.broker.connection import BrokerConnection, broker_errors, close_quietly
from jobsys.broker.passive import not_found
from jobsys.errors import BrokerError, ConfigError
from jobsys.publish.producer import Producer, Receipt
from jobsys.schedule.plan import Cursor, State, StateUnreadable, decode_state, next_fire
from jobsys.topology.model import Topology
from jobsys.topology.own import OwnLayout
from jobsys.topology.schedules import job_id_for


@dataclass(frozen=True)
class ScheduleRow:
    """One schedule as ``jobsys schedules list`` shows it."""

    name: str
    job_type: str
    timing: str
    catch_up: str
    next_fire_s: int
    last_fired_s: int | None
    last_job_id: str | None


async def read_status(connection: BrokerConnection, topology: Topology) -> State | None:
    """The state the leader last wrote, None when no scheduler has run yet."""
    own = OwnLayout(topology.namespace)
    channel = await connection.plain_channel()
    try:
        with broker_errors(connection.settings):
            message = await channel.basic_get(own.status_queue, no_ack=False)
    except BrokerError as exc:
        if "NOT_FOUND" in str(exc):
            raise not_found(f"queue {own.status_queue!r}", str(exc)) from None
        raise
    finally:
        await close_quietly(channel)  # gives the peeked record back, in its place
    if not isinstance(message.delivery, spec.Basic.GetOk):
        return None
    try:
        return decode_state(message.body)
    except StateUnreadable:
        return None


def rows(topology: Topology, state: State | None, now_s: int | None = None) -> list[ScheduleRow]:
    """Each schedule with its next fire and its last one, as of ``now_s``."""
    now = int(time.time()) if now_s is None else now_s
    result = []
    for name, schedule in sorted(topology.schedules.items()):
        cursor = state.cursors.get(name) if state is not None else None
        basis = cursor or Cursor(now, fired=False)
        fire = next_fire(name, schedule, basis, now)
        fired = cursor if cursor is not None and cursor.fired else None
        result.append(
            ScheduleRow(
                name=name,
                job_type=schedule.job_type,
                timing=schedule.describe(),
                catch_up=schedule.catch_up,
                next_fire_s=fire.at_s,
                last_fired_s=fired.slot_s if fired else None,
                last_job_id=fired.job_id if fired else None,
            )
        )
    return result


def manual_job_id(name: str) -> str:
    """The job id of a fire asked for by hand: not a slot, so it never takes a slot's id."""
    moment = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{name}@manual-{moment}-{uuid.uuid4().hex[:8]}"


async def fire_now(producer: Producer, topology: Topology, name: str) -> Receipt:
    """Publish schedule ``name``'s job now (confirmed), outside its slots: the leader's
    cursor does not move."""
    schedule = topology.schedules.get(name)
    if schedule is None:
        known = ", ".join(sorted(topology.schedules)) or "none"
        raise ConfigError(f"unknown schedule {name!r}; the topology has: {known}")
    return await producer.publish(schedule.job_type, schedule.payload, job_id=manual_job_id(name))


__all__ = ["ScheduleRow", "fire_now", "job_id_for", "manual_job_id", "read_status", "rows"]
