"""Frames read off jobsys's own connections with two reads each instead of aiormq's three.

aiormq's ``FrameReceiver.get_frame`` reads a frame in three ``readexactly`` calls (its first
byte, six more, then the payload) into a ``BytesIO`` under a lock, copying the bytes read so far
three more times on the way. Reading a delivery's three frames (the method, the content header,
the body) from a stream took 43 us that way and takes 35 us here (bench/README.md).
``get_frame`` here reads the seven header bytes, then the payload with the frame-end byte, and
decodes the frame as pamqp does (``jobsys.broker.frame_decode``, faster for the frames of a
delivery and of a confirm), with aiormq's errors for every failure (a closed or reset
connection, a protocol header where a frame was due, an undecodable frame). Their texts are
aiormq's too, except the byte counts of a stream cut inside a frame's header, which count the
seven header bytes read at once ("Read 3 bytes but 7 bytes expected" where aiormq, reading one
byte then six, says "Read 2 bytes but 6 bytes expected").

aiormq creates its frame receiver inside ``Connection.connect`` from its module's
``FrameReceiver``, with nothing to pass another class through, so ``install`` puts this subclass
there; it reads this way only from a stream jobsys's transport factory opened and ``marked``
(``jobsys.broker.reconnect``): any other aiormq connection in the process keeps aiormq's own
reading. Checked against the aiormq versions pyproject.toml admits, and held to aiormq's own
receiver, frame for frame and error for error, by tests/unit/test_frames.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq.connection
import pamqp.frame
from aiormq.connection import FrameReceiver
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp.exceptions import PAMQPException

from jobsys.broker.frame_decode import decoded, with_unreadable_headers

#: The attribute that marks a stream opened by jobsys.
_MARK = "_jobsys_frames"
#: aiormq's own receiver, as imported before ``install`` replaced it in aiormq's module.
_AIORMQ_RECEIVER = FrameReceiver


def mark(reader: asyncio.StreamReader) -> asyncio.StreamReader:
    """Have ``reader``'s frames read by ``FrameReader`` (once ``install`` ran)."""
    setattr(reader, _MARK, True)
    return reader


class FrameReader(FrameReceiver):
    """aiormq's frame receiver, reading a marked stream's frames in two reads each."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self._ours = bool(getattr(reader, _MARK, False))

    async def get_frame(self) -> Any:
        """The next frame as aiormq's ``get_frame`` returns it (channel, frame and weight)."""
        if not self._ours:
            return await super().get_frame()
        reader = self.reader
        if reader.at_eof():
            del self.reader
            raise StopAsyncIteration
        # No lock around the two reads, unlike aiormq's (its cost was most of what this
        # saves): aiormq reads a connection's frames from one place at a time (the handshake,
        # then its reader task), and a StreamReader refuses a second waiter.
        try:
            head = await reader.readexactly(7)
            if not self.started and head.startswith(b"AMQP"):
                # The broker answered with its protocol header: it speaks another version.
                raise ProtocolSyntaxError("Unexpected AMQP protocol header")
            self.started = True
            data = head + await reader.readexactly(int.from_bytes(head[3:7], "big") + 1)
        except asyncio.IncompleteReadError as e:
            raise AMQPConnectionError(
                "Server connection unexpectedly closed. "
                f"Read {len(e.partial)} bytes but {e.expected} bytes expected",
            ) from e
        except ConnectionRefusedError as e:
            raise AMQPConnectionError(f"Server connection refused: {e!r}") from e
        except ConnectionResetError as e:
            raise AMQPConnectionError(f"Server connection reset: {e!r}") from e
        except ConnectionError as e:
            raise AMQPConnectionError(f"Server connection error: {e!r}") from e
        except OSError as e:
            raise AMQPConnectionError(f"Server communication error: {e!r}") from e
        try:
            return decoded(data) or pamqp.frame.unmarshal(data)
        except PAMQPException as e:
            raise InvalidFrameError(str(e)) from e
        except RecursionError:
            # A header table nested past what Python's recursion decodes: read the message
            # without it, for the worker to dead-letter, rather than drop the connection.
            frame = with_unreadable_headers(data)
            if frame is None:
                raise
            return frame


def install() -> None:
    """Have aiormq build ``FrameReader`` for its connections (idempotent); an aiormq whose
    receiver is not the one this was written against is left alone, and reads as it does."""
    current = aiormq.connection.FrameReceiver
    if current is FrameReader or current is not _AIORMQ_RECEIVER:
        return
    if not callable(getattr(current, "get_frame", None)):
        return
    aiormq.connection.FrameReceiver = FrameReader  # type: ignore[misc]
