"""The dashboard's pure rules: binding and tokens, CSRF tokens, the login throttle, escaping,
joining connections with their pools, and the queue gauges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobsys.dashboard import security
from jobsys.dashboard.config import DashboardConfig, check_token, is_loopback, parse_bind
from jobsys.dashboard.metrics import exposition
from jobsys.dashboard.render import age, environment, shown
from jobsys.dashboard.security import Action, CsrfTokens, Guard, host_name, same_token
from jobsys.dashboard.source import StatusSnapshot
from jobsys.errors import ConfigError
from jobsys.ops.status import DelayLevelStatus, QueueCounts, QueueStatus, Rates, StatusReport
from jobsys.ops.workers import connections_of

TOKEN = "a-good-token-0123456789"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:1", ("localhost", 1)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_a_bind_address_is_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize(
    "text",
    ["8080", ":8080", "host:", "host:0", "host:65536", "host:\uff18\uff10", "a b:80", "h\n:80"],
)
def test_a_bad_bind_address_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--bind"):
        parse_bind(text)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_only_loopback_names_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_binding_beyond_loopback_needs_a_token() -> None:
    with pytest.raises(ConfigError, match="give a token"):
        DashboardConfig(host="0.0.0.0")
    assert DashboardConfig(host="0.0.0.0", token=TOKEN).writes_enabled
    assert not DashboardConfig().writes_enabled


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("", "empty"),
        ("short", "16 to 512"),
        ("x" * 513, "16 to 512"),
        ("has a space in it!!", "printable ASCII"),
        ("tab\there-0123456789", "printable ASCII"),
        ("nul\x00-0123456789abc", "printable ASCII"),
        ("ünïcode-0123456789", "printable ASCII"),
        ("bidi\u202e-0123456789abc", "printable ASCII"),
    ],
)
def test_an_odd_token_is_refused_without_being_quoted(token: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as caught:
        check_token(token)
    assert not token or token not in str(caught.value)


@given(st.text(max_size=40))
def test_token_comparison_takes_any_text_and_accepts_only_the_token(given_text: str) -> None:
    assert same_token(given_text, TOKEN) is (given_text == TOKEN)


def test_a_csrf_token_is_good_once_for_its_session_and_action_only() -> None:
    tokens = CsrfTokens()
    purge = Action("purge", "work")
    issued = tokens.issue("s1", purge)
    other = tokens.issue("s1", purge)

    assert not tokens.spend(issued, "s2", purge)  # another session: refused, and spent
    assert not tokens.spend(issued, "s1", purge)
    assert not tokens.spend(other, "s1", Action("purge", "other-queue"))
    assert not tokens.spend(None, "s1", purge) and not tokens.spend("forged", "s1", purge)
    fresh = tokens.issue("s1", purge)
    assert tokens.spend(fresh, "s1", purge)
    assert not tokens.spend(fresh, "s1", purge)  # a replayed form


def test_an_expired_csrf_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = CsrfTokens()
    action = Action("replay", "work", "id=1")
    issued = tokens.issue("s", action)
    now = security.time.monotonic()
    monkeypatch.setattr(security.time, "monotonic", lambda: now + security.CSRF_TTL_S + 1)
    assert not tokens.spend(issued, "s", action)


def test_wrong_tokens_throttle_every_login_for_a_while() -> None:
    guard = Guard(TOKEN)
    for _ in range(10):
        assert not guard.check_token("wrong-token-0123456789")
    assert guard.throttled()
    assert not guard.check_token(TOKEN)  # even the right one waits


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("127.0.0.1:8080", "127.0.0.1"),
        ("[::1]:8080", "::1"),
        ("localhost", "localhost"),
        ("[::1", ""),
        ("evil.example:80", "evil.example"),
    ],
)
def test_the_host_name_of_a_host_header(header: str, host: str) -> None:
    assert host_name(header) == host


def test_shown_values_have_no_control_or_bidi_characters_and_are_cut() -> None:
    assert shown("a\x1b[2J\nb\u202ec\u2066") == "a\\x1b[2J\\nb\\u202ec\\u2066"
    assert shown(None) == "-" and shown(b"\xff") == "\\xff (bytes, not UTF-8)"
    assert shown("x" * 500, 10) == "x" * 10 + "... (500 characters; cut)"
    assert age(100.0, now=3825.0) == "1h 02m" and age(None) == "-"


@given(st.text(max_size=60))
def test_no_text_becomes_markup_in_a_template(text: str) -> None:
    html = environment().from_string("<td>{{ v|shown }}</td>").render(v=text)
    inner = html[4:-5]
    assert "<" not in inner and ">" not in inner
    assert not any(ch in inner for ch in "\x00\x1b\n\r\u202e\u2067")


def test_connections_are_joined_with_their_pools_workers_first() -> None:
    rows = [
        {"name": "c1", "client_properties": {"connection_name": "jobsys"}, "user": "guest"},
        {
            "name": "c2",
            "client_properties": {"connection_name": "jobsys worker h pid 7"},
            "peer_host": "10.0.0.5",
            "peer_port": 4000,
            "connected_at": 1_700_000_000_000,
        },
        {"name": None},
    ]
    consumers = [
        {
            "channel_details": {"connection_name": "c2", "name": "c2 (1)"},
            "queue": {"name": "work"},
            "prefetch_count": 10,
            "ack_required": True,
        },
        {
            "channel_details": {"connection_name": "c2", "name": "c2 (2)"},
            "queue": {"name": "other"},
            "prefetch_count": 1,
            "ack_required": False,
        },
        {"channel_details": "garbage", "queue": {"name": "x"}},
    ]

    found = connections_of(rows, consumers)

    assert [c.name for c in found] == ["c2", "c1"]
    assert found[0].peer == "10.0.0.5:4000"
    assert [(p.queue, p.prefetch, p.manual_ack) for p in found[0].pools] == [
        ("work", 10, True),
        ("other", 1, False),
    ]
    assert not found[1].consumes


def test_the_queue_gauges_leave_out_what_is_unknown() -> None:
    report = StatusReport(
        queues=[
            QueueStatus(
                "work",
                QueueCounts(7, 2, 1, Rates(1.5, 1.0, 1.0), head_published_s=1000),
                "work.dead",
                QueueCounts(3, 0, 0),
            ),
            QueueStatus("quiet", QueueCounts(0, None, 0), "quiet.dead", QueueCounts(0, None, 0)),
        ],
        delay_levels=[DelayLevelStatus("ns.wait.00", 1.0, 4)],
        source="amqp",
    )

    text = exposition(StatusSnapshot(report, 1060.0)).decode()
    down = exposition(None).decode()

    assert 'jobsys_queue_ready{queue="work"} 7.0' in text
    assert 'jobsys_queue_unacked{queue="work"} 2.0' in text
    assert 'jobsys_queue_unacked{queue="quiet"}' not in text
    assert 'jobsys_dead_letter_jobs{queue="work"} 3.0' in text
    assert 'jobsys_delay_level_jobs{level="ns.wait.00"} 4.0' in text
    assert 'jobsys_queue_oldest_job_age_seconds{queue="work"}' in text
    assert "jobsys_broker_up 1.0" in text
    assert "jobsys_broker_up 0.0" in down and "jobsys_queue_ready" not in down


def test_a_hostile_connection_name_on_the_workers_page_is_text() -> None:
    from jobsys.dashboard.source import Connections

    found = connections_of(
        [
            {
                "name": "c<1>",
                "client_properties": {
                    "connection_name": "<script>x()</script>\u202e",
                    "product": "\x1b]0;title\x07",
                },
            }
        ],
        [
            {
                "channel_details": {"connection_name": "c<1>", "name": "ch"},
                "queue": {"name": "<img src=x>"},
                "prefetch_count": 1,
                "ack_required": True,
            }
        ],
    )
    html = (
        environment()
        .get_template("_workers.html")
        .render(
            found=Connections(found, "", 0.0),
            error=None,
            queues=set(),
            refresh_s=5.0,
            request_path="/workers",
        )
    )

    assert "<script>" not in html and "<img" not in html
    assert "\u202e" not in html and "\x1b" not in html
    assert "&lt;script&gt;x()&lt;/script&gt;\\u202e" in html
    assert "(not in the topology)" in html


def test_a_queue_or_level_on_a_node_that_is_down_shows_as_such_not_as_missing() -> None:
    unknown = QueueCounts(None, None, None, node_down=True)
    report = StatusReport(
        queues=[QueueStatus("work", unknown, "work.dead", unknown)],
        delay_levels=[DelayLevelStatus("ns.wait.00", 1.0, None, node_down=True)],
        source="amqp",
        legacy_levels=[DelayLevelStatus("jobsys.delay.03", 8.0, None, node_down=True)],
    )
    context = {
        "snapshot": StatusSnapshot(report, 1060.0),
        "error": None,
        "refresh_s": 5.0,
        "request_path": "/",
    }
    queues = environment().get_template("_queues.html").render(**context)
    levels = environment().get_template("_delays.html").render(**context)

    assert "(node down)" in queues and "(missing)" not in queues
    assert "down or still starting" in queues and "declares them" not in queues
    assert levels.count("node down") == 2 and "missing" not in levels
