"""Why a connection to the broker failed, in words: the TLS problem and what to do about it, a
host name that does not resolve, the reason an exception gives; and every password scrubbed
from whatever text a library quoted. Used by ``jobsys.broker.connection.translate_error``.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from jobsys.settings import Settings, mask_url, url_secrets

#: OpenSSL's verify codes for a certificate that names other hosts (X509_V_ERR_HOSTNAME_MISMATCH,
#: X509_V_ERR_IP_ADDRESS_MISMATCH).
_HOST_MISMATCH = frozenset({62, 64})
_CERTIFICATE_EXPIRED = 10
#: OpenSSL's reasons when the other side answered the TLS hello with something that is not TLS
#: (a plain AMQP port sends its protocol header, an HTTP port an HTTP reply).
_NOT_TLS = frozenset(
    {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"}
)


#: getaddrinfo's answers for a name that does not exist (EAI_NODATA is Linux's "no address"); a
#: name server that did not answer (EAI_AGAIN) may answer later, and is retried.
_NO_SUCH_NAME = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
)


def unknown_host(exc: BaseException) -> bool:
    """True when ``exc`` comes from a host name that does not resolve."""
    cause = _cause(exc, socket.gaierror)
    return cause is not None and cause.errno in _NO_SUCH_NAME


def tls_cause(exc: BaseException) -> ssl.SSLError | ssl.CertificateError | None:
    """The TLS error behind ``exc``: aiormq wraps it in ``AMQPConnectionError``, keeping it
    as the cause (or context, or an argument)."""
    found = _cause(exc, ssl.SSLError | ssl.CertificateError)
    assert found is None or isinstance(found, ssl.SSLError | ssl.CertificateError)
    return found


def _cause(exc: BaseException, kind: Any) -> Any:
    """The first exception of ``kind`` in ``exc``'s chain (cause, context, arguments)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
        pending += [arg for arg in current.args if isinstance(arg, BaseException)]
    return None


def tls_problem(error: ssl.SSLError | ssl.CertificateError, settings: Settings) -> str:
    """What went wrong in a TLS handshake, and what to do about it."""
    parts = urlsplit(settings.url)
    # The ssl module sets these attributes only on the errors it raises itself.
    reason = getattr(error, "reason", None)
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = getattr(error, "verify_message", None) or reason or "verify failed"
        code = getattr(error, "verify_code", None)
        if code in _HOST_MISMATCH:
            return _host_mismatch(parts.hostname, detail)
        if code == _CERTIFICATE_EXPIRED:
            return f"the broker's certificate has expired ({detail}); renew it on the broker"
        if settings.ca_file:
            where = f"the CA file {settings.ca_file} did not sign it"
        else:
            where = "the system's trust store does not know its CA"
        return (
            f"the broker's certificate is not trusted ({detail}): {where}; pass the CA that "
            "signed it with --ca-file (JOBSYS_CA_FILE)"
        )
    if isinstance(error, ssl.CertificateError) and not isinstance(error, ssl.SSLError):
        return _host_mismatch(parts.hostname, str(error))
    if reason in _NOT_TLS:
        return (
            f"port {parts.port or 5671} does not speak TLS ({reason}); use the broker's "
            "TLS port (usually 5671) with amqps://, or amqp:// for a plain port"
        )
    return str(error)


def _host_mismatch(host: str | None, detail: str) -> str:
    return (
        f"the broker's certificate is not valid for {host!r} ({detail.rstrip('.')}); connect "
        "with a host name the certificate names, or give the broker a certificate for this one"
    )


def scrub(text: str, settings: Settings) -> str:
    """``text`` with every password the settings hold masked, in case an exception quoted a
    URL or the password itself (as written in the URL, or percent-decoded)."""
    for url in (settings.url, *settings.urls, settings.management_url):
        if url:
            text = text.replace(url, mask_url(url))
    # Longest first: a shorter secret inside a longer one must not leave the rest showing.
    secrets = {*url_secrets(settings.url), *url_secrets(settings.management_url)}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def reason_of(exc: BaseException) -> str:
    """The text an exception gives: aiormq puts its reason in the first or second argument."""
    if exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    if len(exc.args) >= 2 and isinstance(exc.args[1], str):
        return exc.args[1]
    return str(exc) or type(exc).__name__
