"""The dashboard against the real broker, through HTTP (Starlette's test client): every page
with real jobs, escaping of hostile names, the write guards, paging, and a broker that is gone.
The same flows in a real browser are in tests/browser/."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest
from starlette.testclient import TestClient

from jobsys.broker.connection import BrokerConnection
from jobsys.dashboard.app import create_app
from jobsys.dashboard.config import DashboardConfig
from jobsys.publish.producer import Producer
from jobsys.settings import Settings
from jobsys.topology.model import DEAD_LETTER_EXCHANGE
from jobsys.wire.envelope import new_message_id
from tests.apps.dead_letters import (
    DLQ,
    QUEUE,
    SECRET,
    apply,
    dead_letter_headers,
    drain,
    fill_dead_letter_queue,
    job_ids,
    loaded_topology,
)
from tests.harness.fault_proxy import FaultProxy

TOKEN = "dashboard-test-token-0123456789"
HOSTILE_IDS = [
    "<script>alert(1)</script>",
    "evil\u202egnp.exe",
    "ansi\x1b[2Jclear\nFAKE ROW",
    '"><img src=x onerror=alert(2)>',
]


@contextlib.contextmanager
def dashboard(settings: Settings, **config: Any) -> Iterator[TestClient]:
    """A client of a dashboard for the dead-letter test topology on ``settings``' vhost."""
    app = create_app(DashboardConfig(**config), settings, loaded_topology().topology)
    with TestClient(app, base_url="http://127.0.0.1:8080") as client:
        yield client


def log_in(client: TestClient, token: str = TOKEN) -> None:
    response = client.post("/login", data={"token": token, "next": "/"})
    assert response.status_code == 200, response.text


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


async def plant(settings: Settings, job_id: str, body: bytes = b'{"n": 1}', **extra: Any) -> None:
    """One dead-lettered job with ``job_id`` (and extra headers) straight into the DLQ."""
    async with BrokerConnection(settings) as connection:
        channel = await connection.channel(confirms=True)
        exchange = await channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                message_id=new_message_id(),
                type="send_email",
                headers={**dead_letter_headers(job_id), **extra},
            ),
            DLQ,
            mandatory=True,
        )
        await channel.close()


async def test_every_page_loads_with_real_jobs_and_exact_counts_over_amqp(
    vhost_settings: Settings,
) -> None:
    await apply(vhost_settings)
    await fill_dead_letter_queue(vhost_settings, 3)
    async with Producer(vhost_settings, loaded_topology()) as producer:
        for _ in range(4):
            await producer.publish("send_email", {"to": "a@example.com"})
        await producer.publish("send_email", {"to": "later"}, delay_s=3600)

    with dashboard(vhost_settings, use_management=False) as client:
        queues = client.get("/")
        delays = client.get("/delays")
        workers = client.get("/workers")
        dead = client.get("/dead-letters")
        listing = client.get(f"/dead-letters/{QUEUE}")

    assert [r.status_code for r in (queues, delays, workers, dead, listing)] == [200] * 5
    row = re.search(r'<tr data-queue="work">(.*?)</tr>', queues.text, re.S)
    assert row is not None
    cells = re.findall(r'<td class="n">(?:<a [^>]*>)?([^<]*)', row.group(1))
    assert cells == ["4", "-", "0", "-", "3"]  # ready, unacked unknown, consumers, age, dead
    assert "over AMQP" in queues.text
    assert re.search(r'id="delayed-total">1<', delays.text)
    assert "management API is off" in workers.text
    assert "3 jobs in work.dead" in listing.text
    assert listing.text.count("/dead-letters/work/job?id=") == 3


async def test_pages_refreshed_by_htmx_get_only_their_live_part(vhost_settings: Settings) -> None:
    await apply(vhost_settings)

    with dashboard(vhost_settings, use_management=False) as client:
        part = client.get("/", headers={"HX-Request": "true"})

    assert part.status_code == 200
    assert part.text.startswith('<div id="live"')
    assert "<html" not in part.text


async def test_hostile_job_ids_and_headers_are_shown_escaped_never_as_markup(
    vhost_settings: Settings,
) -> None:
    await apply(vhost_settings)
    for job_id in HOSTILE_IDS:
        await plant(vhost_settings, job_id, **{"x-<b>bold</b>": "v\u202eal\x07"})

    with dashboard(vhost_settings, use_management=False) as client:
        listing = client.get(f"/dead-letters/{QUEUE}")
        shows = [client.get(f"/dead-letters/{QUEUE}/job", params={"id": i}) for i in HOSTILE_IDS]

    for page in [listing, *shows]:
        assert page.status_code == 200
        assert "<script>alert" not in page.text
        assert "<img src=x" not in page.text
        assert "<b>bold" not in page.text
        assert "\u202e" not in page.text and "\x1b" not in page.text and "\x07" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing.text
    assert "evil\\u202egnp.exe" in listing.text
    assert "ansi\\x1b[2Jclear\\nFAKE ROW" in listing.text
    assert "x-&lt;b&gt;bold&lt;/b&gt;" in shows[0].text
    assert "v\\u202eal\\x07" in shows[0].text


