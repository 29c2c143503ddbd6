"""KVClient sessions: many writes in flight from one client, each applied once and answered."""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from conftest import LocalCluster
from consensus.kvstore import ErrorCode
from mesh.config import RaftConfig
from mesh.identity import read_private_key
from mesh.kv_client import KVClient, KVInvalid, KVUnavailable, _Session
from mesh.kv_messages import GET_MANY_KEYS_MAX, KV_CALL, KV_WRITES, KVCall, PendingWrite
from mesh.layout import NODE_KEY
from mesh.transport import Route

pytestmark = pytest.mark.timeout(120)


def test_a_new_session_takes_one_write_until_it_is_answered() -> None:
    session = _Session("c/0")
    assert session.may_take(32)
    assert session.take() == 1
    assert not session.may_take(32)  # seq 2 could overtake seq 1, which opens the session
    session.in_flight.discard(1)
    session.started = True
    assert session.may_take(32)


def test_a_session_keeps_its_writes_in_flight_within_one_window() -> None:
    session = _Session("c/0", next_seq=10, started=True)
    assert [session.take() for _ in range(3)] == [10, 11, 12]
    assert session.may_take(4)  # 10..13 spans 4 numbers
    session.take()
    assert not session.may_take(4)  # 14 would be 5 past the oldest in flight, 10
    session.in_flight.discard(11)
    assert not session.may_take(4)  # 10 is still out
    session.in_flight.discard(10)
    assert session.may_take(4)


def test_a_write_call_built_without_validation_equals_the_validated_one() -> None:
    # Writes skip pydantic (consensus.trusted), so every field must be given as
    # validation would store it, or the call would differ from what a voter reads.
    client = KVClient.__new__(KVClient)
    client.client_id = "c"
    client._call_ids = itertools.count(7)
    pending = client._new_call(("c/0", 3, b"\x93\x01"))
    assert isinstance(pending, PendingWrite)
    built = pending.as_call()
    assert built == KVCall(call_id=7, client_id="c/0", seq=3, command=b"\x93\x01")
    assert built.model_dump() == KVCall.model_validate(built.model_dump()).model_dump()


def _bare_client(election_timeout_ms: int) -> KVClient:
    client = KVClient.__new__(KVClient)
    client._config = RaftConfig(heartbeat_interval_ms=1, election_timeout_ms=election_timeout_ms)
    client._targets = lambda: ["tcp://a", "tcp://b", "tcp://c"]
    client._heard, client._silent, client._node_ids = {}, {}, {}
    client._local = None
    return client


def _answer_from(client: KVClient, address: str, node_id: bytes) -> None:
    inbound = SimpleNamespace(envelope=SimpleNamespace(sender=node_id),
                              route=Route(address=address))
    client._note_heard(inbound)  # type: ignore[arg-type]


def test_a_silent_voter_is_known_by_address_and_node_id_and_skipped_until_it_answers() -> None:
    client = _bare_client(election_timeout_ms=60_000)
    _answer_from(client, "tcp://a", b"node-a")
    client._note_silent("tcp://a")
    # A redirect may name it by address or by node id.
    assert client._recently_silent("tcp://a", None)
    assert client._recently_silent("tcp://elsewhere", b"node-a")
    assert not client._recently_silent("tcp://b", b"node-b")
    rotation = client._rotation(None)
    assert [client._next_target(rotation, "tcp://b") for _ in range(4)] == ["tcp://c"] * 4
    _answer_from(client, "tcp://a", b"node-a")  # it answers after all
    assert not client._recently_silent("tcp://a", b"node-a")
    assert client._next_target(rotation, "tcp://b") == "tcp://a"


def test_redirects_to_a_silent_voter_are_followed_again_after_twice_the_election_timeout(
) -> None:
    client = _bare_client(election_timeout_ms=20)
    silent_at = time.monotonic()
    client._note_silent("tcp://a")
    assert client._recently_silent("tcp://a", None)
    deadline = silent_at + 5
    while client._recently_silent("tcp://a", None):  # alive but cut off from us, maybe
        assert time.monotonic() < deadline, "redirects to it still refused after 5 s"
    assert time.monotonic() - silent_at >= 0.040
    # Picked by turn, it still comes last, while it has not answered.
    rotation = client._rotation(None)
    assert [client._next_target(rotation, "tcp://b") for _ in range(2)] == ["tcp://c"] * 2
    # With every other target silent too, the next one is still some other one.
    client._note_silent("tcp://b")
    client._note_silent("tcp://c")
    assert client._next_target(client._rotation(None), "tcp://a") != "tcp://a"


