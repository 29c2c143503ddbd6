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

Once serving, frames to a peer move to a direct TCP lane when both ends have
one (``mesh/lane.py``): the ZeroMQ connection stays for asking, for the barrier
that keeps frames in order across the switch, and as the fallback while a lane
is down.

Sends never block the node: a full queue (ZeroMQ's high-water mark) makes an
awaited send wait up to ``send_timeout_ms``, then the frame is dropped and
counted; ``send_nowait`` drops at once. Nothing received can raise out of the
receive loop: odd multipart shapes become an empty frame, which the envelope
layer rejects as malformed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import zmq
from anyio.abc import TaskStatus

from mesh.config import TransportConfig
from mesh.errors import TransportError
from mesh.lane import (
    ASK,
    BARRIER,
    HELLO,
    MARKER,
    PORT,
    TOKEN_BYTES,
    LaneError,
    LaneProtocol,
    parse_port,
)

__all__ = ["InboundFrame", "Route", "Transport", "TransportCounters"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a frame came from, and so how to answer it.

    ``identity`` is the ROUTER identity of the connection (for frames received on
    the listening socket); ``address`` is the peer address of the DEALER the
    frame arrived on (replies to our own requests). ``delimiter`` records a
    REQ-style empty frame that must be echoed in a reply. ``lane`` is the lane
    connection a frame came by (answers go back on it).
    """

    identity: bytes | None = None
    address: str | None = None
    delimiter: bool = False
    lane: LaneProtocol | None = None


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
    lanes_opened: int = 0  # outbound lanes that came up
    lanes_failed: int = 0  # outbound lanes that could not connect, or broke
    lanes_accepted: int = 0  # inbound lanes released by their barrier
    lanes_refused: int = 0  # inbound lanes closed: bad framing, too many, too much held
    lane_frames_sent: int = 0
    lane_frames_received: int = 0
    lane_controls_invalid: int = 0  # lane messages on ZeroMQ of unknown kind or shape

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
    # The lane to this peer (DEALERs only): its state, and when to ask again.
    lane: LaneProtocol | None = None
    lane_state: int = 0  # _LANE_IDLE, _LANE_ASKED, _LANE_CONNECTING or _LANE_OPEN
    lane_retry_at: float = 0.0  # loop time before which no ask is sent (again)
    lane_backoff_s: float = 0.0


FrameHandler = Callable[[list[InboundFrame]], None]

_LANE_IDLE, _LANE_ASKED, _LANE_CONNECTING, _LANE_OPEN = range(4)

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
        self._lane_tasks: anyio.abc.TaskGroup | None = None
        self._lane_server: asyncio.AbstractServer | None = None
        self._lane_port: int | None = None
        self._inbound_lanes: set[LaneProtocol] = set()
        self._lanes_by_token: dict[bytes, LaneProtocol] = {}
        self._barriers_early: OrderedDict[bytes, None] = OrderedDict()

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
            async with anyio.create_task_group() as lane_tasks:
                await self._listen_for_lanes()
                self._lane_tasks = lane_tasks
                if self._listener is not None:
                    self._watch(self._listener)
                for connection in self._connections.values():
                    self._watch(connection)
                task_status.started()
                await failed.wait()
                lane_tasks.cancel_scope.cancel()
            assert self._failure is not None
            raise self._failure
        finally:
            self._lane_tasks = None
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
            if each.lane is not None:
                each.lane.abort()
        self._connections.clear()
        if self._lane_server is not None:
            self._lane_server.close()
        for lane in list(self._inbound_lanes):
            lane.abort()
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
        lane = route.lane
        if lane is not None:
            if lane.closing() or self._closed:
                self.counters.dropped_closed += 1
                return False
            if lane.paused:
                self.counters.dropped_queue_full += 1
                return False
            lane.write(frame)
            self.counters.frames_sent += 1
            self.counters.lane_frames_sent += 1
            return True
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
        lane = connection.lane
        if lane is not None and not lane.closing():  # a closing one: ZeroMQ until it is gone
            if lane.paused:
                return False
            lane.write(frame)
            self.counters.frames_sent += 1
            self.counters.lane_frames_sent += 1
            return True
        if connection.lane_state in (_LANE_IDLE, _LANE_ASKED):  # none, or an answer due
            self._ask_for_lane(connection)
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
        if connection.lane is not None:
            connection.lane.abort()
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
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if self._failure is None and self._failed is not None:
            self._failure = exc
            self._failed.set()

    def _drain_once(self, reader: _Watched) -> None:
        socket = reader.socket
        batch_max = self.config.receive_batch_frames_max
        batch: list[InboundFrame] = []
        control_parts = 4 if reader.address is None else 3
        try:
            while len(batch) < batch_max:
                try:
                    parts = socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(parts) == control_parts and parts[-3] == MARKER:
                    self._lane_control(reader, parts, batch)
                    continue
                batch.append(_inbound(parts, reader.address))
            # Read once the socket is empty (or the batch full): this re-arms the
            # descriptor, and POLLIN now means frames are left or came meanwhile.
            events = _events(socket)
        except zmq.ZMQError:
            return  # closed under us during shutdown or eviction
        if events & zmq.POLLOUT and reader.room is not None:
            reader.room.set()
        if batch:
            self._deliver(batch)
            if self._failure is not None:
                return  # serve ends with the handler's error
        if events & zmq.POLLIN:
            self._queue_drain(reader)  # let other callbacks run first


    # -- lanes -------------------------------------------------------------------

    async def _listen_for_lanes(self) -> None:
        host = None if self.bound_address is None else _tcp_host(self.bound_address)
        if not self.config.lanes or host is None or self._lane_server is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(self._accept_lane, host, 0)
        except OSError as exc:
            log.warning("no TCP lanes on %s: %s", host, exc)
            return
        self._lane_server = server
        self._lane_port = int(server.sockets[0].getsockname()[1])

    def _accept_lane(self) -> LaneProtocol:
        lane = LaneProtocol(
            self.config.frame_size_bytes_hard_max,
            hello=True,
            on_frames=self._inbound_lane_frames,
            on_closed=self._inbound_lane_closed,
        )
        if self._closed or len(self._inbound_lanes) >= self.config.connections_max:
            lane.abort(LaneError("too many lanes"))
        else:
            self._inbound_lanes.add(lane)
        return lane

    def _inbound_lane_frames(self, lane: LaneProtocol, frames: list[bytes]) -> None:
        if not lane.registered:
            lane.registered = True
            token = lane.reader.token
            assert token is not None
            if token in self._barriers_early:
                del self._barriers_early[token]
                self._release(lane)
            elif token in self._lanes_by_token:
                lane.abort(LaneError("lane token in use"))
                return
            else:
                self._lanes_by_token[token] = lane
        if lane.active:
            if frames:
                self._deliver(self._lane_inbound(frames, Route(lane=lane)))
            return
        lane.held.extend(frames)
        lane.held_bytes += sum(map(len, frames))
        if lane.held_bytes > self.config.lane_held_bytes_max:
            lane.abort(LaneError("too many frames before the lane's barrier"))

    def _release(self, lane: LaneProtocol) -> list[InboundFrame]:
        """Mark ``lane`` active; returns the frames it held, to be handed over next."""
        lane.active = True
        self.counters.lanes_accepted += 1
        held, lane.held = lane.held, []
        lane.held_bytes = 0
        return self._lane_inbound(held, Route(lane=lane))

    def _lane_inbound(self, frames: list[bytes], route: Route) -> list[InboundFrame]:
        """``frames`` read from a lane, counted, with the route to answer them by."""
        self.counters.lane_frames_received += len(frames)
        return [InboundFrame(frame, route) for frame in frames]

    def _inbound_lane_closed(self, lane: LaneProtocol, exc: BaseException | None) -> None:
        self._inbound_lanes.discard(lane)
        token = lane.reader.token
        if token is not None and self._lanes_by_token.get(token) is lane:
            del self._lanes_by_token[token]
        lane.held = []
        lane.held_bytes = 0
        if isinstance(exc, LaneError):
            self.counters.lanes_refused += 1
            log.info("lane closed: %s", exc)

    def _lane_control(
        self, reader: _Watched, parts: list[bytes], batch: list[InboundFrame]
    ) -> None:
        kind, payload = parts[-2], parts[-1]
        if reader.address is None:  # the listener: a peer asks, or switches over
            if kind == ASK:
                answer = b"%d" % self._lane_port if self._lane_port is not None else b""
                try:
                    reader.socket.send_multipart([parts[0], MARKER, PORT, answer], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass  # full or gone: the peer asks again after its timeout
            elif kind == BARRIER and len(payload) == TOKEN_BYTES:
                lane = self._lanes_by_token.pop(payload, None)
                if lane is not None and not lane.closed:
                    # Everything the peer sent through ZeroMQ before it switched is
                    # in this batch already; the lane's frames follow it.
                    batch.extend(self._release(lane))
                    return
                self._barriers_early[payload] = None  # the lane's hello is still on its way
                while len(self._barriers_early) > self.config.connections_max:
                    self._barriers_early.popitem(last=False)
            else:
                self.counters.lane_controls_invalid += 1
            return
        port = parse_port(payload)
        if kind != PORT or (payload and port is None):
            self.counters.lane_controls_invalid += 1
            return
        if reader.lane_state != _LANE_ASKED:
            return  # a late answer to an earlier ask
        host = _tcp_host(reader.address)
        if port is None or host is None or self._lane_tasks is None:
            self._lane_later(reader, self.config.reconnect_interval_max_ms / 1000)
            return
        reader.lane_state = _LANE_CONNECTING
        self._lane_tasks.start_soon(self._open_lane, reader, host, port)

    def _ask_for_lane(self, connection: _Watched) -> None:
        loop = self._loop
        if loop is None or self._lane_tasks is None or not self.config.lanes:
            return
        now = loop.time()
        if now < connection.lane_retry_at:
            return
        try:
            connection.socket.send_multipart([MARKER, ASK, b""], zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        connection.lane_state = _LANE_ASKED
        connection.lane_retry_at = now + self.config.lane_answer_timeout_ms / 1000

    async def _open_lane(self, connection: _Watched, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()

        def make() -> LaneProtocol:
            return LaneProtocol(
                self.config.frame_size_bytes_hard_max,
                hello=False,
                on_frames=lambda lane, frames: self._answers_by_lane(connection, frames),
                on_closed=lambda lane, exc: self._outbound_lane_closed(connection, lane),
            )

        try:
            with anyio.fail_after(self.config.lane_connect_timeout_ms / 1000):
                _, lane = await loop.create_connection(make, host, port)
        except (OSError, TimeoutError):
            self.counters.lanes_failed += 1
            if connection.lane_state == _LANE_CONNECTING and not connection.closed:
                self._lane_later(connection)
            return
        if connection.closed or connection.lane_state != _LANE_CONNECTING:
            lane.abort()
            return
        assert lane.transport is not None
        lane.transport.set_write_buffer_limits(high=self.config.lane_write_buffer_bytes_max)
        token = os.urandom(TOKEN_BYTES)
        lane.write_raw(HELLO + token)
        try:
            connection.socket.send_multipart([MARKER, BARRIER, token], zmq.NOBLOCK)
        except zmq.ZMQError:
            lane.abort()  # ZeroMQ's queue is full: stay there for now
            return
        self._recheck(connection)
        connection.lane = lane
        connection.lane_state = _LANE_OPEN
        connection.lane_backoff_s = 0.0
        lane.on_resume = lambda: self._lane_room(connection)
        self.counters.lanes_opened += 1

    def _answers_by_lane(self, connection: _Watched, frames: list[bytes]) -> None:
        if frames and not connection.closed:
            self._deliver(self._lane_inbound(frames, Route(address=connection.address)))

    def _outbound_lane_closed(self, connection: _Watched, lane: LaneProtocol) -> None:
        if connection.lane is lane:
            connection.lane = None
        elif connection.lane_state != _LANE_CONNECTING:
            return
        if not connection.closed:
            self.counters.lanes_failed += 1
            self._lane_later(connection)

    def _lane_later(self, connection: _Watched, delay_s: float | None = None) -> None:
        """Back to ZeroMQ alone; ask for a lane again after ``delay_s`` (default: back-off)."""
        if delay_s is None:
            first_s = self.config.reconnect_interval_ms / 1000
            longest_s = self.config.reconnect_interval_max_ms / 1000
            delay_s = connection.lane_backoff_s = min(
                longest_s, connection.lane_backoff_s * 2 or first_s
            )
        connection.lane_state = _LANE_IDLE
        connection.lane_retry_at = (self._loop.time() if self._loop is not None else 0.0) + delay_s

    def _lane_room(self, connection: _Watched) -> None:
        if connection.room is not None:
            connection.room.set()

    def _deliver(self, batch: list[InboundFrame]) -> None:
        """Hand received frames to the node; a handler's error ends ``serve``."""
        self.counters.frames_received += len(batch)
        try:
            self._on_frames(batch)
        except Exception as exc:  # a bug in a frame handler: end serve with it
            self._fail(exc)


def _tcp_host(address: str) -> str | None:
    """The host of a ``tcp://host:port`` address (None for any other kind)."""
    if not address.startswith("tcp://"):
        return None
    host, colon, _ = address[len("tcp://") :].rpartition(":")
    if not colon or not host or ";" in host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return "0.0.0.0" if host == "*" else host


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
