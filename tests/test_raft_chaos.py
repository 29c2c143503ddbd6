"""Three Raft voters as real processes under a drawn schedule of crashes and pauses.

Each seed draws a schedule of faults: whom (the leader, a follower, or the leader
and a follower at once, which leaves no quorum), how (SIGKILL and a restart, or
SIGSTOP and SIGCONT), after how many more acknowledged operations, and for how
long. The recorded load of ``raft_harness`` runs throughout. At the end every
voter is back and has applied the leader's commit index with the same number of
keys, no voter died of anything but our signals, every operation was answered,
every acknowledged write is present and the whole history is linearizable.

The default suite runs a short schedule on named seeds; ``-m slow`` runs longer
ones on more. A seed that ever fails joins its list for good.
"""

from __future__ import annotations

import random
import signal
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from conftest import LocalCluster, NodeProcess
from raft_harness import (
    VOTERS,
    Load,
    caught_up,
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

FAULT_KINDS = ("kill leader", "kill follower", "stop leader", "stop follower",
               "kill leader and follower")
HOLD_S_MAX = 2.5
"""The longest a drawn fault lasts: below ``client_timeout_ms`` (15 s) with room for
the restart and the election after it, so that operations wait, not give up."""
QUORUM_LOSS_HOLD_S_MAX = 1.0


@dataclass(frozen=True)
class Fault:
    """One drawn fault: after ``after_ops`` more acknowledged operations, ``kind`` for
    ``hold_s`` seconds."""

    kind: str
    after_ops: int
    hold_s: float


def schedule(seed: int, faults: int) -> list[Fault]:
    """The faults seed ``seed`` draws, in order."""
    rng = random.Random(f"raft-chaos-{seed}")
    drawn = []
    for _ in range(faults):
        kind = rng.choice(FAULT_KINDS)
        longest = QUORUM_LOSS_HOLD_S_MAX if kind == "kill leader and follower" else HOLD_S_MAX
        drawn.append(Fault(kind, rng.randint(10, 80), round(rng.uniform(0.0, longest), 2)))
    return drawn


def chaos(cluster: LocalCluster, tmp_path: Path, seed: int, faults: int) -> None:
    start_voters(cluster)
    load = Load()
    rng = random.Random(f"raft-chaos-load-{seed}")
    stopped: set[str] = set()
    killed_by_us: set[int] = set()

    def signal_node(node: NodeProcess, how: signal.Signals) -> None:
        if how is signal.SIGKILL:
            killed_by_us.add(node.process.pid)
            node.process.send_signal(how)
            node.process.wait(timeout=10)
        else:
            node.process.send_signal(how)

    def died_on_its_own() -> list[str]:
        return [f"{n.name} (exit {n.process.returncode})" for n in cluster.nodes
                if n.process.poll() is not None and n.process.pid not in killed_by_us]

    async def inflict(fault: Fault) -> None:
        leader = await leader_now(cluster)
        others = [name for name in VOTERS if name != leader["name"]]
        follower = rng.choice(others)
        victims = {"kill leader": [leader["name"]], "stop leader": [leader["name"]],
                   "kill follower": [follower], "stop follower": [follower],
                   "kill leader and follower": [leader["name"], follower]}[fault.kind]
        stop = fault.kind.startswith("stop")
        for name in victims:
            signal_node(node_named(cluster, name), signal.SIGSTOP if stop else signal.SIGKILL)
            if stop:
                stopped.add(name)
        await anyio.sleep(fault.hold_s)  # the fault's length, drawn by the seed
        if stop:
            for name in victims:
                signal_node(node_named(cluster, name), signal.SIGCONT)
                stopped.discard(name)
            return
        survivor = next(name for name in VOTERS if name not in victims)
        seeds = [node_named(cluster, survivor).listen]
        for name in victims:
            await anyio.to_thread.run_sync(lambda name=name: cluster.start(name, seeds=seeds))

    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            clients = {name: await stack.enter_async_context(
                own_client(cluster.directory, name))
                for name in ("w1", "w2", "w3", "r1", "probe")}
            async with anyio.create_task_group() as workers:
                for name in ("w1", "w2", "w3"):
                    workers.start_soon(writer, clients[name], name, load,
                                       random.Random(rng.random()))
                workers.start_soon(reader, clients["r1"], "r1", load,
                                   random.Random(rng.random()))
                for number, fault in enumerate(schedule(seed, faults), 1):
                    await progress(load, fault.after_ops, timeout_s=40,
                                   what=f"before fault {number} ({fault})")
                    await inflict(fault)
                    assert not died_on_its_own(), died_on_its_own()
                await progress(load, 50, timeout_s=40, what="after the last fault")
                load.stop.set()
                workers.cancel_scope.deadline = time.monotonic() + 30  # in-flight ops end

            leader = await leader_now(cluster)
            target = leader["raft"]["commit_index"]
            for name in VOTERS:
                back = await caught_up(cluster, name, target)
                assert back["raft"]["role"] in ("leader", "follower"), back["raft"]
            statuses = await raft_status(cluster)
            keys = {name: statuses[name]["raft"]["keys"] for name in VOTERS}
            assert len(set(keys.values())) == 1, f"replicas differ in keys: {keys}"
            assert not died_on_its_own(), died_on_its_own()
            await finish(load, clients["probe"], tmp_path)
            # No fault outlasts the clients' patience (HOLD_S_MAX): every operation,
            # even one caught by a quorum loss, ends with an answer.
            assert load.counts["unknown"] == 0, dict(load.counts)

    try:
        run(scenario)
    finally:
        for name in stopped:
            node_named(cluster, name).process.send_signal(signal.SIGCONT)


def test_schedules_draw_every_kind_of_fault_and_are_fixed_by_their_seed() -> None:
    assert schedule(3, 12) == schedule(3, 12)
    assert schedule(3, 12) != schedule(4, 12)
    drawn = [fault for seed in range(1, 20) for fault in schedule(seed, 10)]
    assert {fault.kind for fault in drawn} == set(FAULT_KINDS)
    assert all(0 <= fault.hold_s <= HOLD_S_MAX and fault.after_ops >= 10 for fault in drawn)
    assert all(fault.hold_s <= QUORUM_LOSS_HOLD_S_MAX for fault in drawn
               if fault.kind == "kill leader and follower")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", [1])
def test_crashes_and_pauses_of_any_voter_lose_no_acknowledged_write(
    local_cluster: LocalCluster, tmp_path: Path, seed: int,
) -> None:
    chaos(local_cluster, tmp_path, seed, faults=4)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [2, 3, 4, 5, 6])
def test_long_schedules_of_crashes_and_pauses_lose_no_acknowledged_write(
    local_cluster: LocalCluster, tmp_path: Path, seed: int,
) -> None:
    chaos(local_cluster, tmp_path, seed, faults=12)