def test_a_call_turns_to_the_listing_as_it_is_now_once_a_voter_moved() -> None:
    # A voter restarted at another port during a call: the call's turns must go to
    # the new address, not keep waiting on the old one that will never answer.
    client = _bare_client(election_timeout_ms=20)
    listing = ["tcp://a", "tcp://b", "tcp://c"]
    client._targets = lambda: list(listing)
    rotation = client._rotation(None)
    assert client._rotation(rotation) is rotation  # unchanged: the same turns go on
    assert client._next_target(rotation, "tcp://a") == "tcp://b"
    listing[2] = "tcp://c2"
    moved = client._rotation(rotation)
    assert moved is not rotation and moved.listed == ["tcp://a", "tcp://b", "tcp://c2"]
    turns = {client._next_target(moved, "tcp://a") for _ in range(4)}
    assert turns == {"tcp://b", "tcp://c2"}


def test_patience_doubles_per_silent_target_with_a_floor_after_any_silence() -> None:
    # Voters that never answer, attempts resolved at once: what matters is how long
    # each attempt was willing to wait, and on whom.
    client = _bare_client(election_timeout_ms=20)
    client._config = RaftConfig(heartbeat_interval_ms=1, election_timeout_ms=20,
                                client_attempt_timeout_ms=100, client_timeout_ms=300)
    client.counters = collections.Counter()
    client._call_ids = itertools.count(1)
    client._leader, client.client_id = "tcp://a", "c"
    client._attempts = {}
    listing = ["tcp://a", "tcp://b", "tcp://c"]
    client._targets = lambda: list(listing)
    waited: list[tuple[object, float]] = []

    def silent_attempt(target: object, call: KVCall, silence_s: float,
                       timeout_s: float) -> asyncio.Future[None]:
        waited.append((target, round(silence_s, 3)))
        if len(waited) == 4:
            listing[2] = "tcp://c2"  # c restarted at another port meanwhile
        client._attempts[call.call_id] = None  # type: ignore[assignment]  # _call deletes it
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    client._start_attempt = silent_attempt  # type: ignore[assignment,method-assign]

    async def call() -> None:
        with pytest.raises(KVUnavailable):
            await client._call({"read": "get", "key": "k"})

    anyio.run(call)
    assert waited[:9] == [
        ("tcp://a", 0.1),  # the leader, at first patience
        ("tcp://b", 0.2), ("tcp://c", 0.2),  # after a silence, never less than twice that
        ("tcp://b", 0.2),  # silent once: its own count, no more than the floor
        ("tcp://c2", 0.2),  # c restarted at another port: the new address is asked
        ("tcp://b", 0.4),  # silent twice: doubled again, for b alone
        ("tcp://a", 0.2), ("tcp://c2", 0.2), ("tcp://b", 0.8)]
    assert all(silence <= 1.6 for _, silence in waited)  # at most 16x


def _single_voter(cluster: LocalCluster) -> None:
    node_dir = cluster.make_node_dir("voter")
    voter = read_private_key(node_dir / NODE_KEY).node_id_hex
    (node_dir / "node.toml").write_text(f'name = "voter"\n[raft]\nvoters = ["{voter}"]\n')
    cluster.start("voter")


def test_hundreds_of_concurrent_writes_from_one_client_are_all_applied_once(
    local_cluster: LocalCluster,
) -> None:
    _single_voter(local_cluster)
    writes = 500

    async def scenario(directory: Path) -> None:
        async with KVClient.connect(directory) as kv:
            responses = []

            async def put(i: int) -> None:
                responses.append(await kv.put(f"k/{i % 50}", f"value {i}"))

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(writes):
                        tg.start_soon(put, i)
            refusals = [r.error for r in responses if r.error is not None]
            assert refusals == [], refusals[:5]
            # Each key was written ten times: versions 1..10, each exactly once.
            versions = sorted(r.version for r in responses)
            assert versions == sorted(list(range(1, 11)) * 50)
            assert kv.counters["calls"] == writes
            # One session's window (32 by default) could not hold 500 writes at once.
            assert len(kv._sessions) > 1
            item = await kv.get("k/0")
            assert item is not None and item.version == 10
            assert ErrorCode.STALE_REQUEST not in refusals

    anyio.run(scenario, local_cluster.directory)


