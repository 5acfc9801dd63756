"""Removing what a topology file declared: ``jobsys topology delete``.

What the file names itself (its exchanges, its queues and their dead-letter queues) is the
file's own. What jobsys derives under the topology's namespace (the delay levels, the due and
dead-letter exchanges, and any other ``<namespace>.`` entity) may serve other topology files in
the same vhost and namespace: it goes only when no queue outside this file is bound to it, which
only the management API can show (without it, it stays unless ``--force``; what the API shows
in use stays even with ``--force``).

Nothing is deleted while a queue to delete holds jobs, unless ``force``: the check covers every
queue first, and each classic queue is deleted with ``if-empty`` too, so a job that arrives
between the check and the delete is never lost. Quorum queues refuse ``if-empty`` (RabbitMQ
closes the connection with NOT_IMPLEMENTED), so for them only the check stands: a job published
to one in the moment between the check and the delete goes with it. An exchange still used by
bindings from elsewhere is kept (``if-unused``) and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aiormq
import aiormq.exceptions

from jobsys.broker.connection import BrokerConnection, broker_errors, close_quietly
from jobsys.broker.management import ManagementClient, ManagementUnavailable, management_endpoint
from jobsys.broker.passive import node_down, reason_of, unreachable
from jobsys.errors import TopologyError
from jobsys.topology.entities import Entities, desired_entities
from jobsys.topology.model import Topology, dead_letter_queue_name

__all__ = ["TeardownPlan", "TeardownResult", "plan_teardown", "teardown"]


@dataclass(frozen=True)
class TeardownPlan:
    """What ``teardown`` would delete, with the jobs each queue holds now."""

    #: Queue name -> jobs ready in it; queues that do not exist are left out.
    queues: dict[str, int]
    exchanges: list[str]
    #: Namespace entities kept, and why (other files may use them).
    kept: dict[str, str] = field(default_factory=dict)
    #: Queues that cannot be deleted "if empty" (quorum queues).
    without_if_empty: frozenset[str] = frozenset()

    @property
    def jobs(self) -> int:
        """Jobs in all the queues to delete."""
        return sum(self.queues.values())


@dataclass
class TeardownResult:
    """What ``teardown`` deleted, and what it kept (with the reason)."""

    deleted_queues: list[str] = field(default_factory=list)
    deleted_exchanges: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


async def plan_teardown(
    conn: BrokerConnection, topology: Topology, *, use_management: bool = True, force: bool = False
) -> TeardownPlan:
    """Look at the broker and say what ``teardown`` would delete (changes nothing)."""
    entities = desired_entities(topology)
    own_queues, shared_queues, own_exchanges, shared_exchanges = _split(topology, entities)
    kept: dict[str, str] = {}
    reason, known = await _shared_in_use(conn, topology, entities, use_management=use_management)
    # --force lets jobs go and vouches that nothing else uses the namespace when that cannot be
    # seen; it never deletes what the broker shows other files' queues still use.
    if reason is not None and (known or not force):
        kept = dict.fromkeys([*shared_queues, *shared_exchanges], reason)
        shared_queues, shared_exchanges = [], []
    counts = await _ready_counts(conn, [*own_queues, *shared_queues])
    # The scheduler's token and state, the cancellations and the permits are jobsys's records,
    # not jobs:
    # they never stop a delete.
    records = {
        q.name
        for q in entities.queues
        if q.role in ("scheduler", "cancellations", "history", "permits", "breaker", "tokens")
    }
    counts = {name: 0 if name in records else count for name, count in counts.items()}
    exchanges = await _existing_exchanges(conn, [*own_exchanges, *shared_exchanges])
    quorum = frozenset(
        q.name for q in entities.queues if q.arguments.get("x-queue-type") in ("quorum", "stream")
    )
    return TeardownPlan(counts, exchanges, kept, quorum & counts.keys())


async def teardown(conn: BrokerConnection, plan: TeardownPlan, *, force: bool) -> TeardownResult:
    """Delete what ``plan`` lists. Without ``force``, refuses (deleting nothing) while any of
    its queues holds a job, and deletes each queue only if it is empty."""
    full = {name: count for name, count in plan.queues.items() if count}
    if full and not force:
        shown = ", ".join(f"{name} ({count})" for name, count in sorted(full.items()))
        raise TopologyError(
            f"queues hold jobs: {shown}; nothing was deleted (with --force, they are deleted "
            "with their jobs)"
        )
    result = TeardownResult(kept=dict(plan.kept))
    channel = await conn.plain_channel()
    try:
        with broker_errors(conn.settings):
            for name in plan.queues:
                if_empty = not force and name not in plan.without_if_empty
                channel = await _delete_queue(conn, channel, name, if_empty, result)
            # An exchange bound to another is "in use" until that binding goes, and each delay
            # level is bound to the one below it (level 0 to the due exchange): delete the due
            # exchange first, then the levels upwards, so each is unused by its turn.
            for name in sorted(plan.exchanges, key=_deletion_order):
                channel = await _delete_exchange(conn, channel, name, result)
    finally:
        await close_quietly(channel)
    return result


def _deletion_order(name: str) -> tuple[bool, str]:
    return (".wait." in name, name)


def _split(
    topology: Topology, entities: Entities
) -> tuple[list[str], list[str], list[str], list[str]]:
    """Queues and exchanges the file names itself, then those derived under its namespace."""
    own_queue_names = set(topology.queues) | {dead_letter_queue_name(q) for q in topology.queues}
    own_queues = [q.name for q in entities.queues if q.name in own_queue_names]
    shared_queues = [q.name for q in entities.queues if q.name not in own_queue_names]
    own_exchanges = [e.name for e in entities.exchanges if e.name in topology.exchanges]
    shared_exchanges = [e.name for e in entities.exchanges if e.name not in topology.exchanges]
    return own_queues, shared_queues, own_exchanges, shared_exchanges


async def _shared_in_use(
    conn: BrokerConnection, topology: Topology, entities: Entities, *, use_management: bool
) -> tuple[str | None, bool]:
    """Why the namespace's own entities must stay (None when nothing else uses them), and
    whether that is known (the management API showed other queues bound to them) rather
    than only unknown."""
    if not use_management:
        return "the management API was not used, so other files' use of them is unknown", False
    client = ManagementClient(management_endpoint(conn.settings))
    try:
        await client.confirm_same_broker(conn.amqp.server_properties)
        bindings = await client.bindings(conn.settings.vhost)
    except ManagementUnavailable as exc:
        return f"{exc}, so other files' use of them is unknown", False
    shared = {e.name for e in entities.exchanges if e.name not in topology.exchanges}
    ours = {q.name for q in entities.queues}
    others = sorted(
        {
            str(b.get("destination"))
            for b in bindings
            if b.get("source") in shared
            and b.get("destination_type") == "queue"
            and b.get("destination") not in ours
        }
    )
    if others:
        return f"queues outside this file use them ({', '.join(others[:5])})", True
    return None, False


async def _ready_counts(conn: BrokerConnection, names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    channel: aiormq.abc.AbstractChannel | None = None
    try:
        with broker_errors(conn.settings):
            for name in names:
                if channel is None or channel.is_closed:
                    channel = await conn.plain_channel()
                try:
                    ok = await channel.queue_declare(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity as exc:
                    if node_down(reason_of(exc)):  # it exists: a teardown now would leave it
                        raise unreachable(f"queue {name!r}", reason_of(exc)) from None
                    continue
                counts[name] = int(ok.message_count or 0)
    finally:
        await close_quietly(channel)
    return counts


async def _existing_exchanges(conn: BrokerConnection, names: list[str]) -> list[str]:
    found: list[str] = []
    channel: aiormq.abc.AbstractChannel | None = None
    try:
        with broker_errors(conn.settings):
            for name in names:
                if channel is None or channel.is_closed:
                    channel = await conn.plain_channel()
                try:
                    await channel.exchange_declare(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    continue
                found.append(name)
    finally:
        await close_quietly(channel)
    return found


async def _delete_queue(
    conn: BrokerConnection,
    channel: aiormq.abc.AbstractChannel,
    name: str,
    if_empty: bool,
    result: TeardownResult,
) -> aiormq.abc.AbstractChannel:
    try:
        await channel.queue_delete(name, if_empty=if_empty)
    except aiormq.exceptions.ChannelPreconditionFailed:
        result.kept[name] = "jobs arrived after the check; kept with them"
        return await conn.plain_channel()
    result.deleted_queues.append(name)
    return channel


async def _delete_exchange(
    conn: BrokerConnection, channel: aiormq.abc.AbstractChannel, name: str, result: TeardownResult
) -> aiormq.abc.AbstractChannel:
    try:
        await channel.exchange_delete(name, if_unused=True)
    except aiormq.exceptions.ChannelPreconditionFailed:
        result.kept[name] = "bindings from outside this file still use it"
        return await conn.plain_channel()
    result.deleted_exchanges.append(name)
    return channel
