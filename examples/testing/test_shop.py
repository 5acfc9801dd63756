import pytest
import shop

from jobsys import PayloadValidationError, Producer
from jobsys.testing import Kit


@pytest.fixture(autouse=True)
def fresh() -> None:
    shop.outbox.clear()
    shop.failures[0] = 0


async def test_sign_up_publishes_a_welcome_email(jobsys_producer: Producer) -> None:
    # Runs in memory, and on RabbitMQ with --jobsys-broker.
    job_id = await shop.sign_up(jobsys_producer, "ada@example.com")
    assert job_id


async def test_the_welcome_email_is_sent(jobsys_kit: Kit) -> None:
    await shop.sign_up(jobsys_kit.producer, "ada@example.com")
    assert [p.job_type for p in jobsys_kit.published] == ["send_welcome"]
    await jobsys_kit.drain()
    assert shop.outbox == ["ada@example.com"]


async def test_a_mail_server_outage_is_retried_after_ten_seconds(jobsys_kit: Kit) -> None:
    shop.failures[0] = 1
    job_id = await shop.sign_up(jobsys_kit.producer, "ada@example.com")
    await jobsys_kit.drain()
    assert shop.outbox == []
    await jobsys_kit.advance(10)  # virtual time: the test does not wait
    assert shop.outbox == ["ada@example.com"]
    assert [(r.attempt, r.outcome) for r in jobsys_kit.runs_of(job_id)] == [
        (1, "retry"),
        (2, "ack"),
    ]


async def test_a_long_outage_ends_in_the_dead_letter_queue(jobsys_kit: Kit) -> None:
    shop.failures[0] = 99
    await shop.sign_up(jobsys_kit.producer, "ada@example.com")
    await jobsys_kit.run_until_idle()
    [dead] = jobsys_kit.dead_letters("emails")
    assert (dead.error_type, dead.attempts) == ("ConnectionError", 3)


async def test_a_bad_address_is_refused_before_publishing(jobsys_producer: Producer) -> None:
    with pytest.raises(PayloadValidationError):
        await jobsys_producer.publish("send_welcome", {"email": 42})