def test_a_write_refused_as_session_expired_goes_again_under_a_new_session(
    local_cluster: LocalCluster,
) -> None:
    _single_voter(local_cluster)

    async def scenario(directory: Path) -> None:
        async with KVClient.connect(directory) as kv:
            # A session the store never saw open (its first write's fate unknown,
            # say): its next seq is refused as session_expired, and nothing applied.
            unknown = _Session(f"{kv.client_id}/lost", next_seq=7, started=True)
            kv._sessions.append(unknown)
            with anyio.fail_after(30):
                response = await kv.put("k", "v")
            assert response.ok and response.version == 1
            assert kv.counters["sessions_restarted"] == 1
            assert unknown not in kv._sessions
            item = await kv.get("k")
            assert item is not None and item.version == 1  # applied once

    anyio.run(scenario, local_cluster.directory)


def test_get_many_reads_the_present_keys_in_the_order_asked(
    local_cluster: LocalCluster,
) -> None:
    _single_voter(local_cluster)

    async def scenario(directory: Path) -> None:
        async with KVClient.connect(directory) as kv:
            for key in ("a", "b", "c"):
                assert (await kv.put(key, key * 2)).ok
            items = await kv.get_many(["c", "missing", "a"])
            assert [(item.key, item.value, item.version) for item in items] == [
                ("c", b"cc", 1), ("a", b"aa", 1)]
            assert await kv.get_many([]) == []
            with pytest.raises(ValueError, match="more than"):
                await kv.get_many([f"k{i}" for i in range(GET_MANY_KEYS_MAX + 1)])

    anyio.run(scenario, local_cluster.directory)


def test_arguments_the_store_would_refuse_raise_kv_invalid_and_send_nothing(
    local_cluster: LocalCluster,
) -> None:
    _single_voter(local_cluster)

    async def scenario(directory: Path) -> None:
        async with KVClient.connect(directory) as kv:
            refused = {
                "key must not be empty": lambda: kv.put("", "v"),
                "name must not be empty": lambda: kv.lock_acquire("", 5),
                "must be bytes or str, got int": lambda: kv.put("k", 5),  # type: ignore[arg-type]
                "must be bytes or str, got list": lambda: kv.put("k", [1, 2]),  # type: ignore[arg-type]
                "expect_version must be an integer": lambda: kv.compare_and_set("k", "v", -1),
                "positive, finite number of seconds, got -1": lambda: kv.lease_grant(-1),
                "positive, finite number of seconds, got nan": lambda: kv.lease_grant(math.nan),
                "positive, finite number of seconds, got inf": lambda: kv.lock_acquire(
                    "l", math.inf),
                "limit: Input should be greater than or equal to 1": lambda: kv.list(limit=0),
                "key: String should have at most": lambda: kv.get("k" * 100_000),
            }
            for problem, call in refused.items():
                with pytest.raises(KVInvalid, match=re.escape(problem)):
                    await call()
            assert kv.counters["envelopes_sent"] == 0
            assert (await kv.list()) == ([], False)

    anyio.run(scenario, local_cluster.directory)


