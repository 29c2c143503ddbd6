"""Three Raft voters as real processes: failover under client load, and log recovery.

The cluster and the recorded load are ``raft_harness``'s: the whole history must
be linearizable and every acknowledged write present at the end. SIGKILL and
SIGSTOP stand for a crash and a long pause. Logs are damaged as a crash would
(a torn tail: cut and carry on) and as a crash cannot (a flipped byte
mid-segment: ``node run`` refuses to start, in one line).
"""

from __future__ import annotations

import random
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from conftest import LocalCluster, NodeProcess, run_cli
from mesh.kv_client import KVClient
from mesh.raft_service import RAFT_DIR_NAME
from mesh.raftlog.records import RecordType
from mesh.raftlog.segment import SegmentScan
from raft_harness import (
    VOTERS,
    Load,
    caught_up,
    eventually,
    finish,
    leader_now,
    node_named,
    own_client,
    progress,
    raft_status,
    reader,
    run,
    start_voters,
    writer,
)

pytestmark = pytest.mark.timeout(120)


# -- failover under load ---------------------------------------------------------------


def _pause_or_kill(node: NodeProcess, fault: str) -> None:
    if fault == "sigkill":
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)
    else:
        node.process.send_signal(signal.SIGSTOP)


@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
def test_leader_fault_under_load_keeps_every_acknowledged_write_and_linearizability(
    local_cluster: LocalCluster, tmp_path: Path, fault: str,
) -> None:
    start_voters(local_cluster)
    load = Load()
    rng = random.Random(f"raft-processes-{fault}")
    paused: list[NodeProcess] = []

    async def scenario() -> None:
        old = await leader_now(local_cluster)
        old_name, old_term = old["name"], old["raft"]["term"]
        async with AsyncExitStack() as stack:
            clients = {name: await stack.enter_async_context(
                own_client(local_cluster.directory, name))
                for name in ("w1", "w2", "w3", "r1", "r2", "probe")}
            async with anyio.create_task_group() as workers:
                for name in ("w1", "w2", "w3"):
                    workers.start_soon(writer, clients[name], name, load,
                                       random.Random(rng.random()))
                for name in ("r1", "r2"):
                    workers.start_soon(reader, clients[name], name, load,
                                       random.Random(rng.random()))
                await progress(load, 150, what="before the fault")

                victim = node_named(local_cluster, old_name)
                _pause_or_kill(victim, fault)
                if fault == "sigstop":
                    paused.append(victim)
                new = await leader_now(local_cluster, not_id=old["node_id"],
                                       above_term=old_term)
                probe = clients["probe"]
                assert await load.record("probe", "put", "probe", (b"new leader",),
                                         probe.put("probe", b"new leader")) == 1
                await progress(load, 150, what="with the new leader")

                if fault == "sigkill":
                    await anyio.to_thread.run_sync(
                        lambda: local_cluster.start(old_name, seeds=[new["listen"]]))
                else:
                    victim.process.send_signal(signal.SIGCONT)
                    paused.clear()

                async def rejoined() -> bool:
                    node = (await raft_status(local_cluster)).get(old_name)
                    return (node is not None and node["raft"]["role"] == "follower"
                            and node["raft"]["term"] >= new["raft"]["term"])

                await eventually(rejoined, timeout_s=20,
                                 what=f"{old_name} to rejoin as a follower")
                await progress(load, 100, what=f"with {old_name} back")
                load.stop.set()
                workers.cancel_scope.deadline = time.monotonic() + 30  # in-flight ops end

            leader = await leader_now(local_cluster)
            target = leader["raft"]["commit_index"]
            back = await caught_up(local_cluster, old_name, target)
            assert back["raft"]["keys"] == leader["raft"]["keys"]
            await finish(load, clients["probe"], tmp_path)

    try:
        run(scenario)
    finally:
        for node in paused:
            node.process.send_signal(signal.SIGCONT)


def test_after_the_leader_dies_a_client_waits_on_it_once_not_again_when_redirected_back(
    local_cluster: LocalCluster,
) -> None:
    start_voters(local_cluster)

    async def scenario() -> None:
        old = await leader_now(local_cluster)
        async with own_client(local_cluster.directory, "c") as kv:
            first = await kv.put("k", "before")  # the client now writes to the leader
            victim = node_named(local_cluster, old["name"])
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait(timeout=10)
            with anyio.fail_after(10):
                after = await kv.put("k", "after")
            assert after.ok and after.version == first.version + 1  # applied once
            # Its first attempt went to the dead leader and got no answer. The
            # survivors name the dead leader until their election timeouts (above the
            # client's attempt timeout) run out; the client asks them again instead
            # of waiting on it a second time.
            assert kv.counters["attempt_timeouts"] == 1, kv.counters
            assert kv.counters["redirects_to_silent"] >= 1, kv.counters
            new = await leader_now(local_cluster, not_id=old["node_id"])
            assert new["node_id"] != old["node_id"]

    run(scenario)


