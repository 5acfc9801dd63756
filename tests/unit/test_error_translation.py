"""aio-pika/aiormq errors become jobsys errors grouped by what the caller can do, and the
message never carries the broker password (pure: the exceptions are built, no broker)."""

from __future__ import annotations

import ssl
from typing import Any

import aiormq.exceptions as amqp
import pytest

from jobsys.broker.connection import START_HINT, translate_error
from jobsys.errors import (
    AccessRefused,
    BrokerError,
    ConnectionFailed,
    JobsysError,
    TLSHandshakeFailed,
    UnroutableError,
)
from jobsys.settings import Settings

SETTINGS = Settings(url="amqp://user:s3cret@broker.example:5672/prod")
WHERE = "amqp://user:***@broker.example:5672/prod"


def test_a_probable_authentication_error_is_access_refused() -> None:
    error = translate_error(amqp.ProbableAuthenticationError("ACCESS_REFUSED"), SETTINGS)

    assert type(error) is AccessRefused
    assert str(error) == (f"the broker at {WHERE} refused the login: wrong username or password")


def test_an_authentication_mechanism_mismatch_is_access_refused() -> None:
    error = translate_error(amqp.AuthenticationError(["AMQPLAIN"], ["PLAIN"]), SETTINGS)

    assert type(error) is AccessRefused


def test_connection_close_during_open_is_a_refused_vhost() -> None:
    error = translate_error(
        amqp.InvalidFrameError("<Connection.Close object at 0x7f...>"), SETTINGS
    )

    assert type(error) is AccessRefused
    assert str(error) == (
        f"the broker at {WHERE} refused virtual host 'prod': it does not exist or the user "
        "has no permission on it"
    )


def test_another_invalid_frame_is_a_plain_broker_error() -> None:
    error = translate_error(amqp.InvalidFrameError("No frame length"), SETTINGS)

    assert type(error) is BrokerError
    assert str(error) == f"the broker at {WHERE} answered: No frame length"


def test_a_refused_operation_on_a_channel_is_access_refused_with_the_brokers_reason() -> None:
    reason = "ACCESS_REFUSED - access to exchange 'jobs' in vhost 'prod' refused for user 'user'"

    error = translate_error(amqp.ChannelAccessRefused(403, reason), SETTINGS)

    assert type(error) is AccessRefused
    assert str(error) == f"the broker at {WHERE} refused an operation: {reason}"


def test_a_connection_not_allowed_is_access_refused() -> None:
    error = translate_error(amqp.ConnectionNotAllowed(530, "NOT_ALLOWED - vhost"), SETTINGS)

    assert type(error) is AccessRefused


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (amqp.AMQPConnectionError("Connection refused"), "Connection refused"),
        (ConnectionRefusedError(111, "Connect call failed"), "Connect call failed"),
        (OSError(113, "No route to host"), "No route to host"),
        (
            amqp.ConnectionClosed(320, "CONNECTION_FORCED - shutdown"),
            "CONNECTION_FORCED - shutdown",
        ),
    ],
)
def test_an_unreachable_broker_is_connection_failed_with_a_hint_to_start_one(
    exc: BaseException, reason: str
) -> None:
    error = translate_error(exc, SETTINGS)

    assert type(error) is ConnectionFailed
    assert str(error) == f"cannot reach the broker at {WHERE} ({reason}); {START_HINT}"


def test_a_timeout_is_connection_failed_that_says_it_timed_out() -> None:
    # TimeoutError (asyncio's too, from 3.11) is an OSError: it must not read "cannot reach".
    error = translate_error(TimeoutError(), SETTINGS)

    assert type(error) is ConnectionFailed
    assert str(error) == f"timed out talking to the broker at {WHERE}; {START_HINT}"


def test_a_tls_failure_is_connection_failed_and_says_tls() -> None:
    error = translate_error(ssl.SSLError(1, "CERTIFICATE_VERIFY_FAILED"), SETTINGS)

    assert type(error) is TLSHandshakeFailed  # a ConnectionFailed that is not retried
    assert str(error).startswith(f"TLS handshake with {WHERE} failed: ")


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_code, error.verify_message = code, message
    return error


