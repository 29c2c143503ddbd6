"""The Node runtime over real ZeroMQ sockets on loopback, in one process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from pydantic import BaseModel

from mesh.config import NodeConfig
from mesh.errors import MessageTooLarge, RequestTimeout
from mesh.identity import ClusterAuthority, Identity
from mesh.runtime import Inbound, Node

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Note(BaseModel):
    text: str


class Echo(BaseModel):
    value: int


AUTHORITY = ClusterAuthority(Identity.generate())


def make_node(name: str, *, seeds: list[str] | None = None, listen: bool = True,
              **config: object) -> Node:
    identity = Identity.generate()
    certificate = AUTHORITY.issue(name=name, public_key=identity.public_key, roles=["node"],
                                  not_after=int(time.time()) + 3600)
    return Node(config=NodeConfig(name=name, seeds=seeds or [], **config), identity=identity,
                certificate=certificate, authority_public_key=AUTHORITY.public_key, listen=listen)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        while not condition():
            await anyio.sleep(0.01)


@asynccontextmanager
async def pair(**config: object) -> AsyncIterator[tuple[Node, Node]]:
    first = make_node("first", **config)
    async with first.running():
        assert first.address is not None
        second = make_node("second", seeds=[first.address], **config)
        async with second.running():
            await until(lambda: first.peer_exchange is not None
                        and len(first.peer_exchange.peers()) == 1
                        and second.peer_exchange is not None
                        and len(second.peer_exchange.peers()) == 1)
            yield first, second


async def test_send_by_node_id_reaches_the_handler_once_per_payload() -> None:
    async with pair() as (first, second):
        seen: list[tuple[bytes, str]] = []
        second.on("test.note", Note, lambda m: seen.extend(
            (m.envelope.sender, p.text) for p in m.envelope.payloads))  # type: ignore[attr-defined]
        first.registry.register("test.note", Note)
        notes = [Note(text=str(i)) for i in range(1000)]
        assert await first.send(second.node_id, "test.note", notes)
        await until(lambda: len(seen) == 1000)
        assert seen == [(first.node_id, str(i)) for i in range(1000)]


async def test_a_big_batch_is_split_to_fit_the_envelope_limits() -> None:
    async with pair(envelope={"envelope_size_bytes_max": 4096, "batch_entries_max": 50}) as (
        first, second,
    ):
        envelopes: list[int] = []
        second.on("test.note", Note, lambda m: envelopes.append(len(m.envelope.payloads)))
        first.registry.register("test.note", Note)
        assert await first.send(second.node_id, "test.note", [Note(text="x" * 100)] * 300)
        await until(lambda: sum(envelopes) == 300)
        assert len(envelopes) > 6 and max(envelopes) <= 50
        with pytest.raises(MessageTooLarge, match="envelope_size_bytes_max"):
            await first.send(second.node_id, "test.note", [Note(text="y" * 5000)])


async def test_request_and_reply_round_trip() -> None:
    async with pair() as (first, second):
        def answer(inbound: Inbound) -> None:
            (request,) = inbound.envelope.payloads
            assert isinstance(request, Echo)
            second.reply(inbound, "test.echo", Echo(value=request.value + 1))

        second.on("test.echo", Echo, answer)
        first.registry.register("test.echo", Echo)
        for value in range(20):
            answer = await first.request(second.node_id, "test.echo", Echo(value=value))
            assert answer.sender == second.node_id
            assert answer.payloads == (Echo(value=value + 1),)


async def test_request_without_answer_times_out_and_is_forgotten() -> None:
    async with pair() as (first, second):
        second.on("test.echo", Echo, lambda m: None)
        first.registry.register("test.echo", Echo)
        with pytest.raises(RequestTimeout, match=r"test\.echo"):
            await first.request(second.node_id, "test.echo", Echo(value=1), timeout_s=0.2)
        assert first._pending == {}


async def test_a_failing_handler_is_counted_and_the_node_keeps_serving() -> None:
    async with pair() as (first, second):
        def explode(_: Inbound) -> None:
            raise RuntimeError("handler bug")

        second.on("test.note", Note, explode)
        first.registry.register("test.note", Note)
        await first.send(second.node_id, "test.note", [Note(text="boom")])
        await until(lambda: second.counters.handler_errors == 1)
        client = make_node("client", listen=False)
        async with client.running():
            assert second.address is not None
            status = await client.request(second.address, "mesh.status_request",
                                          second.registry.model_for("mesh.status_request")())  # type: ignore[misc]
            assert status.sender == second.node_id


async def test_send_to_an_unknown_node_is_refused_and_counted() -> None:
    node = make_node("lonely")
    async with node.running():
        node.registry.register("test.note", Note)
        assert not await node.send(b"\x01" * 16, "test.note", [Note(text="x")])
        assert node.counters.send_dropped == 1


async def test_dead_peer_is_suspected_then_dead_and_seen_again_when_back() -> None:
    timing = {"peers": {"tick_interval_ms": 10, "exchange_interval_ms": 50,
                        "suspect_after_ms": 200, "dead_after_ms": 400,
                        "forget_after_ms": 5000}}
    watcher = make_node("watcher", **timing)
    async with watcher.running():
        assert watcher.address is not None and watcher.peer_exchange is not None
        px = watcher.peer_exchange
        states = lambda: [p.state.value for p in px.peers()]  # noqa: E731
        visitor = make_node("visitor", seeds=[watcher.address], **timing)
        async with visitor.running():
            await until(lambda: states() == ["alive"])
        await until(lambda: states() == ["suspect"])
        await until(lambda: states() == ["dead"])
        again = Node(config=visitor.config, identity=visitor.identity,
                     certificate=visitor.certificate,
                     authority_public_key=AUTHORITY.public_key)
        async with again.running():
            await until(lambda: states() == ["alive"])
