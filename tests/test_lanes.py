"""TCP lanes beside ZeroMQ (mesh/lane.py): order across the switch, answers, bounds.

Real sockets on 127.0.0.1 throughout. Where a test plays the peer's side by hand
(a raw ZeroMQ socket asking for the port, a raw TCP socket on the lane), it speaks
the lane protocol as documented in mesh/lane.py. Each test waits for conditions
with a deadline and closes everything it opened, even on failure.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from itertools import pairwise
from typing import Any

import anyio
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from transport_helpers import serving, wait_until

from mesh.config import TransportConfig
from mesh.lane import ASK, BARRIER, HELLO, MARKER, PORT, TOKEN_BYTES, FrameReader, LaneError
from mesh.transport import InboundFrame, Transport

pytestmark = [pytest.mark.timeout(60)]
anyio_test = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def listening(on_frames: Callable[[list[InboundFrame]], None], **config: Any) -> Transport:
    transport = Transport(TransportConfig(**config), on_frames)
    transport.bind("tcp://127.0.0.1:0")
    return transport


def collecting(into: list[bytes]) -> Callable[[list[InboundFrame]], None]:
    return lambda frames: into.extend(frame.frame for frame in frames)


def collecting_listener(**config: Any) -> tuple[Transport, str, list[bytes]]:
    """A listener that keeps every frame it receives, its address, and that list."""
    received: list[bytes] = []
    server = listening(collecting(received), **config)
    assert server.bound_address is not None
    return server, server.bound_address, received


def framed(*frames: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(frame)) + frame for frame in frames)


@contextmanager
def raw_dealer(address: str) -> Iterator[zmq.Socket[bytes]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 10_000)
    dealer.connect(address)
    try:
        yield dealer
    finally:
        context.destroy(linger=0)


def lane_port(dealer: zmq.Socket[bytes]) -> int:
    """Ask a listener for its lane port, as a peer's transport does."""
    dealer.send_multipart([MARKER, ASK, b""])
    marker, kind, port = dealer.recv_multipart()
    assert (marker, kind) == (MARKER, PORT)
    return int(port)


def asked_lane_port(address: str) -> int:
    with raw_dealer(address) as dealer:
        return lane_port(dealer)


@asynccontextmanager
async def hand_played_peer(address: str) -> AsyncIterator[tuple[zmq.Socket[bytes], int]]:
    """A raw DEALER connected to ``address``, and the lane port its listener gave."""
    with raw_dealer(address) as dealer:
        yield dealer, await anyio.to_thread.run_sync(lane_port, dealer)


# -- the frame reader ------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_any_split_of_the_stream_gives_the_same_frames(frames: list[bytes],
                                                      cuts: list[int]) -> None:
    token = bytes(range(TOKEN_BYTES))
    stream = HELLO + token + framed(*frames)
    points = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    reader = FrameReader(1024, hello=True)
    read: list[bytes] = []
    for start, end in pairwise(points):
        read.extend(reader.feed(stream[start:end]))
    assert read == frames
    assert reader.token == token


def test_the_reader_refuses_a_wrong_hello_and_an_oversized_frame() -> None:
    with pytest.raises(LaneError, match="hello"):
        FrameReader(1024, hello=True).feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(LaneError, match="hello"):
        FrameReader(1024, hello=True).feed(b"AMLX")  # wrong before the hello is whole
    reader = FrameReader(1024, hello=False)
    assert reader.feed(framed(b"x" * 1024)) == [b"x" * 1024]
    with pytest.raises(LaneError, match="1025 bytes exceeds 1024"):
        reader.feed(struct.pack(">I", 1025))


# -- two transports --------------------------------------------------------------


