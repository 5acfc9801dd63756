"""The publish error map (``jobsys.broker.confirm.publish_error``): each way aiormq reports a
publish that did not succeed becomes one typed error that says whether the job is queued and
what to do. The exceptions are built as aiormq raises them; the broker's side of each case is
checked in tests/integration/test_producer.py."""

from __future__ import annotations

import aiormq.exceptions as amqp
import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader

from jobsys.broker.confirm import Outgoing
from jobsys.broker.publish_errors import publish_error
from jobsys.errors import (
    AccessRefused,
    BrokerBlockedError,
    JobsysError,
    MessageRefusedError,
    PublishOutcomeUnknown,
    QueueFullError,
    UnroutableError,
)

OUT = Outgoing("job-1", "send_email", "jobs", "email.send", b"{}", ("emails",))


def _map(
    exc: BaseException,
    *,
    blocked: bool = False,
    dlx: frozenset[str] = frozenset(),
    alone: bool = False,
) -> JobsysError:
    return publish_error(
        exc, OUT, blocked=blocked, timeout_s=30.0, refusals_dead_lettered=dlx, alone=alone
    )


def test_a_returned_publish_is_unroutable_and_was_not_published() -> None:
    frame = spec.Basic.Return(312, "NO_ROUTE", "jobs", "email.send")
    message = DeliveredMessage(frame, ContentHeader(), b"{}", None)  # type: ignore[arg-type]
    returned = amqp.PublishError(message, frame)
    error = _map(returned)
    assert isinstance(error, UnroutableError)
    assert "no binding on exchange 'jobs' matched routing key 'email.send'" in str(error)
    assert "it was not published" in str(error) and error.job_id == "job-1"


def test_a_nack_is_a_full_queue_that_names_the_queue_and_what_to_do() -> None:
    error = _map(amqp.DeliveryError(None, spec.Basic.Nack(1)))  # type: ignore[arg-type]
    assert isinstance(error, QueueFullError)
    assert "queue emails is full" in str(error) and "retry later" in str(error)
    assert "dead-letter" not in str(error)
    # Seen on a 3-node 3.10.8 cluster: after the node leading a quorum queue without a length
    # limit died, the channel opened at that moment had every publish nacked (docs/cluster.md).
    assert "whose leader just died" in str(error)


def test_a_nack_from_a_reject_publish_dlx_queue_names_the_copy_the_broker_kept() -> None:
    error = _map(amqp.DeliveryError(None, spec.Basic.Nack(1)), dlx=frozenset({"emails"}))  # type: ignore[arg-type]
    assert "emails.dead" in str(error) and "do not replay that copy too" in str(error)


def test_a_refused_write_is_access_refused_never_outcome_unknown() -> None:
    error = _map(amqp.ChannelAccessRefused(403, "ACCESS_REFUSED - write access to exchange 'jobs'"))
    assert isinstance(error, AccessRefused)
    assert "needs write permission on exchange 'jobs'" in str(error)


MISSING_EXCHANGE = amqp.ChannelNotFoundEntity(404, "NOT_FOUND - no exchange 'jobs' in vhost '/'")


def test_a_missing_exchange_says_to_apply_the_topology() -> None:
    error = _map(MISSING_EXCHANGE, alone=True)
    assert isinstance(error, UnroutableError) and "jobsys topology apply" in str(error)
    assert "was not published" in str(error)


def test_a_404_close_with_other_publishes_in_flight_leaves_their_outcome_unknown() -> None:
    # The broker closed the channel for one publish; aiormq fails every pending confirm alike,
    # and those sent before it may be queued: none may say "was not published".
    error = _map(MISSING_EXCHANGE, alone=False)
    assert isinstance(error, PublishOutcomeUnknown)
    assert "was not published" not in str(error) and "no exchange 'jobs'" in str(error)


@pytest.mark.parametrize(
    "exc",
    [
        amqp.AMQPConnectionError("lost"),
        amqp.ChannelInvalidStateError("closed"),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_a_lost_connection_or_no_confirm_in_time_is_outcome_unknown(exc: BaseException) -> None:
    error = _map(exc)
    assert isinstance(error, PublishOutcomeUnknown)
    assert "publishing it again with the same job id may queue a second copy" in str(error)


def test_no_confirm_while_the_broker_blocks_publishing_says_so() -> None:
    error = _map(TimeoutError(), blocked=True)
    assert isinstance(error, BrokerBlockedError) and "memory or disk alarm" in str(error)


REFUSAL = amqp.ChannelPreconditionFailed(
    'PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,"CC",longstr}'
)


def test_a_message_the_broker_refused_alone_was_not_published_and_says_so() -> None:
    error = publish_error(REFUSAL, OUT, blocked=False, timeout_s=30.0, alone=True)
    assert isinstance(error, MessageRefusedError)
    assert not isinstance(error, PublishOutcomeUnknown)
    assert "was not published" in str(error) and "unacceptable_type_in_header" in str(error)
    assert "resubmitting" in str(error)  # says resubmitting it unchanged cannot help
    assert error.job_id == "job-1"


def test_a_refusal_while_other_messages_were_in_flight_leaves_each_of_them_unknown() -> None:
    # The broker closes the channel for one message; every confirm pending on it fails alike,
    # and those published just before it may already be queued.
    error = publish_error(REFUSAL, OUT, blocked=False, timeout_s=30.0, alone=False)
    assert isinstance(error, PublishOutcomeUnknown)
    assert "refused a message" in str(error) and "unacceptable_type_in_header" in str(error)
