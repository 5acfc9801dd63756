"""``jobsys topology delete`` on the real broker: it removes what a file declared, keeps what
other files in the vhost still use, and never loses a job without --force."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aio_pika
import pytest
from click.testing import CliRunner, Result

from jobsys.broker.connection import BrokerConnection
from jobsys.broker.management import ManagementClient, management_endpoint
from jobsys.cli import main
from jobsys.settings import Settings

SHOP = """
version: 1
exchanges:
  shop.jobs: {type: topic}
queues:
  shop.orders: {type: classic}
  shop.billing: {type: quorum}
bindings:
  - {exchange: shop.jobs, queue: shop.orders, routing_key: "order.#"}
  - {exchange: shop.jobs, queue: shop.billing, routing_key: "bill.#"}
job_types:
  place_order: {exchange: shop.jobs, routing_key: order.place}
  charge: {exchange: shop.jobs, routing_key: bill.charge}
"""

MAIL = """
version: 1
exchanges:
  mail.jobs: {type: direct}
queues:
  mail.outbox: {type: classic}
bindings:
  - {exchange: mail.jobs, queue: mail.outbox, routing_key: send}
job_types:
  send_email: {exchange: mail.jobs, routing_key: send}
"""


def jobsys(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--url", settings.url], catch_exceptions=False)


def write(tmp_path: Path, text: str, name: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def names(settings: Settings) -> tuple[set[str], set[str]]:
    async def read() -> tuple[set[str], set[str]]:
        client = ManagementClient(management_endpoint(settings))
        queues = {str(q["name"]) for q in await client.queues(settings.vhost)}
        exchanges = {
            str(e["name"])
            for e in await client.exchanges(settings.vhost)
            if e["name"] and not str(e["name"]).startswith("amq.")
        }
        return queues, exchanges

    return asyncio.run(read())


def publish(settings: Settings, exchange: str, key: str) -> None:
    async def send() -> None:
        async with BrokerConnection(settings) as conn:
            channel = await conn.channel(confirms=True)
            target = await channel.get_exchange(exchange, ensure=False)
            await target.publish(aio_pika.Message(b"{}"), routing_key=key, mandatory=True)

    asyncio.run(send())


@pytest.mark.management
def test_delete_shows_first_then_removes_everything_the_file_declared(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    shop = write(tmp_path, SHOP, "shop.yaml")
    assert jobsys(vhost_settings, "topology", "apply", shop).exit_code == 0
    before = names(vhost_settings)

    shown = jobsys(vhost_settings, "topology", "delete", shop)
    assert names(vhost_settings) == before  # only shown
    deleted = jobsys(vhost_settings, "topology", "delete", shop, "--yes")

    assert shown.exit_code == 0, shown.output
    assert "  - queue shop.billing\n" in shown.stdout
    assert "the delay levels of 'jobsys' (29 queues, 29 exchanges)" in shown.stdout
    assert "nothing deleted" in shown.stdout
    assert deleted.exit_code == 0, deleted.output
    assert names(vhost_settings) == (set(), set())


@pytest.mark.management
def test_a_queue_holding_jobs_stops_the_delete_until_force(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    shop = write(tmp_path, SHOP, "shop.yaml")
    assert jobsys(vhost_settings, "topology", "apply", shop).exit_code == 0
    publish(vhost_settings, "shop.jobs", "bill.charge")  # into the quorum queue
    before = names(vhost_settings)

    refused = jobsys(vhost_settings, "topology", "delete", shop, "--yes")
    assert names(vhost_settings) == before
    forced = jobsys(vhost_settings, "topology", "delete", shop, "--yes", "--force", "--json")

    assert refused.exit_code == 1
    assert "queues hold jobs: shop.billing (1); nothing was deleted" in refused.stderr
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["deleted"] is True
    assert names(vhost_settings) == (set(), set())


@pytest.mark.management
def test_a_second_file_in_the_namespace_keeps_the_delay_levels_and_its_jobs_flowing(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    shop = write(tmp_path, SHOP, "shop.yaml")
    mail = write(tmp_path, MAIL, "mail.yaml")
    for file in (shop, mail):
        assert jobsys(vhost_settings, "topology", "apply", file).exit_code == 0

    deleted = jobsys(vhost_settings, "topology", "delete", shop, "--yes")
    published = CliRunner(env={"JOBSYS_TOPOLOGY": mail}).invoke(
        main, ["publish", "send_email", "{}", "--delay", "1s", "--url", vhost_settings.url]
    )

    assert deleted.exit_code == 0, deleted.output
    assert "queues outside this file use them (mail.outbox, mail.outbox.dead)" in deleted.stdout
    queues, exchanges = names(vhost_settings)
    assert not any(name.startswith("shop.") for name in queues | exchanges)
    assert {"mail.outbox", "mail.outbox.dead", "jobsys.wait.00"} <= queues
    assert {"jobsys.due", "jobsys.dead-letter", "mail.jobs"} <= exchanges
    assert published.exit_code == 0, published.output


@pytest.mark.parametrize("flags", [["--no-management"]])
@pytest.mark.management
def test_without_the_management_api_the_namespace_stays_unless_forced(
    vhost_settings: Settings, tmp_path: Path, flags: list[str]
) -> None:
    mail = write(tmp_path, MAIL, "mail.yaml")
    assert jobsys(vhost_settings, "topology", "apply", mail).exit_code == 0

    kept = jobsys(vhost_settings, "topology", "delete", mail, "--yes", *flags)

    assert kept.exit_code == 0, kept.output
    assert "other files' use of them is unknown" in kept.stdout
    queues, _ = names(vhost_settings)
    assert "mail.outbox" not in queues and "jobsys.wait.00" in queues
    forced = jobsys(vhost_settings, "topology", "delete", mail, "--yes", "--force", *flags)
    assert forced.exit_code == 0, forced.output
    assert names(vhost_settings) == (set(), set())


@pytest.mark.management
def test_an_exchange_bound_from_elsewhere_is_kept(vhost_settings: Settings, tmp_path: Path) -> None:
    mail = write(tmp_path, MAIL, "mail.yaml")
    assert jobsys(vhost_settings, "topology", "apply", mail).exit_code == 0

    async def bind_a_stranger() -> None:
        async with BrokerConnection(vhost_settings) as conn:
            channel = await conn.channel()
            stranger = await channel.declare_queue("stranger", durable=True)
            await stranger.bind("mail.jobs", routing_key="other")

    asyncio.run(bind_a_stranger())

    deleted = jobsys(vhost_settings, "topology", "delete", mail, "--yes")

    assert deleted.exit_code == 0, deleted.output
    assert "kept mail.jobs: bindings from outside this file still use it" in deleted.stdout
    queues, exchanges = names(vhost_settings)
    assert queues == {"stranger"} and exchanges == {"mail.jobs"}


@pytest.mark.management
def test_force_for_a_queue_holding_jobs_keeps_what_another_file_uses(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    shop = write(tmp_path, SHOP, "shop.yaml")
    mail = write(tmp_path, MAIL, "mail.yaml")
    for file in (shop, mail):
        assert jobsys(vhost_settings, "topology", "apply", file).exit_code == 0
    publish(vhost_settings, "shop.jobs", "bill.charge")  # so that shop needs --force

    shown = jobsys(vhost_settings, "topology", "delete", shop)
    forced = jobsys(vhost_settings, "topology", "delete", shop, "--yes", "--force")
    published = CliRunner(env={"JOBSYS_TOPOLOGY": mail}).invoke(
        main, ["publish", "send_email", "{}", "--delay", "1s", "--url", vhost_settings.url]
    )

    assert "queues outside this file use them (mail.outbox, mail.outbox.dead)" in shown.stdout
    assert forced.exit_code == 0, forced.output
    queues, exchanges = names(vhost_settings)
    assert not any(name.startswith("shop.") for name in queues | exchanges)
    assert {"jobsys.wait.00", "jobsys.cancellations"} <= queues, sorted(queues)
    assert published.exit_code == 0, published.output
