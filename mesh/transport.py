"""ZeroMQ transport under anyio: bytes in, bytes out, bounded everywhere.

Each node binds one ROUTER socket on its listen address, where every other node
and client delivers envelopes, and keeps one DEALER socket per peer address it
sends to (ZeroMQ reconnects it on its own, with back-off). Replies to a request
go back on the ROUTER to the connection the request came from, so a client that
listens nowhere (the CLI) can still be answered.

Receiving follows the measured fast path: one ``await poll()`` per wake-up, then
the socket is drained without blocking, up to ``receive_batch_frames_max`` frames,
and the batch is handed over at once. Awaiting each message costs 15x more.

Sends never block the node: a full queue (ZeroMQ's high-water mark) makes an
awaited send wait up to ``send_timeout_ms``, then the frame is dropped and
counted; ``send_nowait`` drops at once. Nothing received can raise out of the
receive loop: odd multipart shapes become an empty frame, which the envelope
layer rejects as malformed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import zmq
import zmq.asyncio
from anyio.abc import TaskGroup, TaskStatus

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


@dataclass(slots=True)
class _Connection:
    address: str
    socket: zmq.asyncio.Socket
    sync: zmq.Socket[bytes]
    reader: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    reading: bool = False


FrameHandler = Callable[[list[InboundFrame]], None]


class Transport:
    """The sockets of one node (or client) and the tasks that read them."""

    def __init__(self, config: TransportConfig, on_frames: FrameHandler) -> None:
        self.config = config
        self.counters = TransportCounters()
        self._on_frames = on_frames
        self._context = zmq.asyncio.Context()
        self._listener: zmq.asyncio.Socket | None = None
        self._listener_sync: zmq.Socket[bytes] | None = None
        self._connections: OrderedDict[str, _Connection] = OrderedDict()
        self._task_group: TaskGroup | None = None
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
        self._listener = socket
        self._listener_sync = zmq.Socket.shadow(socket.underlying)
        self.bound_address = endpoint
        return endpoint

    async def serve(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the receive loops until cancelled; closes every socket on the way out."""
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                if self._listener is not None:
                    tg.start_soon(self._read_loop, self._listener, None)
                for connection in self._connections.values():
                    tg.start_soon(self._read_connection, connection)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._task_group = None
            self.close()

    def close(self) -> None:
        """Close every socket (pending outbound frames are discarded).

        Called by ``serve`` once its readers have stopped, or directly when
        ``serve`` never ran.
        """
        if self._closed:
            return
        self._closed = True
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
        timeout_ms = self.config.send_timeout_ms
        with anyio.move_on_after(timeout_ms / 1000):
            while not self._closed and connection.address in self._connections:
                if await _poll(connection.socket, zmq.POLLOUT, timeout_ms):
                    if self._try_send(connection, frame):
                        return True
        self.counters.dropped_queue_full += 1
        return False

    def reply(self, route: Route, frame: bytes) -> bool:
        """Send ``frame`` back along ``route``; False (and counted) if it cannot go."""
        if route.identity is None:
            assert route.address is not None, route
            return self.send_nowait(route.address, frame)
        if self._listener_sync is None or self._closed:
            self.counters.dropped_closed += 1
            return False
        parts = [route.identity, b"", frame] if route.delimiter else [route.identity, frame]
        try:
            self._listener_sync.send_multipart(parts, zmq.NOBLOCK)
            _recheck_readable(self._listener)
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

    def _configure(self, socket: zmq.asyncio.Socket) -> None:
        cfg = self.config
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, cfg.send_queue_messages_max)
        socket.setsockopt(zmq.RCVHWM, cfg.receive_queue_messages_max)
        socket.setsockopt(zmq.MAXMSGSIZE, cfg.frame_size_bytes_hard_max)
        socket.setsockopt(zmq.RECONNECT_IVL, cfg.reconnect_interval_ms)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, cfg.reconnect_interval_max_ms)
        socket.setsockopt(zmq.TCP_KEEPALIVE, 1)

    def _connection(self, address: str) -> _Connection | None:
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
        connection = _Connection(address, socket, zmq.Socket.shadow(socket.underlying))
        self._connections[address] = connection
        self.counters.connections_opened += 1
        if self._task_group is not None:
            self._task_group.start_soon(self._read_connection, connection)
        return connection

    def _try_send(self, connection: _Connection, frame: bytes) -> bool:
        try:
            # Always copied: a zero-copy send hands the buffer's release to pyzmq's
            # garbage thread, whose grabs of the GIL stall the event loop far longer
            # than copying even a megabyte does when the cores are busy.
            connection.sync.send(frame, zmq.NOBLOCK, copy=True)
        except zmq.Again:
            return False
        _recheck_readable(connection.socket)
        self.counters.frames_sent += 1
        return True

    def _retire(self, connection: _Connection) -> None:
        # A socket being polled is closed by its own reader task as it unwinds,
        # never from under a pending poll.
        if connection.reading:
            connection.reader.cancel()
        else:
            connection.socket.close(linger=0)

    async def _read_connection(self, connection: _Connection) -> None:
        if self._connections.get(connection.address) is not connection:
            return  # retired before its reader started; _retire closed it
        connection.reading = True
        try:
            with connection.reader:
                await self._read_loop(connection.socket, connection.address)
        finally:
            connection.reading = False
            if self._connections.get(connection.address) is not connection:
                connection.socket.close(linger=0)

    async def _read_loop(self, socket: zmq.asyncio.Socket, address: str | None) -> None:
        sync: zmq.Socket[bytes] = zmq.Socket.shadow(socket.underlying)
        batch_max = self.config.receive_batch_frames_max
        while True:
            try:
                await _poll(socket, zmq.POLLIN)
            except zmq.ZMQError:
                return  # socket closed under us during shutdown or eviction
            batch: list[InboundFrame] = []
            while len(batch) < batch_max:
                try:
                    parts = sync.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    return
                batch.append(_inbound(parts, address))
            if batch:
                self.counters.frames_received += len(batch)
                self._on_frames(batch)
            if len(batch) == batch_max:
                await anyio.sleep(0)  # let timers run between full batches


def _recheck_readable(socket: zmq.asyncio.Socket | None) -> None:
    """Wake a pending poll of ``socket`` if a send just made it readable.

    ZeroMQ signals readiness on an edge-triggered descriptor, and a send processes
    the socket's pending commands, which can make messages readable without a new
    edge: a reader waiting in ``poll`` would then sleep until unrelated traffic
    arrived, seconds later under load. pyzmq's asyncio socket re-checks its
    events whenever ``EVENTS`` is read through it, and schedules the pending poll.
    """
    if socket is not None:
        socket.get(zmq.EVENTS)


async def _poll(socket: zmq.asyncio.Socket, flags: int, timeout_ms: int | None = None) -> int:
    # pyzmq's stubs give the asyncio socket the poller's poll signature.
    return await socket.poll(timeout_ms, flags)  # type: ignore[call-arg,return-value]


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