async def test_payloads_are_hidden_unless_asked_for_and_then_cut_at_the_limit(
    vhost_settings: Settings,
) -> None:
    await apply(vhost_settings)
    await plant(vhost_settings, "small", b'{"secret": "' + SECRET.encode() + b'"}')
    await plant(vhost_settings, "big", b'{"x": "' + b"A" * 5000 + b'<script>"}')

    with dashboard(vhost_settings, use_management=False) as client:
        hidden = client.get(f"/dead-letters/{QUEUE}/job", params={"id": "small"})
    with dashboard(
        vhost_settings, use_management=False, show_payloads=True, payload_limit=100
    ) as client:
        small = client.get(f"/dead-letters/{QUEUE}/job", params={"id": "small"})
        big = client.get(f"/dead-letters/{QUEUE}/job", params={"id": "big"})

    assert SECRET not in hidden.text and 'id="payload-hidden"' in hidden.text
    assert SECRET in small.text
    assert "A" * 90 in big.text and "A" * 101 not in big.text
    assert "first 100 of 5,017 bytes" in big.text
    assert "<script>" not in big.text


async def test_a_job_replayed_through_the_dashboard_is_back_in_its_queue(
    vhost_settings: Settings,
) -> None:
    await apply(vhost_settings)
    ids = await fill_dead_letter_queue(vhost_settings, 3)

    with dashboard(vhost_settings, use_management=False, token=TOKEN) as client:
        log_in(client)
        confirm = client.get(f"/dead-letters/{QUEUE}/replay", params={"job_id": ids[1]})
        done = client.post(
            f"/dead-letters/{QUEUE}/replay",
            data={"csrf": csrf_of(confirm.text), "job_id": ids[1], "token": TOKEN},
        )

    assert done.status_code == 200, done.text
    assert "replayed 1 job to work" in done.text
    assert job_ids(await drain(vhost_settings, QUEUE)) == [ids[1]]
    assert job_ids(await drain(vhost_settings, DLQ)) == [ids[0], ids[2]]


@pytest.mark.parametrize(
    "case",
    ["no token set", "not logged in", "no csrf", "spent csrf", "altered form", "wrong token"],
)
async def test_a_purge_is_refused_without_every_guard_and_nothing_is_lost(
    vhost_settings: Settings, case: str
) -> None:
    await apply(vhost_settings)
    await fill_dead_letter_queue(vhost_settings, 2)
    token = None if case == "no token set" else TOKEN

    with dashboard(vhost_settings, use_management=False, token=token) as client:
        csrf = ""
        if token is not None and case != "not logged in":
            log_in(client)
            csrf = csrf_of(client.get(f"/dead-letters/{QUEUE}/purge").text)
        form = {"csrf": csrf, "token": TOKEN}
        if case == "no csrf":
            form.pop("csrf")
        if case == "spent csrf":
            client.post(f"/dead-letters/{QUEUE}/purge", data={**form, "token": "wrong" * 4})
        if case == "altered form":
            form["job_type"] = "send_email"
        if case == "wrong token":
            form["token"] = "not-the-token-\x00\u202e\xff"
        refused = client.post(f"/dead-letters/{QUEUE}/purge", data=form, follow_redirects=False)

    assert refused.status_code in (400, 401, 403), refused.text
    assert "purged" not in refused.text
    assert len(await drain(vhost_settings, DLQ)) == 2


async def test_with_a_token_every_page_needs_a_login_or_a_bearer_token(
    vhost_settings: Settings,
) -> None:
    await apply(vhost_settings)

    with dashboard(vhost_settings, use_management=False, token=TOKEN) as client:
        pages = [client.get(p, follow_redirects=False) for p in ("/", "/dead-letters/work")]
        scrape = client.get("/metrics")
        bearer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        wrong = client.post("/login", data={"token": "x" * 20})
        log_in(client)
        after = client.get("/")

    assert [(p.status_code, p.headers["location"]) for p in pages] == [
        (303, "/login?next=/"),
        (303, "/login?next=/dead-letters/work"),
    ]
    assert scrape.status_code == 401
    assert bearer.status_code == 200 and 'jobsys_queue_ready{queue="work"} 0.0' in bearer.text
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    assert after.status_code == 200 and "<h1>Queues</h1>" in after.text


