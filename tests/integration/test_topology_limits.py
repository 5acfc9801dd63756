"""What the broker accepts, measured, and apply refusing beyond it before touching the broker.

The first tests pin the measurements ``jobsys/topology/limits.py`` is built on (RabbitMQ
3.10.8): if a broker moves a limit, they say so. The rest run ``validate``, ``plan`` and
``apply`` on files past a limit: each is refused whole, with its position, and nothing is
declared; "nothing was changed" is said only when it is true.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import aiormq
import aiormq.exceptions
import pytest

from jobsys.broker.connection import BrokerConnection
from jobsys.broker.management import ManagementClient, management_endpoint
from jobsys.errors import TopologyLoadError
from jobsys.settings import Settings
from jobsys.topology.loader import load_topology_text

JOBSYS = str(Path(sys.executable).with_name("jobsys"))
#: Measured on RabbitMQ 3.10.8, written out here so that the tests pin them on their own.
MAX_MESSAGE_TTL_MS = 315_360_000_000
MAX_AMQP_INT = 2**63 - 1

FILE = """\
version: 1
exchanges:
  l.jobs: {type: direct}
queues:
  l.work: {type: QTYPE, QUEUE}
bindings:
  - {exchange: l.jobs, queue: l.work, routing_key: ROUTING_KEY}
job_types:
  job: {exchange: l.jobs, routing_key: ROUTING_KEY}
"""


def topology(queue: str = "durable: true", qtype: str = "classic", key: str = "k") -> str:
    return FILE.replace("QUEUE", queue).replace("QTYPE", qtype).replace("ROUTING_KEY", key)


def jobsys(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JOBSYS, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "JOBSYS_URL": url},
        timeout=60,
        check=False,
    )


async def broker_names(settings: Settings) -> set[str]:
    """Every exchange and queue the vhost holds, the broker's own exchanges aside."""
    client = ManagementClient(management_endpoint(settings))
    snapshot = await client.snapshot(settings.vhost)
    names = {str(e["name"]) for e in snapshot.exchanges} | {str(q["name"]) for q in snapshot.queues}
    return {n for n in names if n and not n.startswith("amq.")}


async def declare_accepted(settings: Settings, qtype: str, argument: str, value: int) -> bool:
    """Whether the broker accepts a queue with ``argument`` set to ``value`` (deleted again)."""
    async with BrokerConnection(settings) as conn:
        channel = await conn.plain_channel()
        name = f"limit-{uuid.uuid4().hex[:8]}"
        arguments = {"x-queue-type": qtype, argument: value}
        try:
            await channel.queue_declare(name, durable=True, arguments=arguments)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            assert "value_too_large" in str(exc) or "invalid arg" in str(exc), exc
            return False
        await channel.queue_delete(name)
        await channel.close()
        return True


# -- the measurements -------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ["classic", "quorum"])
async def test_the_broker_takes_a_message_ttl_up_to_3650_days_and_not_a_millisecond_more(
    vhost_settings: Settings, qtype: str
) -> None:
    ttl = "x-message-ttl"
    assert await declare_accepted(vhost_settings, qtype, ttl, MAX_MESSAGE_TTL_MS)
    assert not await declare_accepted(vhost_settings, qtype, ttl, MAX_MESSAGE_TTL_MS + 1)


@pytest.mark.parametrize(
    ("qtype", "argument"),
    [
        ("classic", "x-max-length"),
        ("classic", "x-max-length-bytes"),
        ("quorum", "x-max-length"),
        ("quorum", "x-max-length-bytes"),
        ("quorum", "x-delivery-limit"),
    ],
)
async def test_the_broker_takes_every_count_up_to_the_largest_amqp_integer(
    vhost_settings: Settings, qtype: str, argument: str
) -> None:
    assert await declare_accepted(vhost_settings, qtype, argument, MAX_AMQP_INT)


# -- files past a limit: refused whole, nothing declared --------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (topology("max_length: 9223372036854775808"), ":5:"),
        (topology("max_length_bytes: 18446744073709551616"), ":5:"),
        (topology("delivery_limit: " + "9" * 30, qtype="quorum"), ":5:"),
        (topology("message_ttl: 10000000000d"), ":5:"),
        (topology(key="✓" * 100), ":7:"),
    ],
    ids=["max_length 2^63", "max_length_bytes 2^64", "delivery_limit 30 digits", "ttl", "key"],
)
@pytest.mark.management
def test_validate_plan_and_apply_refuse_a_value_the_broker_cannot_hold_and_declare_nothing(
    vhost_settings: Settings, tmp_path: Path, text: str, where: str
) -> None:
    file = tmp_path / "topology.yaml"
    file.write_text(text, encoding="utf-8")

    runs = [
        jobsys("topology", command, str(file), url=vhost_settings.url)
        for command in ("validate", "plan", "apply")
    ]

    for result in runs:
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"{file}{where}" in result.stderr
        assert "Traceback" not in result.stderr
    assert asyncio.run(broker_names(vhost_settings)) == set()


def test_publish_of_a_job_type_whose_routing_key_amqp_cannot_carry_exits_2(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    file = tmp_path / "topology.yaml"
    file.write_text(topology(key="✓" * 100), encoding="utf-8")

    result = jobsys("publish", "--topology", str(file), "job", "{}", url=vhost_settings.url)

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{file}:9:" in result.stderr and "300 bytes" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_max_delay_beyond_what_the_delay_levels_hold_is_refused_in_the_file() -> None:
    # The delay levels are fixed (29 of them, level 28 at the broker's longest TTL): a
    # max_delay past them is refused where it is written, before any I/O.
    with pytest.raises(TopologyLoadError) as caught:
        load_topology_text(topology() + "delays: {max_delay: 100000000d}\n", "big.yaml")
    assert "big.yaml:10:1: delays: max_delay must be at most" in str(caught.value)