def test_a_call_too_large_for_an_envelope_is_refused_and_its_batch_still_goes(
    local_cluster: LocalCluster,
) -> None:
    _single_voter(local_cluster)
    # Writes are checked against raft.max_bytes_per_append before they leave; a read
    # of many long keys is not, and can outgrow envelope_size_bytes_max (1 MiB).
    long_keys = [f"{i:04d}" + "k" * 2000 for i in range(GET_MANY_KEYS_MAX)]

    async def scenario(directory: Path) -> None:
        async with KVClient.connect(directory) as kv:
            assert (await kv.put("warm", b"up")).ok
            results: dict[str, object] = {}

            async def put(key: str, value: bytes) -> None:
                results[key] = (await kv.put(key, value)).ok

            async def read_many() -> None:
                try:
                    results["many"] = await kv.get_many(long_keys)
                except KVInvalid as exc:
                    results["many"] = str(exc)

            # Started together: the three calls are queued for one envelope.
            async with anyio.create_task_group() as tg:
                tg.start_soon(put, "small-1", b"a")
                tg.start_soon(read_many)
                tg.start_soon(put, "small-2", b"b")
            assert results["small-1"] is True and results["small-2"] is True
            assert "too large to send" in str(results["many"])
            assert kv.counters["calls_too_large"] == 1
            item = await kv.get("small-2")
            assert item is not None and item.value == b"b"

    anyio.run(scenario, local_cluster.directory)


def test_writes_leave_in_columns_and_calls_still_work_one_by_one(
    local_cluster: LocalCluster,
) -> None:
    _single_voter(local_cluster)

    async def scenario(directory: Path) -> None:
        async with KVClient.connect(directory) as kv:
            sent: list[str] = []
            send_nowait = kv.node.send_nowait

            def recording(to: bytes | str, kind: str, payloads: Any, **options: Any) -> bool:
                sent.append(kind)
                return send_nowait(to, kind, payloads, **options)

            kv.node.send_nowait = recording  # type: ignore[method-assign]
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for i in range(20):
                        tg.start_soon(kv.put, f"k/{i}", b"v")
                assert (await kv.get("k/3")) is not None
                assert set(sent) == {KV_WRITES, KV_CALL}
                assert kv.counters["answers_unmatched"] == 0
                # The voter still takes a write as a plain call, and answers it as one.
                sent.clear()
                kv._send = kv._send_one_by_one  # type: ignore[method-assign]
                response = await kv.put("k/3", b"again")
                assert response.ok and response.version == 2
                assert sent == [KV_CALL]

    anyio.run(scenario, local_cluster.directory)


def test_a_write_the_voter_cannot_decode_is_answered_invalid_not_in_columns(
    local_cluster: LocalCluster,
) -> None:
    _single_voter(local_cluster)

    async def scenario(directory: Path) -> None:
        async with KVClient.connect(directory) as kv:
            assert (await kv.put("warm", b"up")).ok
            with anyio.fail_after(30), pytest.raises(KVInvalid, match="command"):
                await kv._call((kv.client_id + "/x", 1, b"\xc1"))
            assert (await kv.put("after", b"still fine")).ok

    anyio.run(scenario, local_cluster.directory)


def test_writes_beyond_every_session_window_wait_in_line_and_all_complete(
    local_cluster: LocalCluster,
) -> None:
    _single_voter(local_cluster)
    writes, cancelled = 400, 20

    async def scenario(directory: Path) -> None:
        async with KVClient.connect(directory) as kv:
            # Room for 2 sessions x 4 writes: nearly every writer waits in line.
            kv._config = kv._config.model_copy(
                update={"client_sessions_max": 2, "kv_session_window": 4})
            searches = 0
            search = kv._session_with_room

            def counted() -> Any:
                nonlocal searches
                searches += 1
                return search()

            kv._session_with_room = counted  # type: ignore[method-assign]
            done: list[int] = []

            async def put(i: int) -> None:
                assert (await kv.put(f"k/{i}", b"v")).ok
                done.append(i)

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(writes):
                        tg.start_soon(put, i)
                    # Some writers give up while in line: their places pass on.
                    async with anyio.create_task_group() as doomed:
                        for i in range(writes, writes + cancelled):
                            doomed.start_soon(put, i)
                        await anyio.sleep(0)
                        doomed.cancel_scope.cancel()
            assert sorted(done) == list(range(writes))
            assert len(kv._sessions) == 2
            assert not kv._room_waiters
            # Woken one at a time, a writer searches the sessions a few times at
            # most; woken all at once, each would search again at every answer.
            assert searches < 6 * (writes + cancelled), searches
            items = await kv.get_many([f"k/{i}" for i in range(writes)])
            assert [item.version for item in items] == [1] * writes

    anyio.run(scenario, local_cluster.directory)
