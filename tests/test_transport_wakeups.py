"""Regression: a reader parked on a socket is woken when a send makes it readable.

ZeroMQ reports readiness on an edge-triggered descriptor, and a send processes the
socket's pending commands, which can make received messages readable without a
new edge. A node replies through a synchronous shadow of the socket its asyncio
reader waits on; without re-checking the socket's events after such sends, some
requests sat unread until unrelated traffic arrived (under load, Raft leaders
stepped down and clients timed out). Many concurrent request/reply streams make
that window likely; every request must be answered promptly.
"""

from __future__ import annotations

import time

import anyio
import pytest
from pydantic import BaseModel
from test_runtime import make_node

from mesh.runtime import Inbound, Node

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Ping(BaseModel):
    n: int
    padding: str = ""


async def test_concurrent_request_streams_are_all_answered_promptly() -> None:
    server = make_node("server")
    # Answers leave from another task, as a Raft leader's do: the receiving task is
    # parked in its poll when the answers are sent.
    send_answer, answers_to_send = anyio.create_memory_object_stream[Inbound](10_000)
    server.on("test.ping", Ping, send_answer.send_nowait)
    client = make_node("client", listen=False)
    client.registry.register("test.pong", Ping)
    streams, per_stream = 64, 60
    slowest = 0.0

    async def stream(address: str, first: int) -> None:
        nonlocal slowest
        for n in range(first, first + per_stream):
            started = time.monotonic()
            ping = Ping(n=n, padding="x" * (n % 7) * 4096)
            answer = await client.request(address, "test.ping", ping, timeout_s=5.0)
            slowest = max(slowest, time.monotonic() - started)
            assert answer.payloads[0] == ping

    async def answer_all() -> None:
        async for inbound in answers_to_send:
            await anyio.sleep(0)
            _pong(server, inbound)

    async with server.running(), client.running(), anyio.create_task_group() as answering:
        answering.start_soon(answer_all)
        assert server.address is not None
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for index in range(streams):
                    tg.start_soon(stream, server.address, index * per_stream)
        answering.cancel_scope.cancel()
    # A stuck read waits for unrelated traffic, or for a request timeout at the end.
    assert slowest < 1.0, f"a request waited {slowest:.2f} s for its answer"


def _pong(server: Node, inbound: Inbound) -> None:
    ping = inbound.envelope.payloads[0]
    assert isinstance(ping, Ping)
    server.reply(inbound, "test.pong", ping)
