"""A password in a broker or management URL never shows and never crashes a command, however
it is written: with reserved characters unencoded (which a URL parser reads as the end of the
password), percent-encoded, or with characters that are not text at all (pure, no broker)."""

from __future__ import annotations

from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobsys.broker.connection import translate_error
from jobsys.broker.management import management_endpoint
from jobsys.errors import ConfigError
from jobsys.settings import Settings, mask_url

GOOD_URL = "amqp://guest:guest@127.0.0.1:5672/v"

# Each password holds a character that ends the user-info part for urlsplit (or breaks it).
RESERVED_PASSWORDS = ["se#cret", "s3/cret", "hunter2?x", "123/abc", "a[b", "a]b", "x#y/z?w[v]"]


@pytest.mark.parametrize("password", RESERVED_PASSWORDS)
def test_mask_url_hides_a_password_that_urlsplit_reads_as_something_else(password: str) -> None:
    url = f"amqp://guest:{password}@127.0.0.1:5672/v"

    assert mask_url(url) == "amqp://guest:***@127.0.0.1:5672/v"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:p@ss@host/v", "amqp://guest:***@host/v"),
        ("amqp://guest:%23se%2Fcret%40@host/v", "amqp://guest:***@host/v"),
        ("amqp://guest:pa:ss@host/v", "amqp://guest:***@host/v"),
        ("amqp://guest:pa\nss@host/v", "amqp://guest:***@host/v"),
        ("amqp://:secret@host/", "amqp://:***@host/"),
        # Without '//' every reading of the text before the '@' is possible: hide all of it.
        ("amqp:guest:secret@host/", "amqp:***@host/"),
        ("guest:secret@host", "guest:***@host"),
        # No '@' at all, but a "port" that is no number: a password missing its '@host'.
        ("amqp://guest:se#cret", "amqp://guest:***"),
        ("amqp://host:5672/v", "amqp://host:5672/v"),
        ("amqp://[::1]/v", "amqp://[::1]/v"),
    ],
)
def test_mask_url_hides_every_form_of_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("password", "hint"),
    [
        ("se#cret", "'#' as %23"),
        ("s3/cret", "'/' as %2F"),
        ("hunter2?x", "'?' as %3F"),
        ("123/abc", "'/' as %2F"),
        ("a[b", "'[' as %5B"),
        ("a]b", "']' as %5D"),
    ],
)
def test_a_broker_url_with_reserved_characters_in_its_password_is_refused_with_a_hint(
    password: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(url=f"amqp://guest:{password}@127.0.0.1:5672/v")

    message = str(caught.value)
    assert password not in message
    assert "percent-encode" in message and hint in message
    assert message.endswith(": amqp://guest:***@127.0.0.1:5672/v")


def test_an_unencoded_at_sign_in_the_password_is_read_as_every_client_reads_it() -> None:
    # The last '@' ends the user info for urlsplit and for aiormq's URL parser alike.
    settings = Settings(url="amqp://guest:p@ss@127.0.0.1:5672/v")

    assert settings.masked_url == "amqp://guest:***@127.0.0.1:5672/v"
    assert settings.vhost == "v"


def test_an_at_sign_in_the_vhost_must_be_encoded_because_it_cannot_be_told_from_a_password() -> (
    None
):
    with pytest.raises(ConfigError, match="%40"):
        Settings(url="amqp://127.0.0.1:5672/team@x")

    assert Settings(url="amqp://127.0.0.1:5672/team%40x").vhost == "team@x"


@pytest.mark.parametrize("character", ["\n", "\r", "\t", " ", "\x00", "\x1b", "\x7f"])
def test_a_url_with_a_control_character_or_space_is_refused_without_echoing_it(
    character: str,
) -> None:
    # urlsplit silently drops some of these (a different password than the one written).
    with pytest.raises(ConfigError) as caught:
        Settings(url=f"amqp://guest:pa{character}ss@127.0.0.1:5672/v")

    message = str(caught.value)
    assert f"pa{character}ss" not in message
    assert character == " " or character not in message
    assert "percent-encode" in message


def test_a_port_that_is_not_a_number_never_echoes_what_was_there() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(url="amqp://guest:secret/v")

    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("password", [*RESERVED_PASSWORDS, "p@ss"])
def test_a_management_url_with_reserved_characters_in_its_password_is_a_config_error(
    password: str,
) -> None:
    url = f"http://admin:{password}@127.0.0.1:15672"
    if password == "p@ss":
        endpoint = management_endpoint(Settings(management_url=url))
        assert endpoint.password == "p@ss"
        assert endpoint.masked == "http://127.0.0.1:15672"
        return

    with pytest.raises(ConfigError) as caught:
        Settings(management_url=url)

    message = str(caught.value)
    assert message.startswith("management URL ")
    assert password not in message
    assert "percent-encode" in message
    assert message.endswith(": http://admin:***@127.0.0.1:15672")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://admin:s3cret@host/", "management URL must start with http:// or https://"),
        ("http://admin:s3cret@host:99999/", "management URL is not valid (Port out of range"),
        ("http://admin:s3cret@/", "management URL has no host"),
    ],
)
def test_a_management_url_that_cannot_work_is_refused_without_its_password(
    url: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(management_url=url)

    assert str(caught.value).startswith(message)
    assert "s3cret" not in str(caught.value)


def test_a_percent_encoded_management_password_reaches_the_api_decoded() -> None:
    password = "a#b/c?d@e[f]g:h%i"
    url = f"http://admin:{quote(password, safe='')}@127.0.0.1:15672/prefix/"

    endpoint = management_endpoint(Settings(management_url=url))

    assert (endpoint.username, endpoint.password) == ("admin", password)
    assert endpoint.base_url == "http://127.0.0.1:15672/prefix"
    assert password not in repr(endpoint) and quote(password, safe="") not in repr(endpoint)


def test_a_percent_encoded_broker_password_is_used_decoded_for_the_management_api() -> None:
    password = "a#b/c?d@e[f]g:h%i"
    settings = Settings(url=f"amqp://guest:{quote(password, safe='')}@127.0.0.1:5672/v")

    endpoint = management_endpoint(settings)

    assert endpoint.password == password
    assert endpoint.base_url == "http://127.0.0.1:15672"


# -- every masking path, for any password ---------------------------------------------------------

#: Reserved and control characters come up often; any other code point (lone surrogates too)
#: can come up as well.
_PASSWORD_CHARS = st.one_of(
    st.sampled_from(list("#/?@[]:%!$&'()*+,;= \\\t\r\n\x00\x1b\x7f\x85")),
    st.characters(),
    st.characters(categories=["Cs"]),
)
#: Upper-case letters that never occur in the fixed parts of the URLs below, so finding this
#: marker anywhere in an output can only mean the password leaked.
MARKER = "QXZJVK"


def _masking_outputs(url: str, management_url: str) -> list[str]:
    """Everything jobsys shows about ``url`` and ``management_url``, by every path."""
    shown = [mask_url(url), mask_url(management_url)]
    for kwargs in ({"url": url}, {"management_url": management_url}):
        try:
            settings = Settings(**kwargs)  # type: ignore[arg-type]
        except ConfigError as exc:
            shown.append(str(exc))
            continue
        endpoint = management_endpoint(settings)
        # A library that quotes the URLs (or the password alone) in its exception.
        secret = settings.url if "url" in kwargs else settings.management_url
        quoted = f"failed for {secret} ({unquote(secret or '')}) (Connection.Close)"
        shown += [settings.masked_url, repr(settings), endpoint.masked, repr(endpoint)]
        shown.append(str(translate_error(OSError(quoted), settings)))
        shown.append(str(translate_error(RuntimeError(quoted), settings)))
    return shown


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.text(_PASSWORD_CHARS, max_size=12),
    after=st.text(_PASSWORD_CHARS, max_size=12),
    encoded=st.booleans(),
)
def test_no_masking_path_ever_shows_a_password_of_any_characters(
    before: str, after: str, encoded: bool
) -> None:
    password = before + MARKER + after
    written = quote(password, safe="", errors="surrogatepass") if encoded else password
    url = f"amqp://guest:{written}@127.0.0.1:5672/v"
    management_url = f"http://admin:{written}@127.0.0.1:15672"

    for shown in _masking_outputs(url, management_url):
        assert MARKER not in shown
        assert password not in shown
        assert written not in shown


@settings(max_examples=300, deadline=None)
@given(password=st.text(_PASSWORD_CHARS, min_size=1, max_size=24))
def test_mask_url_output_does_not_depend_on_the_password_at_all(password: str) -> None:
    # The strongest form of "never shows it": two URLs that differ only in the password mask
    # to the same text, so the output carries nothing of it.
    for template in ("amqp://guest:{}@127.0.0.1:5672/v?heartbeat=5", "http://admin:{}@h:15672/"):
        for written in (password, quote(password, safe="", errors="surrogatepass")):
            assert mask_url(template.format(written)) == mask_url(template.format("x"))


def test_a_good_url_still_works() -> None:
    assert Settings(url=GOOD_URL).masked_url == "amqp://guest:***@127.0.0.1:5672/v"
