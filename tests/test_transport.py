"""The transport on its own: readers driven by the event loop's readiness callbacks.

Two transports on 127.0.0.1 (one listening, one sending through a DEALER), no
envelopes: frames are opaque bytes here. Each test waits for conditions with a
deadline and closes both transports, even on failure.
"""

from __future__ import annotations

import anyio
import pytest
from transport_helpers import serving, wait_until

from mesh.config import TransportConfig
from mesh.transport import InboundFrame, Transport

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def listener(received: list[bytes], **config: int) -> Transport:
    def on_frames(frames: list[InboundFrame]) -> None:
        received.extend(f.frame for f in frames)

    transport = Transport(TransportConfig(**config), on_frames)
    transport.bind("tcp://127.0.0.1:0")
    return transport


async def test_frames_sent_before_serve_runs_are_received_once_it_does() -> None:
    received: list[bytes] = []
    server = listener(received)
    client = Transport(TransportConfig(), lambda frames: None)
    assert server.bound_address is not None
    for number in range(100):
        assert client.send_nowait(server.bound_address, b"early-%d" % number)
    async with serving(server, client):
        await wait_until(lambda: len(received) == 100)
    assert received == [b"early-%d" % n for n in range(100)]


async def test_replies_on_the_listener_reach_a_client_that_listens_nowhere() -> None:
    received: list[bytes] = []
    answers: list[bytes] = []

    def echo(frames: list[InboundFrame]) -> None:
        for frame in frames:
            received.append(frame.frame)
            assert server.reply(frame.route, b"re:" + frame.frame)

    server = Transport(TransportConfig(), echo)
    server.bind("tcp://127.0.0.1:0")
    client = Transport(TransportConfig(), lambda frames: answers.extend(f.frame for f in frames))
    assert server.bound_address is not None
    async with serving(server, client):
        # Many small exchanges in a row: a reply that made the client's socket
        # readable without a new signal would stall this loop.
        for number in range(300):
            assert client.send_nowait(server.bound_address, b"%d" % number)
            await wait_until(lambda n=number: len(answers) == n + 1)  # type: ignore[misc]
    assert answers == [b"re:%d" % n for n in range(300)]


async def test_an_awaited_send_waits_for_room_and_loses_nothing() -> None:
    received: list[bytes] = []
    gate = anyio.Event()

    server = listener(received, receive_queue_messages_max=5)
    # A tiny queue on both sides: the sender must wait for room again and again.
    client = Transport(TransportConfig(send_queue_messages_max=5, send_timeout_ms=10_000),
                       lambda frames: None)
    assert server.bound_address is not None
    address = server.bound_address
    async with serving(client):
        sent = 0
        with anyio.move_on_after(0.5):
            while await client.send(address, b"x" * 1000):  # nobody reads: fills up
                sent += 1
        assert 0 < sent < 10_000
        async with serving(server):
            async with anyio.create_task_group() as tg:
                async def more() -> None:
                    for number in range(2000):
                        assert await client.send(address, b"more-%d" % number)
                    gate.set()
                tg.start_soon(more)
                await wait_until(gate.is_set, 30)
            await wait_until(lambda: len(received) == sent + 2000, 30)
    assert received[:sent] == [b"x" * 1000] * sent
    assert received[sent:] == [b"more-%d" % n for n in range(2000)]
    # The send cut short by the deadline was cancelled while waiting, not dropped.
    assert client.counters.dropped_queue_full == 0


async def test_a_frame_handler_error_ends_serve_with_it() -> None:
    def broken(frames: list[InboundFrame]) -> None:
        raise RuntimeError("handler bug")

    server = Transport(TransportConfig(), broken)
    server.bind("tcp://127.0.0.1:0")
    client = Transport(TransportConfig(), lambda frames: None)
    assert server.bound_address is not None
    with pytest.raises(BaseExceptionGroup) as raised:
        async with serving(client, server):
            assert client.send_nowait(server.bound_address, b"boom")
            await anyio.sleep_forever()
    assert raised.group_contains(RuntimeError, match="handler bug")


async def test_an_evicted_connection_stops_cleanly_and_a_new_one_works() -> None:
    first: list[bytes] = []
    second: list[bytes] = []
    one, two = listener(first), listener(second)
    client = Transport(TransportConfig(connections_max=1), lambda frames: None)
    assert one.bound_address is not None and two.bound_address is not None
    async with serving(one, two, client):
        for round_ in range(20):  # each send to the other listener evicts the last one
            for target, seen in ((one, first), (two, second)):
                assert target.bound_address is not None
                assert client.send_nowait(target.bound_address, b"r%d" % round_)
                await wait_until(lambda s=seen, r=round_: len(s) == r + 1)  # type: ignore[misc]
    assert client.counters.connections_evicted >= 39
    assert first == second == [b"r%d" % n for n in range(20)]


async def test_an_awaited_send_to_a_full_queue_is_dropped_and_counted_after_the_timeout() -> None:
    server = listener([], receive_queue_messages_max=5)  # bound, never served: nobody reads
    client = Transport(TransportConfig(send_queue_messages_max=5, send_timeout_ms=200),
                       lambda frames: None)
    assert server.bound_address is not None
    try:
        async with serving(client):
            with anyio.fail_after(30):
                while await client.send(server.bound_address, b"x" * 1000):
                    pass
        assert client.counters.dropped_queue_full == 1
    finally:
        server.close()
