"""A TCP proxy for fault tests: pass, delay, blackhole, reset, or cut a stream after N bytes.

The proxy runs its own event loop in its own thread, so sync tests can use it and it keeps
forwarding while an async test's loop is busy. Every control method is thread-safe and takes
effect before it returns.

Modes:

- ``pass``: forward both ways (after ``set_latency(ms)``, each chunk is held back ``ms``).
- ``blackhole``: keep every connection open, read and discard what arrives, forward nothing:
  a silent network partition. Bytes dropped here are gone; switching back to ``pass`` does not
  heal a stream that lost bytes, so clients are expected to reconnect.
- ``reset``: abort every current connection with a TCP RST, and reset new ones on accept.

``cut_after(n)`` forwards ``n`` more client-to-server bytes (over all connections), then
resets every connection and goes back to plain forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar

Mode = Literal["pass", "blackhole", "reset"]
MODES: tuple[Mode, ...] = ("pass", "blackhole", "reset")
CHUNK = 65536
T = TypeVar("T")


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's side and the upstream side."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False


class FaultProxy:
    """Listen on ``127.0.0.1:<ephemeral>`` and forward to ``target_host:target_port``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.mode: Mode = "pass"
        self.latency_s = 0.0
        self.connection_count = 0  # connections accepted since start
        self.bytes_upstream = 0  # client -> server bytes forwarded
        self.bytes_downstream = 0  # server -> client bytes forwarded
        self._cut_budget: int | None = None
        self._passing = asyncio.Event()  # set while the mode is not blackhole
        self._passing.set()
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Start listening; returns once the port is bound."""
        if self._thread is not None:
            return self
        ready: Future[int] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"fault-proxy->{self.target_port}", daemon=True
        )
        self._thread.start()
        self._port = ready.result(timeout=10)
        return self

    def stop(self) -> None:
        """Close every connection and the listener, and end the proxy's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            self._call(self._shutdown)
        thread.join(timeout=10)
        self._thread = self._loop = None

    def __enter__(self) -> FaultProxy:
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
        """The port the proxy listens on."""
        if self._port is None:
            raise RuntimeError("the proxy is not started")
        return self._port

    def url(self, user: str = "guest", password: str = "guest", vhost: str = "") -> str:
        """An AMQP URL that goes through the proxy."""
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/{vhost}"

    @property
    def active_connections(self) -> int:
        """Connections open right now."""
        return len(self._links)

    # -- faults ----------------------------------------------------------------------------

    def set_mode(self, mode: Mode) -> None:
        """Switch to ``pass``, ``blackhole`` or ``reset`` (which resets open connections now)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

        async def switch() -> None:
            self.mode = mode
            if mode == "blackhole":
                self._passing.clear()
            else:
                self._passing.set()
            if mode == "reset":
                self._reset_all()

        self._call(switch)

    def set_latency(self, ms: float) -> None:
        """Hold back every chunk, both ways, for ``ms`` milliseconds (0 turns it off)."""
        if ms < 0:
            raise ValueError("latency must not be negative")
        self.latency_s = ms / 1000

    def cut_after(self, n_bytes: int) -> None:
        """Forward ``n_bytes`` more client-to-server bytes, then reset every connection."""
        if n_bytes < 0:
            raise ValueError("n_bytes must not be negative")

        async def arm() -> None:
            self._cut_budget = n_bytes
            if n_bytes == 0:
                self._cut_budget = None
                self._reset_all()

        self._call(arm)

    def reset_connections(self) -> None:
        """Reset every open connection once, without changing the mode."""

        async def reset() -> None:
            self._reset_all()

        self._call(reset)

    def wait_for_connections(self, count: int, timeout_s: float = 10.0) -> None:
        """Wait until at least ``count`` connections were accepted since start."""
        deadline = time.monotonic() + timeout_s
        while self.connection_count < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.connection_count} connections through the proxy, expected {count}"
                )
            time.sleep(0.02)

    # -- the event loop thread -------------------------------------------------------------

    def _run(self, ready: Future[int]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._accept, "127.0.0.1", 0)
            )
            ready.set_result(self._server.sockets[0].getsockname()[1])
            loop.run_forever()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        loop = self._loop
        if loop is None or not loop.is_running():
            raise RuntimeError("the proxy is not running")
        return asyncio.run_coroutine_threadsafe(make(), loop).result(timeout=10)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [task for link in self._links for task in link.tasks]
        for link in list(self._links):
            self._close(link, reset=False)
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        asyncio.get_running_loop().call_soon(asyncio.get_running_loop().stop)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connection_count += 1
        link = _Link(client=writer)
        if self.mode == "reset":
            _abort(writer, reset=True)
            return
        self._links.add(link)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            self._close(link, reset=True)
            return
        if link.closed:  # reset while we were connecting
            _abort(up_writer, reset=True)
            return
        link.upstream = up_writer
        link.tasks.extend(
            [
                asyncio.create_task(self._pump(link, reader, up_writer, upstream=True)),
                asyncio.create_task(self._pump(link, up_reader, writer, upstream=False)),
            ]
        )

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        """Copy one direction; a delivery task behind a queue keeps latency from stacking."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(link, queue, writer, upstream=upstream))
        link.tasks.append(deliver)
        try:
            while not link.closed:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if self.mode == "blackhole":
                    continue
                if upstream and self._cut_budget is not None:
                    data = data[: self._cut_budget]
                    self._cut_budget -= len(data)
                if data:
                    queue.put_nowait((time.monotonic() + self.latency_s, data))
                if upstream and self._cut_budget == 0:
                    await queue.join()
                    self._cut_budget = None
                    self._reset_all()
                    return
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            queue.put_nowait(None)
        await deliver
        # A partition hides the peer's close too; pass it on only once the mode changes.
        await self._passing.wait()  # _close() cancels this task if the link is reset meanwhile
        # One side finished cleanly: pass the close on, like a TCP proxy does.
        self._close(link, reset=False)

    async def _deliver(
        self,
        link: _Link,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        while True:
            item = await queue.get()
            try:
                if item is None or link.closed:
                    return
                due, data = item
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if link.closed or self.mode == "blackhole":
                    continue
                writer.write(data)
                await writer.drain()
                if upstream:
                    self.bytes_upstream += len(data)
                else:
                    self.bytes_downstream += len(data)
            except (OSError, RuntimeError):
                return
            finally:
                queue.task_done()

    def _reset_all(self) -> None:
        for link in list(self._links):
            self._close(link, reset=True)

    def _close(self, link: _Link, *, reset: bool) -> None:
        if link.closed:
            return
        link.closed = True
        self._links.discard(link)
        for writer in (link.client, link.upstream):
            if writer is not None:
                _abort(writer, reset=reset)
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()


def _abort(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    """Close ``writer``; with ``reset`` the peer gets an RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if reset and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()