@anyio_test
async def test_frames_move_to_a_lane_and_keep_their_order() -> None:
    server, address, received = collecting_listener()
    client = Transport(TransportConfig(), lambda frames: None)
    async with serving(server, client):
        # A steady stream while the lane is asked for, opened and switched to: the
        # frames still in ZeroMQ at the switch must come out before the lane's.
        for number in range(3000):
            assert client.send_nowait(address, b"f%d" % number)
            if number % 50 == 0:
                await anyio.sleep(0)
        await wait_until(lambda: len(received) == 3000)
        for number in range(3000, 3100):
            assert client.send_nowait(address, b"f%d" % number)
        await wait_until(lambda: len(received) == 3100)
    assert received == [b"f%d" % n for n in range(3100)]
    assert client.counters.lanes_opened == 1
    assert server.counters.lanes_accepted == 1
    assert client.counters.lane_frames_sent >= 100  # at least the last hundred went by lane
    assert server.counters.lane_frames_received == client.counters.lane_frames_sent


@anyio_test
async def test_answers_to_frames_that_came_by_lane_go_back_on_it() -> None:
    answers: list[bytes] = []

    def echo(frames: list[InboundFrame]) -> None:
        for frame in frames:
            assert server.reply(frame.route, b"re:" + frame.frame)

    server = listening(echo)
    client = Transport(TransportConfig(), collecting(answers))  # listens nowhere
    address = server.bound_address
    assert address is not None
    async with serving(server, client):
        for number in range(200):
            assert client.send_nowait(address, b"%d" % number)
            await wait_until(lambda n=number: len(answers) == n + 1)  # type: ignore[misc]
    assert answers == [b"re:%d" % n for n in range(200)]
    assert client.counters.lanes_opened == 1
    assert server.counters.lane_frames_sent >= 190
    assert client.counters.lane_frames_received == server.counters.lane_frames_sent


@anyio_test
async def test_a_broken_lane_falls_back_to_zeromq_and_is_opened_again() -> None:
    server, address, received = collecting_listener()
    client = Transport(TransportConfig(reconnect_interval_ms=20), lambda frames: None)
    sent = 0

    async def send_until(condition: Callable[[], bool]) -> None:
        nonlocal sent
        with anyio.fail_after(10):
            while not condition():
                assert client.send_nowait(address, b"%d" % sent)
                sent += 1
                await anyio.sleep(0.002)

    async with serving(server, client):
        await send_until(lambda: client.counters.lanes_opened == 1)
        for lane in list(server._inbound_lanes):  # the connection breaks
            lane.abort()
        await send_until(lambda: client.counters.lanes_failed == 1)
        await send_until(lambda: client.counters.lanes_opened == 2)
        await send_until(lambda: client.counters.lane_frames_sent > 0 and sent % 10 == 0)
        # Frames already written to the broken lane may be lost with it (as they
        # would be in a broken ZeroMQ connection); every other one arrives.
        await wait_until(lambda: received[-1:] == [b"%d" % (sent - 1)])
    numbers = [int(frame) for frame in received]
    assert numbers == sorted(numbers)
    assert len(numbers) >= sent - 5


@anyio_test
async def test_a_listener_without_lanes_keeps_its_peers_on_zeromq() -> None:
    server, address, received = collecting_listener(lanes=False)
    client = Transport(TransportConfig(), lambda frames: None)
    quiet = Transport(TransportConfig(lanes=False), lambda frames: None)
    async with serving(server, client, quiet):
        for number in range(100):
            assert client.send_nowait(address, b"c%d" % number)
            assert quiet.send_nowait(address, b"q%d" % number)
            await anyio.sleep(0.001)
        await wait_until(lambda: len(received) == 200)
    assert [f for f in received if f[:1] == b"c"] == [b"c%d" % n for n in range(100)]
    assert client.counters.lanes_opened == quiet.counters.lanes_opened == 0
    assert server.counters.lane_frames_received == 0


