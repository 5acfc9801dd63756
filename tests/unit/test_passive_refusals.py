"""A passive declare's ``NOT_FOUND``, told apart by the broker's own words: a queue `apply` did
not make (re-apply) or one whose node is down or starting (wait). The texts are RabbitMQ 3.10.8's,
captured from a restarted node and a cluster with a node killed."""

from __future__ import annotations

import aiormq.exceptions
import pytest

from jobsys.broker.passive import declaring, node_down, not_found, reason_of
from jobsys.errors import BrokerError, TopologyError
from jobsys.ops import status

MISSING = "NOT_FOUND - no queue 'jobsys.history.events' in vhost 'v'"
NODE_DOWN = (
    "NOT_FOUND - home node 'rabbit2@localhost' of durable queue 'jobsys.history.events' in vhost "
    "'jobsys-history-d49829d8' is down or inaccessible"
)


def test_a_queue_on_a_node_that_is_down_is_a_broker_to_wait_for_not_a_topology_to_apply() -> None:
    error = not_found("the history stream 'jobsys.history.events'", NODE_DOWN)
    assert type(error) is BrokerError
    text = str(error)
    assert "cannot be reached right now" in text and "try again in a few seconds" in text
    assert "rabbit2@localhost" in text and "apply" not in text


def test_a_queue_that_does_not_exist_is_missing_and_says_to_apply() -> None:
    error = not_found("queue 'q'", MISSING)
    assert type(error) is TopologyError
    assert str(error).startswith("queue 'q' is missing — run `jobsys topology apply FILE`")


@pytest.mark.parametrize(
    ("reply", "expected"), [(NODE_DOWN, BrokerError), (MISSING, TopologyError)]
)
def test_declaring_turns_aiormqs_refusal_into_the_error_its_words_say(
    reply: str, expected: type[Exception]
) -> None:
    what = "the history stream 'jobsys.history.events'"
    with pytest.raises(expected) as caught, declaring(what):
        raise aiormq.exceptions.ChannelNotFoundEntity(404, reply)
    assert type(caught.value) is expected
    assert "(404," not in str(caught.value), "the reply's words, not the args' tuple"


def test_declaring_lets_other_failures_through_for_the_callers_translation() -> None:
    with pytest.raises(aiormq.exceptions.ConnectionClosed), declaring("queue 'q'"):
        raise aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED")


def test_reply_text_takes_the_brokers_words_and_falls_back_to_the_whole_exception() -> None:
    assert reason_of(aiormq.exceptions.ChannelNotFoundEntity(404, NODE_DOWN)) == NODE_DOWN
    assert node_down(reason_of(aiormq.exceptions.ChannelNotFoundEntity(404, NODE_DOWN)))
    assert not node_down(MISSING)
    assert reason_of(RuntimeError()) == ""


# -- how `jobsys status` reads a queue whose node is down ------------------------------------

#: ``GET /api/queues/%2F`` rows for one classic queue on RabbitMQ 3.10.8 (two-node cluster,
#: 2026-12-01), the columns `ManagementClient.queue_counts` asks for: its node running, then
#: stopped (the API lists it by name and state only).
RUNNING_ROW = {
    "name": "onb",
    "messages": 1,
    "messages_ready": 1,
    "messages_unacknowledged": 0,
    "consumers": 0,
    "message_stats": {"publish": 1, "publish_details": {"rate": 0.0}},
    "head_message_timestamp": None,
    "state": "running",
}
DOWN_ROW = {"name": "onb", "state": "down"}


def test_a_management_row_of_a_queue_whose_node_is_down_reads_as_node_down_not_zero() -> None:
    down = status._counts_of(DOWN_ROW)
    assert (down.exists, down.node_down) == (True, True)
    assert (down.ready, down.unacked, down.consumers, down.rates) == (None, None, None, None)
    running = status._counts_of(RUNNING_ROW)
    assert (running.node_down, running.ready, running.unacked, running.consumers) == (
        False,
        1,
        0,
        0,
    )


def test_a_passive_declare_refused_for_a_down_node_reads_as_node_down_else_as_missing() -> None:
    down = status._passive_counts_of(status.Unreachable(NODE_DOWN))
    assert (down.exists, down.node_down, down.ready) == (True, True, None)
    missing = status._passive_counts_of(None)
    assert (missing.exists, missing.node_down) == (False, False)
