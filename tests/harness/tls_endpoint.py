"""A small TLS endpoint for TLS tests: it terminates TLS with a certificate the test made and
relays the plain bytes to a broker, so a client that trusts the certificate talks AMQP over TLS
to the shared broker, and one that does not fails its handshake as it would against a real one.

Certificates are made with the ``openssl`` command (``make_certificate``); the endpoint runs
its own event loop in its own thread, like ``fault_proxy``, so sync tests and in-process CLI
runs can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

CHUNK = 65536


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate and its key (the certificate is also its own CA)."""

    cert: Path
    key: Path


def make_certificate(directory: Path, name: str, *names: str) -> Certificate:
    """A self-signed certificate valid for ``names`` (``DNS:localhost``, ``IP:127.0.0.1``)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName={','.join(names)}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return Certificate(cert, key)


class TlsEndpoint:
    """Listen with TLS on ``127.0.0.1:<ephemeral>``; relay to ``target_host:target_port``."""

    def __init__(
        self, certificate: Certificate, target_port: int, target_host: str = "127.0.0.1"
    ) -> None:
        self.certificate = certificate
        self.target_host = target_host
        self.target_port = target_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._port: int | None = None

    def start(self) -> TlsEndpoint:
        """Start listening; returns once the port is bound."""
        ready: Future[int] = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        self._port = ready.result(timeout=10)
        return self

    def stop(self) -> None:
        """Stop listening and end the thread (open relays are dropped)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = self._loop = None

    def __enter__(self) -> TlsEndpoint:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TLS port."""
        if self._port is None:
            raise RuntimeError("the endpoint is not started")
        return self._port

    def _run(self, ready: Future[int]) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve(ready))
        finally:
            self._loop.close()

    async def _serve(self, ready: Future[int]) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certificate.cert, self.certificate.key)
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0, ssl=context)
        ready.set_result(server.sockets[0].getsockname()[1])
        async with server:
            await self._stop.wait()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
    with contextlib.suppress(OSError, ssl.SSLError):
        sink.close()
