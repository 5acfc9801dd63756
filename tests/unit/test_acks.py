"""Coalesced acks (no broker: this checks jobsys's own rule, not what the broker does with it).

The rule: a ``basic.ack(multiple=True)`` only ever covers deliveries that finished; a delivery
still running (or being requeued) below a finished one splits the run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aio_pika.exceptions import ChannelInvalidStateError

from jobsys.consume.acks import Acks


@dataclass(frozen=True)
class _Finished:
    tag: int


class _RecordingChannel:
    """Records the acks and nacks ``Acks`` sends; ``gone`` makes every call fail as a closed
    channel does."""

    def __init__(self, gone: bool = False) -> None:
        self.sent: list[tuple[int, bool]] = []
        self.nacked: list[int] = []
        self.gone = gone

    @property
    def is_closed(self) -> bool:
        return self.gone

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        if self.gone:
            raise ChannelInvalidStateError("channel closed")
        self.sent.append((delivery_tag, multiple))

    async def basic_nack(
        self, delivery_tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True
    ) -> None:
        if self.gone:
            raise ChannelInvalidStateError("channel closed")
        self.nacked.append(delivery_tag)


def _acks(channel: _RecordingChannel) -> tuple[Acks[_Finished], list[tuple[list[int], list[int]]]]:
    reported: list[tuple[list[int], list[int]]] = []
    acks: Acks[_Finished] = Acks(
        channel, lambda sent, lost: reported.append(([j.tag for j in sent], [j.tag for j in lost]))
    )
    return acks, reported


async def test_coalesced_acks_never_cover_a_job_that_has_not_finished() -> None:
    channel = _RecordingChannel()
    acks, reported = _acks(channel)
    jobs = {tag: _Finished(tag) for tag in range(1, 7)}
    for tag in jobs:
        acks.track(tag)
    # 1, 2 and 4, 5 finish in the same loop turn; 3 and 6 are still running.
    for tag in (1, 2, 4, 5):
        acks.ack(jobs[tag])
    await acks.flushed()
    assert channel.sent == [(2, True), (4, False), (5, False)]
    assert reported == [([1, 2, 4, 5], [])]
    channel.sent.clear()
    acks.ack(jobs[3])
    await acks.flushed()
    acks.ack(jobs[6])
    await acks.flushed()
    assert channel.sent == [(3, True), (6, True)]


async def test_a_requeued_delivery_is_never_covered_by_a_later_multiple_ack() -> None:
    channel = _RecordingChannel()
    acks, _ = _acks(channel)
    for tag in (1, 2, 3):
        acks.track(tag)
    assert await acks.nack(2)
    acks.ack(_Finished(3))
    acks.ack(_Finished(1))
    await acks.flushed()
    assert channel.nacked == [2]
    # 2 is no longer pending, so 1 and 3 form one run again: but the nack went first.
    assert channel.sent == [(3, True)]


async def test_acks_on_a_channel_that_is_gone_are_reported_lost_not_done() -> None:
    channel = _RecordingChannel(gone=True)
    acks, reported = _acks(channel)
    acks.track(1)
    acks.ack(_Finished(1))
    await acks.flushed()
    assert reported == [([], [1])]
    acks.track(2)
    assert await acks.nack(2) is False  # the broker requeued it already


async def test_acks_count_as_sent_only_once_the_round_trip_after_them_is_answered() -> None:
    # An ack written into a dead socket raises nothing; only the reply to the round trip
    # sent after it shows the broker got it.
    channel = _RecordingChannel()
    reported: list[tuple[list[int], list[int]]] = []
    answered = True

    async def prove() -> None:
        if not answered:
            raise ChannelInvalidStateError("connection lost before the reply")

    acks: Acks[_Finished] = Acks(
        channel,
        lambda sent, lost: reported.append(([j.tag for j in sent], [j.tag for j in lost])),
        prove,
    )
    for tag in (1, 2):
        acks.track(tag)
    acks.ack(_Finished(1))
    await acks.flushed()
    answered = False
    acks.ack(_Finished(2))
    await acks.flushed()
    assert channel.sent == [(1, True), (2, True)]  # both written
    assert reported == [([1], []), ([], [2])]  # only the first proven


async def test_a_round_trip_cancelled_by_a_dead_connection_reports_the_acks_lost() -> None:
    # aiormq cancels the waits of a connection it declared dead (no one cancelled the flush).
    channel = _RecordingChannel()
    reported: list[tuple[list[int], list[int]]] = []

    async def prove() -> None:
        raise asyncio.CancelledError

    acks: Acks[_Finished] = Acks(
        channel,
        lambda sent, lost: reported.append(([j.tag for j in sent], [j.tag for j in lost])),
        prove,
    )
    acks.track(1)
    acks.ack(_Finished(1))
    await acks.flushed()
    assert reported == [([], [1])]
