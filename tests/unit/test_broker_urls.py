"""Several broker URLs in one setting (pure: nothing connects): how the list is written and
split, what is refused (an empty entry, a mix of amqp and amqps, different vhosts, a node named
twice, control characters, reserved characters in a password) and that no password of any
entry is ever shown; and the failover policy: which failures move on to the next node, how the
backoff grows per round over the nodes, the error when none answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobsys.broker.diagnose import scrub as _scrub
from jobsys.broker.reconnect import (
    can_heal,
    none_reachable,
    reconnect_delay,
    round_of,
    shown_node,
)
from jobsys.errors import (
    AccessRefused,
    BrokerError,
    ConfigError,
    ConnectionFailed,
    HostNotFound,
    TLSHandshakeFailed,
)
from jobsys.settings import Settings, mask_url, split_urls, url_secrets

A = "amqp://app:s3cret-a@node-a:5672/v"
B = "amqp://app:s3cret-b@node-b:5672/v"
C = "amqp://app:s3cret-c@node-c:5673/v"


def test_a_single_url_is_a_list_of_one_and_reads_as_before() -> None:
    settings = Settings(url=A)
    assert settings.urls == (A,)
    assert settings.masked_url == "amqp://app:***@node-a:5672/v"
    assert settings.vhost == "v"


def test_comma_separated_urls_name_one_node_each_with_spaces_around_commas_allowed() -> None:
    settings = Settings(url=f"{A},{B} , {C}")
    assert settings.urls == (A, B, C)
    assert settings.vhost == "v"
    assert settings.masked_url == (
        "amqp://app:***@node-a:5672/v,amqp://app:***@node-b:5672/v,amqp://app:***@node-c:5673/v"
    )
    assert settings.for_node(B).url == B
    with pytest.raises(ConfigError):
        settings.for_node("amqp://app:x@elsewhere/v")


def test_a_comma_inside_a_password_stays_in_its_url() -> None:
    url = "amqp://app:pa,ss,word@node-a/v"
    assert split_urls(f"{url},{B}") == [url, B]
    assert Settings(url=url).urls == (url,)
    assert "pa,ss,word" not in Settings(url=f"{url},{B}").masked_url


@pytest.mark.parametrize(
    "text",
    [f"{A},,{B}", f",{A}", f"{A},", f"{A},{B},", f"{A}, ,{B}", ""],
)
def test_an_empty_entry_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="empty") as caught:
        Settings(url=text)
    assert "s3cret" not in str(caught.value)


def test_a_mix_of_amqp_and_amqps_is_refused_tls_never_falls_back_to_plain_text() -> None:
    with pytest.raises(ConfigError, match="mix amqp:// and amqps://") as caught:
        Settings(url=f"amqps://app:s3cret-a@node-a/v,{B}")
    assert "s3cret" not in str(caught.value)


def test_urls_naming_different_vhosts_are_refused() -> None:
    with pytest.raises(ConfigError, match="different vhosts"):
        Settings(url=f"{A},amqp://app:s3cret-b@node-b/other")


def test_the_default_vhost_written_two_ways_is_one_vhost() -> None:
    assert Settings(url="amqp://g:g@a,amqp://g:g@b/").vhost == "/"


@pytest.mark.parametrize(
    "twice",
    [
        f"{A},{A}",
        f"{A},amqp://other:s3cret-x@NODE-A:5672/v",
        "amqp://g:g@node-a/v,amqp://g:g@node-a:5672/v",
        "amqps://g:g@node-a/v,amqps://g:g@node-a:5671/v",
    ],
)
def test_a_node_named_twice_is_refused(twice: str) -> None:
    with pytest.raises(ConfigError, match="twice") as caught:
        Settings(url=twice)
    assert "s3cret" not in str(caught.value)


def test_the_same_host_on_two_ports_is_two_nodes() -> None:
    assert len(Settings(url="amqp://g:g@h:5672/,amqp://g:g@h:5673/").urls) == 2


@pytest.mark.parametrize("control", ["\n", "\r", "\t", "\x00", "\x1b", " ", "\x7f"])
def test_a_control_character_in_any_entry_is_refused_naming_the_entry(control: str) -> None:
    with pytest.raises(ConfigError, match="broker URL 2 of 2 holds a space or control") as caught:
        Settings(url=f"{A},amqp://app:s3cret{control}b@node-b/v")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("reserved", ["/", "?", "#", "[", "]"])
def test_an_unencoded_reserved_character_in_a_password_is_refused_without_showing_it(
    reserved: str,
) -> None:
    with pytest.raises(ConfigError, match="broker URL 2 of 2") as caught:
        Settings(url=f"{A},amqp://app:s3cret{reserved}b@node-b/v")
    assert "s3cret" not in str(caught.value)


def test_percent_encoded_reserved_characters_work_in_every_entry() -> None:
    encoded = "amqp://app:%23%2F%3F%40%5B%5D%2C@node-b/v"
    settings = Settings(url=f"{A},{encoded}")
    assert settings.urls[1] == encoded
    assert "%23" not in settings.masked_url


def test_no_verify_ssl_in_any_entry_needs_insecure() -> None:
    with pytest.raises(ConfigError, match="no_verify_ssl"):
        Settings(url="amqps://g:g@a/v,amqps://g:g@b/v?no_verify_ssl=1")


@given(st.lists(st.text(alphabet="abcXYZ019-_.~!$&'()+;=:,%", min_size=1), min_size=1, max_size=4))
def test_no_password_of_any_entry_shows_in_the_masked_list(passwords: list[str]) -> None:
    urls = [f"amqp://user:{p}@node{i}:5672/v" for i, p in enumerate(passwords)]
    text = ",".join(urls)
    masked = mask_url(text)
    secrets = url_secrets(text)
    for i, password in enumerate(passwords):
        assert f"user:{password}@" not in masked
        assert password in secrets or any(password in s for s in secrets)
        assert f"@node{i}:5672/v" in masked


def test_an_error_quoting_any_node_url_is_scrubbed() -> None:
    settings = Settings(url=f"{A},{B}")
    text = _scrub(f"failed: {B} and s3cret-a and s3cret-b", settings)
    assert "s3cret" not in text
    assert "node-b" in text


def test_a_node_is_shown_without_password_or_query() -> None:
    shown = shown_node("amqp://app:s3cret@node-b:5672/v?heartbeat=20&name=jobsys")
    assert shown == "amqp://app:***@node-b:5672/v"


# -- the failover policy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "one_node", "several_nodes"),
    [
        (ConnectionFailed("refused"), True, True),
        (HostNotFound("no such host"), False, True),
        (TLSHandshakeFailed("bad certificate"), False, True),
        (BrokerError("not an AMQP server"), False, True),
        (AccessRefused("wrong password"), False, False),
        (ConfigError("bad"), False, False),
    ],
)
def test_with_several_nodes_only_refused_credentials_stop_the_search(
    error: Exception, one_node: bool, several_nodes: bool
) -> None:
    assert can_heal(error, 1) is one_node
    assert can_heal(error, 3) is several_nodes


def test_the_backoff_grows_per_round_over_the_nodes_and_not_per_node() -> None:
    settings = Settings()
    pauses = [reconnect_delay(settings, round_of(n, 3)) for n in range(1, 10)]
    assert pauses == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    # One node: exactly the backoff it always had.
    single = [reconnect_delay(settings, round_of(n, 1)) for n in range(1, 9)]
    assert single == [reconnect_delay(settings, n) for n in range(1, 9)]


def test_when_no_node_answers_the_error_names_each_node_masked_and_says_nothing_was_sent() -> None:
    settings = Settings(url=f"{A},{B}", connect_deadline_s=3.0)
    reasons = {mask_url(A): "Connection refused", mask_url(B): "timed out"}
    error = none_reachable(settings, reasons)
    text = str(error)
    assert isinstance(error, ConnectionFailed)
    assert "any of the 2 broker nodes within 3s" in text
    assert "amqp://app:***@node-a:5672/v: Connection refused" in text
    assert "nothing was sent" in text
    assert "s3cret" not in text
