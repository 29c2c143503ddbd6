"""ZeroMQ transport under anyio: bytes in, bytes out, bounded everywhere.

Each node binds one ROUTER socket on its listen address, where every other node
and client delivers envelopes, and keeps one DEALER socket per peer address it
sends to (ZeroMQ reconnects it on its own, with back-off). Replies to a request
go back on the ROUTER to the connection the request came from, so a client that
listens nowhere (the CLI) can still be answered.

Receiving follows the measured fast path: the event loop watches each socket's
ZeroMQ descriptor (``add_reader``), and on every wake-up the socket is drained
without blocking, up to ``receive_batch_frames_max`` frames, and the batch is
handed over at once. Awaiting each message costs 15x more, and pyzmq's asyncio
``poll`` (a future, a timer and a reader registered anew on every wake-up) about
50 us a hop more than the bare callback.

ZeroMQ's descriptor is edge-like: it signals when the socket has commands to
process, and reading ``EVENTS`` processes them. So a drain reads ``EVENTS``
before it stops, and every send re-reads it too: a send can process commands
that make frames readable without a new signal (a reader would then sleep until
unrelated traffic arrived). The same descriptor signals room to send again,
which wakes an awaited ``send`` waiting on a full queue.

Sends never block the node: a full queue (ZeroMQ's high-water mark) makes an
awaited send wait up to ``send_timeout_ms``, then the frame is dropped and
counted; ``send_nowait`` drops at once. Nothing received can raise out of the
receive loop: odd multipart shapes become an empty frame, which the envelope
layer rejects as malformed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import zmq
from anyio.abc import TaskStatus

from mesh.config import TransportConfig
from mesh.errors import TransportError

__all__ = ["InboundFrame", "Route", "Transport", "TransportCounters"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a frame came from, and so how to answer it.

    ``identity`` is the ROUTER identity of the connection (for frames received on
    the listening socket); ``address`` is the peer address of the DEALER the
    frame arrived on (replies to our own requests). ``delimiter`` records a
    REQ-style empty frame that must be echoed in a reply.
    """

    identity: bytes | None = None
    address: str | None = None
    delimiter: bool = False


@dataclass(frozen=True, slots=True)
class InboundFrame:
    """One received frame and its route."""

    frame: bytes
    route: Route


@dataclass(slots=True)
class TransportCounters:
    """Frames through the transport; every drop is counted by reason."""

    frames_received: int = 0
    frames_sent: int = 0
    dropped_queue_full: int = 0
    dropped_unroutable: int = 0
    dropped_closed: int = 0
    connections_opened: int = 0
    connections_evicted: int = 0

    def as_dict(self) -> dict[str, int]:
        """Counters as a plain mapping."""
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True, eq=False)
class _Watched:
    """One socket and its state with the event loop: the listener, or the DEALER
    to one peer (an outbound connection)."""

    socket: zmq.Socket[bytes]
    address: str | None  # the peer's address for a DEALER, None for the listener
    fd: int
    watched: bool = False  # registered with the event loop
    drain_queued: bool = False  # a drain is scheduled with call_soon
    room: anyio.Event | None = None  # set when the socket can take frames again
    closed: bool = False


FrameHandler = Callable[[list[InboundFrame]], None]

_UNWATCHED_RETRY_S = 0.005
"""How often an awaited send retries a full queue while ``serve`` is not running
(no readiness callbacks can wake it then)."""