# -- recovery from a damaged log ----------------------------------------------------------


def _records(segment: Path) -> list[tuple[int, int, int]]:
    scan = SegmentScan(segment, segment.read_bytes(), is_last=True, first_lsn=None)
    return [(record.type, record.offset, record.size) for record in scan.records()]


def _segments(node_dir: Path) -> list[Path]:
    return sorted((node_dir / RAFT_DIR_NAME).glob("*.seg"))


def test_a_torn_tail_is_cut_and_caught_up_but_a_flipped_byte_stops_the_node(
    local_cluster: LocalCluster,
) -> None:
    start_voters(local_cluster)

    async def scenario() -> None:
        leader = await leader_now(local_cluster)
        victim_name = next(name for name in VOTERS if name != leader["name"])
        victim = node_named(local_cluster, victim_name)
        async with own_client(local_cluster.directory, "writer") as kv:
            for i in range(30):
                assert (await kv.put(f"before/{i}", f"value {i}")).ok
            first = leader["raft"]["commit_index"]
            await caught_up(local_cluster, victim_name, first + 30)

            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait(timeout=10)
            for i in range(20):  # the victim misses these
                assert (await kv.put(f"while-down/{i}", f"value {i}")).ok

            # A torn tail: the last record of the last segment cut in the middle.
            segment = _segments(victim.node_dir)[-1]
            _, offset, size = _records(segment)[-1]
            cut_at = offset + size // 2
            with open(segment, "r+b") as file:
                file.truncate(cut_at)

            await anyio.to_thread.run_sync(
                lambda: local_cluster.start(victim_name, seeds=[leader["listen"]]))
            for i in range(10):
                assert (await kv.put(f"after/{i}", f"value {i}")).ok
            current = await leader_now(local_cluster)
            back = await caught_up(local_cluster, victim_name,
                                   current["raft"]["commit_index"])
            assert back["raft"]["keys"] == current["raft"]["keys"] == 60
            assert back["raft"]["log"]["recovery_bytes_truncated"] == size // 2
            log_text = (victim.node_dir / "node.log").read_text()
            assert "cut a torn tail" in log_text and segment.name in log_text

            # A flipped byte in a record that valid records follow: not a crash.
            restarted = node_named(local_cluster, victim_name)
            restarted.process.send_signal(signal.SIGTERM)
            assert restarted.process.wait(timeout=15) == 0
            segment = _segments(victim.node_dir)[0]
            entries = [(o, s) for t, o, s in _records(segment) if t == RecordType.ENTRY]
            assert len(entries) >= 40, len(entries)
            offset, size = entries[len(entries) // 2]
            data = bytearray(segment.read_bytes())
            data[offset + size // 2] ^= 0x40
            segment.write_bytes(bytes(data))

            result = await anyio.to_thread.run_sync(lambda: run_cli(
                "node", "run", "--dir", str(victim.node_dir), "--listen", "tcp://127.0.0.1:0",
                check=False, timeout_s=60))
            assert result.returncode == 1, result.stderr
            assert "Traceback" not in result.stderr, result.stderr
            errors = [line for line in result.stderr.splitlines()
                      if line.startswith("agentmesh: error:")]
            assert len(errors) == 1, result.stderr
            assert segment.name in errors[0] and f"offset {offset}" in errors[0]
            assert "corrupt" in errors[0] and "not a torn write" in errors[0]

            # The other two voters carry on.
            assert (await kv.put("still", "served")).ok
            assert (await kv.get("still")) is not None

    run(scenario)


# -- answers to concurrent clients ------------------------------------------------------


def test_concurrent_calls_of_several_clients_are_each_answered_without_a_retry(
    local_cluster: LocalCluster,
) -> None:
    start_voters(local_cluster, ("solo",))

    async def scenario() -> None:
        await leader_now(local_cluster, voters=1)
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(
                own_client(local_cluster.directory, f"c{i}")) for i in range(6)]
            for client in clients:  # each client has found the leader and been answered
                assert (await client.put("warm-up", "x")).ok

            async def calls(client: KVClient, index: int) -> None:
                for n in range(5):
                    assert (await client.put(f"k{index}", str(n))).ok
                    assert (await client.get(f"k{index}")) is not None

            async with anyio.create_task_group() as tg:
                for index, client in enumerate(clients):
                    tg.start_soon(calls, client, index)
            timeouts = {c.client_id: c.counters["attempt_timeouts"] for c in clients}
            assert not any(timeouts.values()), f"attempts that got no answer: {timeouts}"

    run(scenario)
