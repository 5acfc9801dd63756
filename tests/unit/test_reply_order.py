"""The worker's replies without a broker: sent just before the ack and never instead of it,
only for settlements that end a job, and never a reason for a job to fail."""

from __future__ import annotations

from typing import Any

from jobsys.consume.outcome import ACK, CANCEL, Outcome
from jobsys.consume.reply import ReplySender
from tests.unit.test_settle import DEAD, RETRY, _Channel, _delivery, _settle, _world

ADDRESS = "amq.rabbitmq.reply-to.abc"


class _Events:
    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []


class _AckChannel(_Channel):
    def __init__(self, events: _Events) -> None:
        super().__init__()
        self.events = events

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.events.log.append(("ack", delivery_tag))


class _ReplyChannel:
    def __init__(self, events: _Events, fail: Exception | None = None) -> None:
        self.events = events
        self.fail = fail
        self.is_closed = False

    async def basic_publish(self, body: bytes, **kw: Any) -> None:
        if self.fail is not None:
            raise self.fail
        assert kw["exchange"] == ""  # only ever the default exchange
        props = kw["properties"]
        self.events.log.append(("reply", (kw["routing_key"], props.correlation_id, body)))

    async def close(self) -> None:
        self.is_closed = True


def _with_replies(events: _Events, channel: _ReplyChannel) -> tuple[Any, ReplySender]:
    world = _world()
    world.channel = _AckChannel(events)
    opened: list[_ReplyChannel] = []

    async def open_channel() -> Any:
        opened.append(channel)
        return channel

    sender = ReplySender(open_channel)
    world.settler.replies = sender
    return world, sender


def _asking(world: Any, reply_to: str = ADDRESS) -> Any:
    delivery = _delivery(world.channel)
    delivery.message.header.properties.reply_to = reply_to
    return delivery


async def test_the_result_is_replied_before_the_ack() -> None:
    events = _Events()
    world, sender = _with_replies(events, _ReplyChannel(events))
    await _settle(world, Outcome.done(b"[1,2]"), _asking(world))
    assert events.log == [("reply", (ADDRESS, "c-1", b"[1,2]")), ("ack", 1)]
    assert sender.sent == 1


async def test_a_handler_that_returned_none_replies_null() -> None:
    events = _Events()
    world, _ = _with_replies(events, _ReplyChannel(events))
    await _settle(world, ACK, _asking(world))
    assert events.log[0] == ("reply", (ADDRESS, "c-1", b"null"))


async def test_a_dead_letter_is_replied_after_its_confirm_and_before_the_ack() -> None:
    events = _Events()
    world, _ = _with_replies(events, _ReplyChannel(events))
    await _settle(world, DEAD, _asking(world))
    assert len(world.producer.sent) == 1  # the dead letter went out first (confirmed)
    assert [kind for kind, _ in events.log] == ["reply", "ack"]


async def test_a_cancelled_job_is_replied_too() -> None:
    events = _Events()
    world, _ = _with_replies(events, _ReplyChannel(events))
    await _settle(world, CANCEL, _asking(world))
    assert [kind for kind, _ in events.log] == ["reply", "ack"]


async def test_a_retry_sends_no_reply() -> None:
    events = _Events()
    world, sender = _with_replies(events, _ReplyChannel(events))
    await _settle(world, RETRY, _asking(world))
    assert sender.sent == 0 and all(kind != "reply" for kind, _ in events.log)


async def test_a_job_without_reply_to_costs_no_reply() -> None:
    events = _Events()
    world, sender = _with_replies(events, _ReplyChannel(events))
    await _settle(world, Outcome.done(b"1"), _asking(world, reply_to=""))
    assert events.log == [("ack", 1)]
    assert (sender.sent, sender.ignored) == (0, 0)


async def test_a_reply_that_cannot_be_sent_is_dropped_and_the_job_still_acked() -> None:
    events = _Events()
    world, sender = _with_replies(events, _ReplyChannel(events, fail=ConnectionError("gone")))
    await _settle(world, Outcome.done(b"1"), _asking(world))
    assert events.log == [("ack", 1)]
    assert sender.dropped == 1


async def test_a_closed_reply_channel_is_opened_again() -> None:
    events = _Events()
    first = _ReplyChannel(events)
    world, sender = _with_replies(events, first)
    await _settle(world, Outcome.done(b"1"), _asking(world))
    first.is_closed = True
    second = _ReplyChannel(events)

    async def reopen() -> Any:
        return second

    sender._open_channel = reopen
    await _settle(world, Outcome.done(b"2"), _asking(world))
    assert sender.sent == 2 and sender._channel is second