@anyio_test
async def test_an_unanswered_ask_is_repeated_after_its_timeout() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = context.socket(zmq.ROUTER)  # a peer that never answers asks
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVTIMEO, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = Transport(TransportConfig(lane_answer_timeout_ms=50), lambda frames: None)
    asks = 0
    frames = 0
    try:
        async with serving(client):
            with anyio.fail_after(10):
                while asks < 3:
                    assert client.send_nowait(f"tcp://127.0.0.1:{port}", b"hello")
                    await anyio.sleep(0.01)
                    while True:
                        try:
                            parts = router.recv_multipart()
                        except zmq.Again:
                            break
                        if parts[1:] == [MARKER, ASK, b""]:
                            asks += 1
                        else:
                            frames += 1
    finally:
        context.destroy(linger=0)
    assert frames > 3  # every frame still went through ZeroMQ meanwhile
    assert client.counters.lanes_opened == 0


# -- a hand-played peer on the lane ------------------------------------------------


@anyio_test
async def test_lane_frames_wait_for_the_barrier_behind_the_zeromq_ones() -> None:
    server, address, received = collecting_listener()
    token = b"t" * TOKEN_BYTES
    async with serving(server):
        async with hand_played_peer(address) as (dealer, port):
            with socket.create_connection(("127.0.0.1", port)) as lane:
                lane.sendall(HELLO + token + framed(b"lane-1", b"lane-2"))
                dealer.send(b"zmq-1")
                await wait_until(lambda: received == [b"zmq-1"])
                dealer.send_multipart([MARKER, BARRIER, token])
                await wait_until(lambda: len(received) == 3)
                lane.sendall(framed(b"lane-3"))
                await wait_until(lambda: len(received) == 4)
    assert received == [b"zmq-1", b"lane-1", b"lane-2", b"lane-3"]
    assert server.counters.lanes_accepted == 1


@anyio_test
async def test_a_barrier_that_overtakes_the_hello_still_releases_the_lane() -> None:
    server, address, received = collecting_listener()
    token = b"b" * TOKEN_BYTES
    async with serving(server):
        async with hand_played_peer(address) as (dealer, port):
            dealer.send_multipart([MARKER, BARRIER, token])
            dealer.send(b"zmq-1")
            await wait_until(lambda: received == [b"zmq-1"])
            with socket.create_connection(("127.0.0.1", port)) as lane:
                lane.sendall(HELLO + token + framed(b"lane-1"))
                await wait_until(lambda: len(received) == 2)
    assert received == [b"zmq-1", b"lane-1"]


