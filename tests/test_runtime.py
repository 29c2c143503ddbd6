"""The Node runtime over real ZeroMQ sockets on loopback, in one process."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from consensus.core import Incoming, Outgoing, coalesce
from mesh.config import NodeConfig
from mesh.errors import MeshError, MessageTooLarge, RequestTimeout
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
              node_dir: Path | None = None, **config: object) -> Node:
    identity = Identity.generate()
    certificate = AUTHORITY.issue(name=name, public_key=identity.public_key, roles=["node"],
                                  not_after=int(time.time()) + 3600)
    return Node(config=NodeConfig(name=name, seeds=seeds or [], **config), identity=identity,
                certificate=certificate, authority_public_key=AUTHORITY.public_key, listen=listen,
                node_dir=node_dir)


def alive_names(node: Node) -> list[str]:
    if node.membership is None:
        return []
    return [m.name for m in node.membership.members() if m.state.value == "alive"]


def states_of(node: Node) -> dict[str, str]:
    assert node.membership is not None
    return {m.name: m.state.value for m in node.membership.members()}


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
            await until(lambda: alive_names(first) == ["second"]
                        and alive_names(second) == ["first"])
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
    small = {"message_bytes_max": 2048, "value_bytes_max": 512, "key_bytes_max": 64}
    async with pair(envelope={"envelope_size_bytes_max": 4096, "batch_entries_max": 50},
                    gossip=small) as (
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


FAST = {"tick_interval_ms": 10,
        "membership": {"probe_interval_ms": 100, "probe_timeout_ms": 40,
                       "suspicion_min_multiplier": 2.0, "suspicion_max_multiplier": 2.0,
                       "push_pull_interval_ms": 500, "join_retry_interval_ms": 100},
        "gossip": {"round_interval_ms": 50}}


async def test_a_crashed_member_is_declared_dead_and_rejoins_alive_with_higher_incarnation(
) -> None:
    watcher = make_node("watcher", **FAST)
    async with watcher.running():
        assert watcher.address is not None and watcher.membership is not None
        visitor = make_node("visitor", seeds=[watcher.address], **FAST)
        async with visitor.running():
            await until(lambda: states_of(watcher) == {"visitor": "alive"})
        # The visitor stopped without a word (cancelled, no leave): a crash.
        await until(lambda: states_of(watcher) == {"visitor": "suspect"})
        await until(lambda: states_of(watcher) == {"visitor": "dead"})
        dead_at = watcher.membership.member(visitor.node_id).incarnation  # type: ignore[union-attr]
        again = Node(config=visitor.config, identity=visitor.identity,
                     certificate=visitor.certificate,
                     authority_public_key=AUTHORITY.public_key)
        async with again.running():
            await until(lambda: states_of(watcher) == {"visitor": "alive"})
            member = watcher.membership.member(visitor.node_id)
            assert member is not None and member.incarnation > dead_at


async def test_a_leaving_member_is_shown_gone_at_once() -> None:
    watcher = make_node("watcher", **FAST)
    async with watcher.running():
        assert watcher.address is not None
        visitor = make_node("visitor", seeds=[watcher.address], **{**FAST, "leave_grace_ms": 50})
        async with visitor.running():
            await until(lambda: states_of(watcher) == {"visitor": "alive"})
            await visitor.leave()
        assert states_of(watcher) == {"visitor": "left"}
        status = watcher.status()
        assert [(p["name"], p["state"], p["left"]) for p in status["peers"]] == [
            ("visitor", "dead", True)]


async def test_gossip_values_spread_and_subscribers_see_changes_in_order() -> None:
    async with pair(**FAST) as (first, second):
        seen_by_callback: list[tuple[str, object]] = []
        second.gossip.on_change("app/", lambda c: seen_by_callback.append((c.key, c.value)))
        async with second.gossip.subscribe("app/") as changes:
            first.gossip.set("app/color", "blue")
            first.gossip.set("other/ignored", 1)
            first.gossip.set("app/color", "green")
            await until(lambda: second.gossip.get("app/color") == "green")
            first.gossip.delete("app/color")
            first.gossip.set("app/size", {"w": 3})
            await until(lambda: second.gossip.get("app/size") == {"w": 3}
                        and second.gossip.get("app/color") is None)
            received = []
            while changes.pending():
                change = await changes.next()
                received.append((change.key, change.kind.value, change.value))
        assert all(key.startswith("app/") for key, _, _ in received)
        colors = [(kind, value) for key, kind, value in received if key == "app/color"]
        assert colors[-1][0] == "deleted" and ("set", "green") in colors
        assert ("app/size", "set", {"w": 3}) in received
        assert seen_by_callback[-1] == ("app/size", {"w": 3})
        assert second.gossip.get("app/color") is None
        assert second.gossip.get("other/ignored") == 1


async def test_each_node_publishes_its_metadata_in_gossip() -> None:
    async with pair(**FAST) as (first, second):
        key = f"node/{first.node_id.hex()}"
        await until(lambda: second.gossip.get(key) is not None)
        assert second.gossip.get(key)["name"] == "first"  # type: ignore[index]
        assert second.gossip.get(key)["listen"] == first.address  # type: ignore[index]


async def test_a_slow_subscriber_loses_the_oldest_changes_and_is_told() -> None:
    node = make_node("solo", **{**FAST, "gossip": {"subscription_queue_max": 3}})
    async with node.running():
        subscription = node.gossip.subscribe("k/")
        for index in range(10):
            node.gossip.set(f"k/{index}", index)
        assert subscription.missed == 7 and subscription.pending() == 3
        assert [(await subscription.next()).key for _ in range(3)] == ["k/7", "k/8", "k/9"]
        subscription.close()
        with pytest.raises(StopAsyncIteration):
            await subscription.next()


async def test_a_client_node_has_no_gossip_state() -> None:
    client = make_node("client", listen=False)
    with pytest.raises(MeshError, match="holds no gossip state"):
        client.gossip.get("x")


async def test_members_are_remembered_for_a_restart_without_seeds(tmp_path: Path) -> None:
    first = make_node("first", **FAST)
    async with first.running():
        assert first.address is not None
        second = make_node("second", seeds=[first.address], node_dir=tmp_path, **FAST)
        async with second.running():
            await until(lambda: alive_names(second) == ["first"])
            await until(lambda: (tmp_path / "members.json").exists())
        # Restarted with no seeds at all, it finds the cluster from what it remembered.
        again = Node(config=second.config.model_copy(update={"seeds": []}),
                     identity=second.identity, certificate=second.certificate,
                     authority_public_key=AUTHORITY.public_key, node_dir=tmp_path)
        async with again.running():
            await until(lambda: alive_names(again) == ["first"])


class Recorder:
    """A core that records what it is fed and, per Note, answers to a given node."""

    def __init__(self, reply_to: bytes | None = None) -> None:
        self.fed: list[tuple[bytes, str]] = []
        self.outbox: list[Outgoing] = []
        self.reply_to = reply_to

    @property
    def message_kinds(self) -> dict[str, type[BaseModel]]:
        return {"test.core": Note}

    def step(self, message: Incoming) -> None:
        assert isinstance(message.payload, Note)
        self.fed.append((message.sender, message.payload.text))

    def tick(self, now: float) -> None:
        pass

    def take_outbox(self) -> list[Outgoing]:
        outbox, self.outbox = self.outbox, []
        return outbox


async def test_a_core_outbox_goes_out_one_envelope_per_run_of_a_kind_to_a_peer() -> None:
    async with pair() as (first, second):
        sender, receiver = Recorder(), Recorder()
        first.register_core(sender)
        second.register_core(receiver)
        envelopes_before = first.counters.sent
        first.send_core_messages([Outgoing("test.core", (Note(text=str(i)),),
                                           to_node=second.node_id) for i in range(20)])
        await until(lambda: len(receiver.fed) == 20)
        assert receiver.fed == [(first.node_id, str(i)) for i in range(20)]
        # Membership may send meanwhile: allow it a few envelopes.
        assert first.counters.sent - envelopes_before < 5


async def test_core_messages_to_the_node_itself_are_handed_over_in_memory() -> None:
    node = make_node("alone")
    core = Recorder()
    node.register_core(core)
    async with node.running():
        node.send_core_messages([Outgoing("test.core", (Note(text="a"), Note(text="b")),
                                          to_node=node.node_id)])
        await until(lambda: len(core.fed) == 2)
    assert core.fed == [(node.node_id, "a"), (node.node_id, "b")]
    assert node.counters.sent_local == 1 and node.counters.received_local == 1
    assert node.counters.sent == 0  # nothing sealed, nothing on a socket


def test_coalesce_keeps_each_destinations_order_and_every_payload() -> None:
    a, b = b"a" * 16, b"b" * 16
    notes = [Note(text=str(i)) for i in range(6)]
    outbox = [
        Outgoing("k1", (notes[0],), to_node=a),
        Outgoing("k1", (notes[1],), to_node=b),
        Outgoing("k1", (notes[2],), to_node=a),
        Outgoing("k2", (notes[3],), to_node=a),
        Outgoing("k1", (notes[4],), to_node=a),
        Outgoing("k1", (notes[5],), to_address="tcp://x:1"),
    ]
    assert coalesce(outbox) == [
        Outgoing("k1", (notes[0], notes[2]), to_node=a),
        Outgoing("k2", (notes[3],), to_node=a),
        Outgoing("k1", (notes[4],), to_node=a),  # never ahead of the k2 sent before it
        Outgoing("k1", (notes[1],), to_node=b),
        Outgoing("k1", (notes[5],), to_address="tcp://x:1"),
    ]


@given(st.lists(st.tuples(st.sampled_from(["k1", "k2"]), st.sampled_from([b"a" * 16, b"b" * 16]),
                          st.booleans()), max_size=40))
def test_coalesce_never_reorders_what_one_destination_receives(
    plan: list[tuple[str, bytes, bool]],
) -> None:
    outbox = [Outgoing(kind, (Note(text=str(i)),), to_node=node, attach_certificate=cert)
              for i, (kind, node, cert) in enumerate(plan)]
    merged = coalesce(outbox)

    def stream(messages: list[Outgoing], node: bytes) -> list[tuple[str, bool, str]]:
        return [(m.kind, m.attach_certificate, p.text)  # type: ignore[attr-defined]
                for m in messages if m.to_node == node for p in m.payloads]

    for node in {n for _, n, _ in plan}:
        assert stream(merged, node) == stream(outbox, node)
    assert len(merged) <= len(outbox)
    for before, after in itertools.pairwise(merged):  # neighbours to one node: other kinds
        if before.to_node == after.to_node:
            assert (before.kind, before.attach_certificate) != (after.kind,
                                                                after.attach_certificate)