def _wrapped(error: BaseException) -> amqp.AMQPConnectionError:
    # As aiormq raises it: the TLS error as an argument's text and as the cause.
    wrapper = amqp.AMQPConnectionError(1, str(error))
    wrapper.__cause__ = error
    return wrapper


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            _verify_error(18, "self-signed certificate"),
            "the broker's certificate is not trusted (self-signed certificate): the system's "
            "trust store does not know its CA; pass the CA that signed it with --ca-file",
        ),
        (
            _verify_error(62, "Hostname mismatch, certificate is not valid for 'x'."),
            "the broker's certificate is not valid for 'broker.example' (Hostname mismatch, "
            "certificate is not valid for 'x'); connect with a host name the certificate names",
        ),
        (
            _verify_error(10, "certificate has expired"),
            "the broker's certificate has expired (certificate has expired); renew it",
        ),
    ],
    ids=["untrusted", "host-mismatch", "expired"],
)
def test_a_tls_failure_wrapped_by_aiormq_says_what_is_wrong_and_what_to_do(
    error: BaseException, expected: str
) -> None:
    translated = translate_error(_wrapped(error), SETTINGS)

    assert type(translated) is TLSHandshakeFailed  # a ConnectionFailed that is not retried
    assert str(translated).startswith(f"TLS handshake with {WHERE} failed: {expected}")
    assert START_HINT not in str(translated)


def test_a_tls_hello_answered_by_a_plain_port_says_the_port_does_not_speak_tls() -> None:
    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    error.reason = "WRONG_VERSION_NUMBER"  # type: ignore[misc]

    wrapper = amqp.AMQPConnectionError(1, str(error))
    wrapper.__context__ = error  # raised while handling it, without "from"

    translated = translate_error(wrapper, SETTINGS)

    assert str(translated) == (
        f"TLS handshake with {WHERE} failed: port 5672 does not speak TLS "
        "(WRONG_VERSION_NUMBER); use the broker's TLS port (usually 5671) with amqps://, or "
        "amqp:// for a plain port"
    )


def test_another_amqp_error_is_a_broker_error_with_the_brokers_reason() -> None:
    reason = "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl'"

    error = translate_error(amqp.ChannelPreconditionFailed(406, reason), SETTINGS)

    assert type(error) is BrokerError
    assert str(error) == f"the broker at {WHERE} answered: {reason}"


def test_anything_else_is_an_unexpected_broker_error_naming_its_type() -> None:
    error = translate_error(RuntimeError("boom"), SETTINGS)

    assert type(error) is BrokerError
    assert str(error) == f"unexpected error talking to {WHERE}: RuntimeError: boom"


def test_a_jobsys_error_passes_through_unchanged() -> None:
    original = UnroutableError("no queue", job_id="job-1")

    assert translate_error(original, SETTINGS) is original


@pytest.mark.parametrize(
    "make",
    [
        amqp.ProbableAuthenticationError,
        amqp.InvalidFrameError,
        lambda text: amqp.ChannelAccessRefused(403, text),
        amqp.ConnectionNotAllowed,
        amqp.AMQPConnectionError,
        OSError,
        ConnectionRefusedError,
        TimeoutError,
        lambda text: amqp.ChannelNotFoundEntity(404, text),
        amqp.ChannelPreconditionFailed,
        ValueError,
        RuntimeError,
    ],
)
def test_the_password_never_appears_in_a_translated_error(make: Any) -> None:
    # Every exception quotes the URL with its password, as a careless library might.
    exc = make(f"failed for {SETTINGS.url} (Connection.Close)")

    error = translate_error(exc, SETTINGS)

    assert isinstance(error, JobsysError)
    assert "s3cret" not in str(error)
    assert "s3cret" not in repr(error)
    assert "broker.example" in str(error)


def test_a_command_the_broker_closes_the_connection_over_is_a_broker_error() -> None:
    exc = amqp.ConnectionNotImplemented(
        540,
        "NOT_IMPLEMENTED - queue.delete operations with if-empty flag set are not supported by "
        "quorum queues",
    )

    error = translate_error(exc, SETTINGS)

    assert type(error) is BrokerError
    assert "refused a command and closed the connection" in str(error)
    assert "not supported by quorum queues" in str(error)
    assert "cannot reach" not in str(error)