@pytest.mark.parametrize(
    ("config", "payload", "reason"),
    [
        ({}, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a lane"),
        ({"frame_size_bytes_hard_max": 4096}, HELLO + b"k" * TOKEN_BYTES
         + struct.pack(">I", 4097), "oversized frame"),
        ({"lane_held_bytes_max": 64 * 1024}, HELLO + b"h" * TOKEN_BYTES
         + framed(b"x" * 40_000, b"y" * 40_000), "too much held before a barrier"),
    ],
)
@anyio_test
async def test_a_misbehaving_lane_is_closed_and_counted_and_the_node_goes_on(
    config: dict[str, int], payload: bytes, reason: str
) -> None:
    server, address, received = collecting_listener(**config)
    client = Transport(TransportConfig(), lambda frames: None)
    async with serving(server, client):
        port = await anyio.to_thread.run_sync(asked_lane_port, address)
        with socket.create_connection(("127.0.0.1", port)) as bad:
            bad.sendall(payload)
            await wait_until(lambda: server.counters.lanes_refused == 1)
            bad.settimeout(10)
            assert bad.recv(1) == b"", reason  # closed by the listener
        for number in range(50):  # an honest peer is served as before, by lane
            assert client.send_nowait(address, b"%d" % number)
            await anyio.sleep(0.001)
        await wait_until(lambda: len(received) == 50)
    assert received == [b"%d" % n for n in range(50)]
    assert server.counters.lanes_accepted == 1


@anyio_test
async def test_a_lane_whose_peer_stops_reading_is_bounded() -> None:
    """The peer answers with the port of a socket that accepts and never reads."""
    stalled = socket.create_server(("127.0.0.1", 0))
    stalled.setblocking(False)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    address = f"tcp://127.0.0.1:{port}"
    config = TransportConfig(lane_write_buffer_bytes_max=64 * 1024, send_timeout_ms=100)
    client = Transport(config, lambda frames: None)
    try:
        async with serving(client):
            assert client.send_nowait(address, b"first")  # asks for a lane
            identity, *ask = await anyio.to_thread.run_sync(router.recv_multipart)
            assert ask == [MARKER, ASK, b""]
            router.send_multipart(
                [identity, MARKER, PORT, b"%d" % stalled.getsockname()[1]]
            )
            await wait_until(lambda: client.counters.lanes_opened == 1)
            frame = b"z" * 60_000
            with anyio.fail_after(20):
                while client.send_nowait(address, frame):  # the kernel's buffers fill
                    await anyio.sleep(0)
            assert client.counters.dropped_queue_full == 1
            with anyio.fail_after(5):
                assert not await client.send(address, frame)  # waits, then gives up
            assert client.counters.dropped_queue_full == 2
    finally:
        stalled.close()
        context.destroy(linger=0)


@anyio_test
async def test_closing_a_transport_closes_its_lanes() -> None:
    server, address, _ = collecting_listener()
    client = Transport(TransportConfig(), lambda frames: None)
    async with serving(server):
        async with serving(client):
            with anyio.fail_after(10):
                while client.counters.lanes_opened == 0:
                    assert client.send_nowait(address, b"x")
                    await anyio.sleep(0.002)
            await wait_until(lambda: len(server._inbound_lanes) == 1)
        await wait_until(lambda: not server._inbound_lanes)  # the peer saw it close


@anyio_test
async def test_a_frame_sent_while_a_lane_is_closing_goes_through_zeromq() -> None:
    server, address, received = collecting_listener()
    client = Transport(TransportConfig(), lambda frames: None)
    async with serving(server, client):
        with anyio.fail_after(10):
            while client.counters.lanes_opened == 0:
                assert client.send_nowait(address, b"warm-up")
                await anyio.sleep(0.002)
        lane = client._connections[address].lane
        assert lane is not None and lane.transport is not None
        lane.transport.close()  # closing: its connection_lost comes on a later turn
        assert client.send_nowait(address, b"while closing")
        await wait_until(lambda: b"while closing" in received)
        await wait_until(lambda: client.counters.lanes_failed == 1)


@anyio_test
async def test_malformed_lane_messages_on_zeromq_are_counted_and_ignored() -> None:
    server, address, received = collecting_listener()
    async with serving(server):
        with raw_dealer(address) as dealer:
            dealer.send_multipart([MARKER, b"shout", b""])
            dealer.send_multipart([MARKER, BARRIER, b"short"])
            dealer.send(b"after")
            await wait_until(lambda: received == [b"after"])
    assert server.counters.lane_controls_invalid == 2
    assert server.counters.lanes_accepted == 0

    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = context.socket(zmq.ROUTER)  # a listener answering nonsense
    router.setsockopt(zmq.LINGER, 0)
    router_port = router.bind_to_random_port("tcp://127.0.0.1")
    client = Transport(TransportConfig(), lambda frames: None)
    try:
        async with serving(client):
            assert client.send_nowait(f"tcp://127.0.0.1:{router_port}", b"hello")
            identity, *ask = await anyio.to_thread.run_sync(router.recv_multipart)
            assert ask == [MARKER, ASK, b""]
            router.send_multipart([identity, MARKER, PORT, b"99999"])
            router.send_multipart([identity, MARKER, b"what", b""])
            await wait_until(lambda: client.counters.lane_controls_invalid == 2)
            assert client.send_nowait(f"tcp://127.0.0.1:{router_port}", b"still here")
            frames = [await anyio.to_thread.run_sync(router.recv_multipart) for _ in range(2)]
    finally:
        context.destroy(linger=0)
    assert [parts[1:] for parts in frames] == [[b"hello"], [b"still here"]]
    assert client.counters.lanes_opened == 0