class Transport:
    """The sockets of one node (or client), read from the event loop's callbacks."""

    def __init__(self, config: TransportConfig, on_frames: FrameHandler) -> None:
        self.config = config
        self.counters = TransportCounters()
        self._on_frames = on_frames
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._listener: _Watched | None = None
        self._connections: OrderedDict[str, _Watched] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None
        self._failed: anyio.Event | None = None
        self._closed = False
        self.bound_address: str | None = None

    # -- lifecycle -------------------------------------------------------------

    def bind(self, address: str) -> str:
        """Bind the listening socket; returns the bound address (port 0 resolved)."""
        socket = self._context.socket(zmq.ROUTER)
        self._configure(socket)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            socket.bind(address)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            raise TransportError(f"cannot bind {address}: {exc}") from exc
        endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._listener = _Watched(socket, None, _descriptor(socket))
        self.bound_address = endpoint
        return endpoint

    async def serve(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Receive until cancelled; closes every socket on the way out.

        An error raised while handling received frames ends ``serve`` with it.
        """
        self._loop = asyncio.get_running_loop()
        failed = self._failed = anyio.Event()
        try:
            if self._listener is not None:
                self._watch(self._listener)
            for connection in self._connections.values():
                self._watch(connection)
            task_status.started()
            await failed.wait()
            assert self._failure is not None
            raise self._failure
        finally:
            self.close()
            self._loop = None

    def close(self) -> None:
        """Close every socket (pending outbound frames are discarded).

        Called by ``serve`` as it ends, or directly when ``serve`` never ran.
        """
        if self._closed:
            return
        self._closed = True
        watched = list(self._connections.values())
        if self._listener is not None:
            watched.append(self._listener)
        for each in watched:
            self._stop_watching(each)
        self._connections.clear()
        self._context.destroy(linger=0)

    # -- sending ---------------------------------------------------------------

    def send_nowait(self, address: str, frame: bytes) -> bool:
        """Queue ``frame`` to ``address``; False (and counted) when the queue is full."""
        connection = self._connection(address)
        if connection is None:
            return False
        if self._try_send(connection, frame):
            return True
        self.counters.dropped_queue_full += 1
        return False

    async def send(self, address: str, frame: bytes) -> bool:
        """Queue ``frame`` to ``address``, waiting up to ``send_timeout_ms`` for room."""
        connection = self._connection(address)
        if connection is None:
            return False
        if self._try_send(connection, frame):
            return True
        with anyio.move_on_after(self.config.send_timeout_ms / 1000):
            while not connection.closed:
                room = connection.room = connection.room or anyio.Event()
                if self._try_send(connection, frame):
                    return True
                if not connection.watched:
                    await anyio.sleep(_UNWATCHED_RETRY_S)  # serve not running: no wake-ups
                    continue
                await room.wait()
                if connection.room is room:
                    connection.room = None
        self.counters.dropped_queue_full += 1
        return False

    def reply(self, route: Route, frame: bytes) -> bool:
        """Send ``frame`` back along ``route``; False (and counted) if it cannot go."""
        if route.identity is None:
            assert route.address is not None, route
            return self.send_nowait(route.address, frame)
        listener = self._listener
        if listener is None or self._closed:
            self.counters.dropped_closed += 1
            return False
        parts = [route.identity, b"", frame] if route.delimiter else [route.identity, frame]
        try:
            listener.socket.send_multipart(parts, zmq.NOBLOCK)
            self._recheck(listener)
        except zmq.Again:
            self.counters.dropped_queue_full += 1
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.counters.dropped_unroutable += 1
            return False
        self.counters.frames_sent += 1
        return True

    def disconnect(self, address: str) -> None:
        """Close the outbound connection to ``address``, if any."""
        connection = self._connections.pop(address, None)
        if connection is not None:
            self._retire(connection)

    def connected_addresses(self) -> list[str]:
        """Addresses with an open outbound connection, least recently used first."""
        return list(self._connections)

    # -- internals -------------------------------------------------------------

    def _configure(self, socket: zmq.Socket[bytes]) -> None:
        cfg = self.config
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, cfg.send_queue_messages_max)
        socket.setsockopt(zmq.RCVHWM, cfg.receive_queue_messages_max)
        socket.setsockopt(zmq.MAXMSGSIZE, cfg.frame_size_bytes_hard_max)
        socket.setsockopt(zmq.RECONNECT_IVL, cfg.reconnect_interval_ms)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, cfg.reconnect_interval_max_ms)
        socket.setsockopt(zmq.TCP_KEEPALIVE, 1)

    def _connection(self, address: str) -> _Watched | None:
        if self._closed:
            self.counters.dropped_closed += 1
            return None
        connection = self._connections.get(address)
        if connection is not None:
            self._connections.move_to_end(address)
            return connection
        while len(self._connections) >= self.config.connections_max:
            _, evicted = self._connections.popitem(last=False)
            self._retire(evicted)
            self.counters.connections_evicted += 1
        socket = self._context.socket(zmq.DEALER)
        self._configure(socket)
        try:
            socket.connect(address)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            self.counters.dropped_unroutable += 1
            log.warning("cannot connect to %s: %s", address, exc)
            return None
        connection = _Watched(socket, address, _descriptor(socket))
        self._connections[address] = connection
        self.counters.connections_opened += 1
        if self._loop is not None:
            self._watch(connection)
        return connection

    def _try_send(self, connection: _Watched, frame: bytes) -> bool:
        try:
            # Always copied: a zero-copy send hands the buffer's release to pyzmq's
            # garbage thread, whose grabs of the GIL stall the event loop far longer
            # than copying even a megabyte does when the cores are busy.
            connection.socket.send(frame, zmq.NOBLOCK, copy=True)
        except zmq.Again:
            return False
        self._recheck(connection)
        self.counters.frames_sent += 1
        return True

    def _retire(self, connection: _Watched) -> None:
        self._stop_watching(connection)
        connection.socket.close(linger=0)

    def _stop_watching(self, watched: _Watched) -> None:
        """No more reading or sending on it: a send waiting for room gives up."""
        self._unwatch(watched)
        watched.closed = True
        if watched.room is not None:
            watched.room.set()

    # -- receiving ---------------------------------------------------------------

    def _watch(self, reader: _Watched) -> None:
        assert self._loop is not None
        if reader.watched or reader.closed:
            return
        self._loop.add_reader(reader.fd, self._drain, reader)
        reader.watched = True
        self._queue_drain(reader)  # frames may have arrived before we watched

    def _unwatch(self, reader: _Watched) -> None:
        if reader.watched and self._loop is not None:
            self._loop.remove_reader(reader.fd)
        reader.watched = False

    def _queue_drain(self, reader: _Watched) -> None:
        if not reader.drain_queued and self._loop is not None:
            reader.drain_queued = True
            self._loop.call_soon(self._drain_queued, reader)

    def _drain_queued(self, reader: _Watched) -> None:
        reader.drain_queued = False
        self._drain(reader)

    def _recheck(self, reader: _Watched) -> None:
        """After a send: drain soon if the send made frames readable (no new signal
        will say so; see the module doc)."""
        if reader.watched and not reader.closed:
            try:
                if _events(reader.socket) & zmq.POLLIN:
                    self._queue_drain(reader)
            except zmq.ZMQError:
                pass

    def _drain(self, reader: _Watched) -> None:
        """Called by the event loop when the socket's descriptor signals: take up to
        ``receive_batch_frames_max`` frames and hand them over; wake a waiting send
        if there is room again."""
        if reader.closed or not reader.watched:
            return
        try:
            self._drain_once(reader)
        except Exception as exc:  # a bug in a frame handler: end serve with it
            if self._failure is None and self._failed is not None:
                self._failure = exc
                self._failed.set()

    def _drain_once(self, reader: _Watched) -> None:
        socket = reader.socket
        batch_max = self.config.receive_batch_frames_max
        batch: list[InboundFrame] = []
        try:
            while len(batch) < batch_max:
                try:
                    parts = socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                batch.append(_inbound(parts, reader.address))
            # Read once the socket is empty (or the batch full): this re-arms the
            # descriptor, and POLLIN now means frames are left or came meanwhile.
            events = _events(socket)
        except zmq.ZMQError:
            return  # closed under us during shutdown or eviction
        if events & zmq.POLLOUT and reader.room is not None:
            reader.room.set()
        if batch:
            self.counters.frames_received += len(batch)
            self._on_frames(batch)
        if events & zmq.POLLIN:
            self._queue_drain(reader)  # let other callbacks run first


def _descriptor(socket: zmq.Socket[bytes]) -> int:
    """The descriptor the event loop watches for the socket (see the module doc)."""
    return int(socket.getsockopt(zmq.FD))


def _events(socket: zmq.Socket[bytes]) -> int:
    """Read ``EVENTS``: which also processes the socket's commands (see the module doc)."""
    return int(socket.get(zmq.EVENTS))


def _inbound(parts: list[bytes], address: str | None) -> InboundFrame:
    if address is not None:  # DEALER: a reply, one frame
        frame = parts[0] if len(parts) == 1 else b""
        return InboundFrame(frame, Route(address=address))
    identity = parts[0]
    if len(parts) == 2:
        return InboundFrame(parts[1], Route(identity=identity))
    if len(parts) == 3 and parts[1] == b"":  # a REQ socket's envelope delimiter
        return InboundFrame(parts[2], Route(identity=identity, delimiter=True))
    return InboundFrame(b"", Route(identity=identity))