async def test_an_unreachable_broker_is_a_clear_message_on_the_page_not_a_traceback(
    vhost_settings: Settings,
) -> None:
    gone = vhost_settings.with_overrides(url="amqp://guest:guest@127.0.0.1:1/nowhere")

    with dashboard(gone, use_management=False) as client:
        page = client.get("/")
        part = client.get("/", headers={"HX-Request": "true"})
        scrape = client.get("/metrics")

    assert page.status_code == 503
    assert "Cannot read the broker" in page.text and "127.0.0.1:1" in page.text
    assert "guest:guest" not in page.text
    assert "Traceback" not in page.text
    assert part.status_code == 200 and "Cannot read the broker" in part.text
    assert "jobsys_broker_up 0.0" in scrape.text


async def test_a_huge_dead_letter_queue_is_paged_and_pages_stop_at_the_browse_depth(
    vhost_settings: Settings,
) -> None:
    await apply(vhost_settings)
    ids = await fill_dead_letter_queue(vhost_settings, 1120)

    with dashboard(vhost_settings, use_management=False) as client:
        first = client.get(f"/dead-letters/{QUEUE}")
        second = client.get(f"/dead-letters/{QUEUE}", params={"start": "50"})
        deepest = client.get(f"/dead-letters/{QUEUE}", params={"start": "99999"})
        odd = client.get(f"/dead-letters/{QUEUE}", params={"start": "-5<script>"})

    def shown(page: Any) -> list[str]:
        return re.findall(r"/dead-letters/work/job\?id=([0-9a-f-]+)", page.text)

    assert shown(first) == ids[:50] and "?start=50" in first.text
    assert shown(second) == ids[50:100]
    assert shown(deepest) == ids[1000:1050]
    assert "Pages go 1,000 jobs deep" in deepest.text and "next" not in deepest.text
    assert shown(odd) == ids[:50]
    assert len(await drain(vhost_settings, DLQ)) == 1120  # looking took nothing


async def test_a_request_for_another_host_name_is_refused_on_loopback(
    vhost_settings: Settings,
) -> None:
    with dashboard(vhost_settings, use_management=False) as client:
        rebound = client.get("/", headers={"Host": "attacker.example:8080"})
        ipv6 = client.get("/static/dashboard.css", headers={"Host": "[::1]:8080"})

    assert rebound.status_code == 421
    assert ipv6.status_code == 200


async def test_pages_carry_the_security_headers(vhost_settings: Settings) -> None:
    await apply(vhost_settings)

    with dashboard(vhost_settings, use_management=False, token=TOKEN) as client:
        log_in(client)
        page = client.get(f"/dead-letters/{QUEUE}/purge")

    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    cookie = page.request.headers.get("cookie", "")
    assert cookie.startswith("jobsys_dashboard=")


async def test_an_unknown_queue_is_a_404_that_lists_the_known_ones(
    vhost_settings: Settings,
) -> None:
    with dashboard(vhost_settings, use_management=False) as client:
        page = client.get("/dead-letters/%3Cscript%3E")

    assert page.status_code == 404
    assert "&lt;script&gt; is not a work queue" in page.text
    assert "/dead-letters/work" in page.text


async def test_a_broker_that_goes_away_mid_session_is_a_message_and_the_page_recovers(
    vhost_settings: Settings, fault_proxy: FaultProxy
) -> None:
    await apply(vhost_settings)
    through = vhost_settings.with_overrides(
        url=fault_proxy.url(vhost=quote(vhost_settings.vhost, safe=""))
    )

    with dashboard(through, use_management=False, refresh_s=1.0) as client:
        before = client.get("/")
        fault_proxy.set_mode("reset")
        await asyncio.sleep(1.1)  # past the refresh interval: the next page reads the broker
        reset = client.get("/")
        fault_proxy.set_mode("blackhole")
        await asyncio.sleep(1.1)
        silent = client.get("/", headers={"HX-Request": "true"})
        fault_proxy.set_mode("pass")
        await asyncio.sleep(1.1)
        after = client.get("/")

    assert before.status_code == 200
    assert reset.status_code == 503 and "Cannot read the broker" in reset.text
    assert "Traceback" not in reset.text and "guest:guest" not in reset.text
    assert silent.status_code == 200 and "Cannot read the broker" in silent.text
    assert after.status_code == 200 and 'data-queue="work"' in after.text
