"""The Raft service inside one node process: Readies carried out from loop callbacks.

A single-voter node in this process (real sockets, real files with fsync): its
writes are answered, and a storage failure met while carrying out a Ready ends
the node with that error instead of being lost in the event loop's exception
handler. Both ways a Ready is carried out outside ``run`` are covered: by a
queued callback (writes from the node's own client) and at the end of a batch
of received frames (writes from a client over the network). Writes beyond
``calls_pending_max`` are refused as busy, and the client's retries apply each once.
The key writes of one payload share entries (batches) within their bounds, and
snapshots and compaction count the requests in them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest

from consensus.kvstore import (
    CommandError,
    LeaseGrant,
    Put,
    Request,
    Response,
    decode_entry,
    decode_response,
    encode_command,
)
from mesh.config import NodeConfig
from mesh.identity import ClusterAuthority, Identity
from mesh.kv_client import KVClient
from mesh.kv_messages import KVAnswer
from mesh.raft_service import RaftService
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


class _Answers:
    """What ``submit_writes`` answered: applied writes by call id, and other answers."""

    def __init__(self) -> None:
        self.written: dict[int, Response] = {}
        self.other: dict[int, KVAnswer] = {}

    def answer(self, answer: KVAnswer) -> None:
        self.other[answer.call_id] = answer

    def wrote(self, call_ids: list[int], responses: list[bytes]) -> None:
        for call_id, response in zip(call_ids, responses, strict=True):
            self.written[call_id] = decode_response(response)

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(10):
            while len(self.written) + len(self.other) < count:
                await anyio.sleep(0.005)


def _entries_since(service: RaftService, after: int) -> list[list[Request | CommandError]]:
    storage = service.storage
    return [decode_entry(entry.data) for entry in
            storage.entries(after + 1, storage.last_index() + 1, 1 << 30)]


async def _leading(node: Node) -> RaftService:
    assert (await node.kv.put("warm", b"up")).ok  # elected, and the first entry applied
    service = node.raft
    assert service is not None
    return service


async def test_a_payloads_key_writes_share_entries_in_order_and_each_is_answered(
    tmp_path: Path,
) -> None:
    node = single_voter(tmp_path / "voter", writes_per_entry_max=4)
    async with node.running():
        service = await _leading(node)
        before = service.storage.last_index()
        commands = [encode_command(Put(f"k/{n}", b"v")) for n in range(10)]
        commands[5] = encode_command(LeaseGrant(60_000))
        answers = _Answers()
        service.submit_writes(range(10), [f"c/{n}" for n in range(10)], [1] * 10, commands,
                              answers.answer, answers.wrote)
        await answers.wait_for(10)
        assert answers.other == {}
        entries = _entries_since(service, before)
        # Four, the rest of the run up to the lease grant, the grant alone, four more.
        assert [len(entry) for entry in entries] == [4, 1, 1, 4]
        assert [request.client_id for entry in entries for request in entry] == [  # type: ignore[union-attr]
            f"c/{n}" for n in range(10)]
        indexes = [before + 1] * 4 + [before + 2, before + 3] + [before + 4] * 4
        assert [answers.written[n].index for n in range(10)] == indexes
        assert answers.written[5].lease_id == before + 3  # its own entry's index
        assert all(answers.written[n].version == 1 for n in range(10) if n != 5)
        assert service.counters["writes_applied"] == 11 and len(service.kv) == 10
        assert service.counters["batch_entries"] == 2
        assert service.status()["pending_calls"] == 0


async def test_a_batch_stays_within_max_bytes_per_append(tmp_path: Path) -> None:
    node = single_voter(tmp_path / "voter", max_bytes_per_append=4096)
    async with node.running():
        service = await _leading(node)
        before = service.storage.last_index()
        commands = [encode_command(Put(f"k/{n}", bytes(1000))) for n in range(9)]
        answers = _Answers()
        service.submit_writes(range(9), ["c"] * 9, range(1, 10), commands,
                              answers.answer, answers.wrote)
        await answers.wait_for(9)
        assert answers.other == {} and len(answers.written) == 9
        sizes = [len(entry.data) for entry in service.storage.entries(
            before + 1, service.storage.last_index() + 1, 1 << 30)]
        assert len(sizes) > 1 and max(sizes) <= 4096
        assert sum(len(entry) for entry in _entries_since(service, before)) == 9


async def test_a_retry_of_a_batched_write_in_flight_takes_over_its_answer(
    tmp_path: Path,
) -> None:
    node = single_voter(tmp_path / "voter")
    async with node.running():
        service = await _leading(node)
        answers = _Answers()
        commands = [encode_command(Put("k", b"one")), encode_command(Put("k", b"two"))]
        # Both calls before the entry is carried out: the second is a retry of seq 2.
        service.submit_writes([1, 2], ["c", "c"], [1, 2], commands, answers.answer,
                              answers.wrote)
        service.submit_writes([3], ["c"], [2], commands[1:], answers.answer, answers.wrote)
        await answers.wait_for(2)
        assert sorted(answers.written) == [1, 3] and answers.other == {}
        assert answers.written[3].version == 2
        item = service.kv.get("k")
        assert item is not None and item.version == 2  # applied once


async def test_snapshots_and_compaction_count_requests_not_entries(tmp_path: Path) -> None:
    node = single_voter(tmp_path / "voter", snapshot_interval_entries=50,
                        snapshot_keep_entries=30)
    async with node.running():
        service = await _leading(node)
        storage = service.storage
        answers = _Answers()
        for batch in range(3):  # three entries of 25 writes each
            service.submit_writes(range(batch * 25, batch * 25 + 25), ["c"] * 25,
                                  range(batch * 25 + 1, batch * 25 + 26),
                                  [encode_command(Put(f"k/{n}", b"v")) for n in range(25)],
                                  answers.answer, answers.wrote)
            await answers.wait_for(batch * 25 + 25)
        last = storage.last_index()
        # 76 requests in 4 entries: a snapshot after 50 of them, at the third entry,
        # keeping the entries with the last 30 requests (the second and third).
        assert service.counters["snapshots_taken"] == 1
        assert storage.snapshot().index == last - 1
        assert storage.first_index() == last - 2
