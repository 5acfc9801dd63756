"""Whether a management API answers for the broker an AMQP connection reached: both must name
the same cluster, or the API is not used."""

from __future__ import annotations

from jobsys.broker.management import other_broker

WHERE = "http://127.0.0.1:15672"


def test_the_same_cluster_name_on_both_sides_is_the_same_broker() -> None:
    overview = {"cluster_name": "rabbit@vm", "node": "rabbit@localhost"}

    assert other_broker({"cluster_name": "rabbit@vm"}, overview, WHERE) is None


def test_another_cluster_name_is_another_broker_and_the_message_names_both() -> None:
    overview = {"cluster_name": "rabbit@vm", "node": "rabbit@localhost"}

    assert other_broker({"cluster_name": "rabbit12@vm"}, overview, WHERE) == (
        "the management API at http://127.0.0.1:15672 answers for cluster 'rabbit@vm' (node "
        "'rabbit@localhost'), but the AMQP connection reached cluster 'rabbit12@vm': another "
        "broker"
    )


def test_a_cluster_name_sent_as_bytes_is_read_as_text() -> None:
    assert other_broker({"cluster_name": b"prod"}, {"cluster_name": "prod"}, WHERE) is None


def test_a_broker_that_names_no_cluster_over_amqp_cannot_be_matched() -> None:
    problem = other_broker({}, {"cluster_name": "prod"}, WHERE)

    assert problem is not None and "did not name its cluster over AMQP" in problem


def test_an_api_that_names_no_cluster_cannot_be_matched() -> None:
    problem = other_broker({"cluster_name": "prod"}, {"node": "rabbit@x"}, WHERE)

    assert problem == "the management API at http://127.0.0.1:15672 did not name its cluster"
