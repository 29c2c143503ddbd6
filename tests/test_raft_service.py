"""The Raft service inside one node process: Readies carried out from loop callbacks.

A single-voter node in this process (real sockets, real files with fsync): its
writes are answered, and a storage failure met while carrying out a Ready ends
the node with that error instead of being lost in the event loop's exception
handler. Both ways a Ready is carried out outside ``run`` are covered: by a
queued callback (writes from the node's own client) and at the end of a batch
of received frames (writes from a client over the network). Writes beyond
``calls_pending_max`` are refused as busy, and the client's retries apply each once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest

from mesh.config import NodeConfig
from mesh.identity import ClusterAuthority, Identity
from mesh.kv_client import KVClient
from mesh.raft_storage import FileStorage
from mesh.raftlog import StorageFailed
from mesh.runtime import Node

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

AUTHORITY = ClusterAuthority(Identity.generate())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def single_voter(node_dir: Path, **raft: object) -> Node:
    identity = Identity.generate()
    certificate = AUTHORITY.issue(name="voter", public_key=identity.public_key, roles=["node"],
                                  not_after=int(time.time()) + 3600)
    config = NodeConfig(name="voter", raft={"voters": [identity.node_id_hex],
                                            "election_timeout_ms": 300,
                                            "heartbeat_interval_ms": 30, **raft})
    node_dir.mkdir(parents=True, exist_ok=True)
    return Node(config=config, identity=identity, certificate=certificate,
                authority_public_key=AUTHORITY.public_key, node_dir=node_dir)


@asynccontextmanager
async def network_client(voter: Node) -> AsyncIterator[KVClient]:
    """A client node of its own in this process, reaching ``voter`` through its socket."""
    identity = Identity.generate()
    certificate = AUTHORITY.issue(name="client", public_key=identity.public_key,
                                  roles=["client"], not_after=int(time.time()) + 3600)
    node = Node.client(config=NodeConfig(name="client"), identity=identity,
                       certificate=certificate, authority_public_key=AUTHORITY.public_key)
    assert voter.address is not None
    address = voter.address
    client = KVClient(node, voter.config.raft, lambda: [address])
    async with node.running(), anyio.create_task_group() as tg:
        tg.start_soon(client.run)
        yield client
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("via", ["own client", "network"])
async def test_writes_are_answered_and_a_storage_failure_ends_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via: str,
) -> None:
    node = single_voter(tmp_path / "voter")
    with pytest.raises(BaseExceptionGroup) as raised:
        async with node.running(), AsyncExitStack() as stack:
            if via == "network":
                kv = await stack.enter_async_context(network_client(node))
            else:
                kv = node.kv
            with anyio.fail_after(20):
                for number in range(50):
                    written = await kv.put(f"k/{number}", b"v")
                    assert written.ok
                item = await kv.get("k/49")
                assert item is not None and item.value == b"v"
                raft = node.raft
                assert raft is not None and raft.counters["fsyncs"] >= 50

                def broken_disk(storage: FileStorage) -> None:
                    raise StorageFailed("fsync failed: injected by the test")

                monkeypatch.setattr(FileStorage, "make_durable", broken_disk)
                with anyio.move_on_after(5):
                    await kv.put("k/lost", b"never acknowledged")
                    raise AssertionError("a write was acknowledged without its fsync")
                await anyio.sleep_forever()  # the node's own failure ends this block
    assert raised.group_contains(StorageFailed, match="injected by the test")


async def test_writes_past_calls_pending_max_are_refused_then_retried_and_applied_once(
    tmp_path: Path,
) -> None:
    node = single_voter(tmp_path / "voter", calls_pending_max=4, client_retry_interval_ms=5)
    async with node.running(), network_client(node) as kv:
        results: dict[int, int] = {}

        async def put(number: int) -> None:
            results[number] = (await kv.put(f"k/{number}", b"v")).version

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for number in range(60):  # one batch, far more than four pending
                    tg.start_soon(put, number)
        raft = node.raft
        assert raft is not None and raft.counters["calls_refused_busy"] > 0
        assert results == dict.fromkeys(range(60), 1)  # each applied once
        assert len(raft.kv) == 60
