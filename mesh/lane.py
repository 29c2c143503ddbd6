"""Direct TCP lanes beside ZeroMQ: the same frames with fewer thread wake-ups.

A frame sent through ZeroMQ wakes three threads before the peer's event loop sees
it: the sender's I/O thread, the receiver's I/O thread, then the receiver's event
loop. On this class of machine a wake-up of an idle thread costs 20-60 us, so a
ZeroMQ hop between two asyncio processes took about 105 us against 22 us for a
plain TCP socket read by the event loop itself (docs/DECISIONS.md). A lane is
such a socket, opened next to the ZeroMQ connection of one peer address and used
for the frames to that address once it is up.

How one comes up, without reordering anything (the transport owns the states):

1. The connecting side asks on its ZeroMQ connection: ``[MARKER, ASK, b""]``.
   The listener answers ``[MARKER, PORT, b"<port>"]`` (empty: no lane).
2. The connecting side opens TCP to the host of the peer's ZeroMQ address and
   that port, writes ``HELLO`` and a random token, then sends
   ``[MARKER, BARRIER, token]`` on ZeroMQ, and from then on writes its frames
   to the lane.
3. The listener holds the frames arriving on a lane until the barrier with that
   lane's token comes out of ZeroMQ: everything sent through ZeroMQ before the
   switch has been received by then, so frames keep their order.

On the lane a frame is a 4-byte big-endian length and the bytes. Answers to
frames that came by a lane go back on it. A lane that breaks is closed; its
sender falls back to ZeroMQ and asks again after a back-off. A lane carries
nothing that ZeroMQ would not: frames are still signed envelopes, checked above
the transport, so a stranger connecting to the port gains nothing.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

__all__ = [
    "ASK",
    "BARRIER",
    "HELLO",
    "MARKER",
    "PORT",
    "TOKEN_BYTES",
    "FrameReader",
    "LaneError",
    "LaneProtocol",
    "parse_port",
]

MARKER = b"\x00agentmesh-lane/1"
"""First part of a lane control message on ZeroMQ; no envelope starts with a zero byte
followed by this text, and envelopes travel as single parts anyway."""
ASK = b"ask"
PORT = b"port"
BARRIER = b"barrier"
HELLO = b"AMLANE1\x00"
TOKEN_BYTES = 16

_LENGTH = struct.Struct(">I")
_JOINED_BYTES_MAX = 64 * 1024


class LaneError(Exception):
    """A peer broke the lane's framing; the lane is closed."""


def parse_port(payload: bytes) -> int | None:
    """The port in a PORT answer, or None for "no lane" or anything malformed."""
    if not payload or len(payload) > 5 or not payload.isdigit():
        return None
    port = int(payload)
    return port if 0 < port < 65536 else None


class FrameReader:
    """Splits a byte stream into length-prefixed frames of at most ``frame_bytes_max``."""

    def __init__(self, frame_bytes_max: int, *, hello: bool) -> None:
        self._frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self.token: bytes | None = None
        self._hello_pending = hello

    def feed(self, data: bytes) -> list[bytes]:
        """Frames completed by ``data``; raises ``LaneError`` on a bad hello or size."""
        buffer = self._buffer
        buffer += data
        if self._hello_pending:
            if len(buffer) < len(HELLO) + TOKEN_BYTES:
                if not HELLO.startswith(bytes(buffer[: len(HELLO)])):
                    raise LaneError("lane hello expected")
                return []
            if bytes(buffer[: len(HELLO)]) != HELLO:
                raise LaneError("lane hello expected")
            self.token = bytes(buffer[len(HELLO) : len(HELLO) + TOKEN_BYTES])
            del buffer[: len(HELLO) + TOKEN_BYTES]
            self._hello_pending = False
        frames: list[bytes] = []
        start = 0
        end = len(buffer)
        limit = self._frame_bytes_max
        while end - start >= 4:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > limit:
                raise LaneError(f"lane frame of {length} bytes exceeds {limit}")
            if end - start - 4 < length:
                break
            frames.append(bytes(buffer[start + 4 : start + 4 + length]))
            start += 4 + length
        if start:
            del buffer[:start]
        return frames


class LaneProtocol(asyncio.Protocol):
    """One lane connection, either end; the transport decides what frames mean.

    ``on_frames`` gets each read's complete frames, ``on_closed`` is called once
    when the connection ends for any reason (the error, if any).
    """

    def __init__(
        self,
        frame_bytes_max: int,
        *,
        hello: bool,
        on_frames: Callable[[LaneProtocol, list[bytes]], None],
        on_closed: Callable[[LaneProtocol, BaseException | None], None],
    ) -> None:
        self.reader = FrameReader(frame_bytes_max, hello=hello)
        self._on_frames = on_frames
        self._on_closed = on_closed
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.closed = False
        self.on_resume: Callable[[], None] | None = None
        # The listening side's bookkeeping: frames held until the barrier, and
        # whether the lane has been matched with its token and released.
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.registered = False
        self.active = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.closed:  # refused before the connection was made
            transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except LaneError as exc:
            self.abort(exc)
            return
        if frames or self.reader.token is not None:
            self._on_frames(self, frames)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.on_resume is not None:
            self.on_resume()

    def write(self, frame: bytes) -> None:
        """Queue one frame (the caller checked ``paused`` and ``closing``)."""
        assert self.transport is not None
        if len(frame) <= _JOINED_BYTES_MAX:  # one system call for the usual small frame
            self.transport.write(_LENGTH.pack(len(frame)) + frame)
        else:
            self.transport.writelines((_LENGTH.pack(len(frame)), frame))

    def write_raw(self, data: bytes) -> None:
        """Queue bytes as they are (the hello)."""
        assert self.transport is not None
        self.transport.write(data)

    def closing(self) -> bool:
        """Whether the connection is gone or going: nothing written now would arrive."""
        return self.closed or self.transport is None or self.transport.is_closing()

    def abort(self, exc: BaseException | None = None) -> None:
        """Close at once, discarding anything unsent."""
        if self.transport is not None:
            self.transport.abort()
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        resume, self.on_resume = self.on_resume, None
        self._on_closed(self, exc)
        if resume is not None:
            resume()  # a send waiting for room must see the lane is gone
