"""Three (or more) Raft voters as real processes, and a recorded client load on them.

Shared by the process tests of the Raft tier. Every client operation is recorded
with its invocation and completion times in a ``sim.linearizability.History``;
``finish`` checks that every acknowledged write is present and that the whole
history is linearizable. The leader is found from ``status``.

Each load client has its own certified identity (as separate programs would),
and the targets it retries are re-read from ``cluster.json``, which a restart
rewrites.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from conftest import LocalCluster, NodeProcess
from consensus.kvstore import ErrorCode, Response
from mesh.config import NodeConfig
from mesh.errors import MeshError, exception_leaves
from mesh.identity import read_private_key
from mesh.kv_client import KVClient, KVUnavailable
from mesh.layout import (
    NODE_KEY,
    create_node_identity,
    load_authority,
    load_node_files,
    read_cluster_file,
)
from mesh.runtime import Node
from mesh.status import gather_status
from sim.linearizability import DeleteVersioning, History, KVModel, check

T = TypeVar("T")

VOTERS = ("n1", "n2", "n3")
KEYS = ("x", "y", "z")
UNIQUE_PREFIX = "acked/"
STATUS_TIMEOUT_S = 1.0


# -- the cluster ---------------------------------------------------------------------


def start_voters(cluster: LocalCluster, names: tuple[str, ...] = VOTERS) -> None:
    """Nodes that are all Raft voters, seeded from the first."""
    dirs = {name: cluster.make_node_dir(name) for name in names}
    ids = [read_private_key(d / NODE_KEY).node_id_hex for d in dirs.values()]
    raft = "\n[raft]\nvoters = [" + ", ".join(f'"{i}"' for i in ids) + "]\n"
    for name, node_dir in dirs.items():
        (node_dir / "node.toml").write_text(f'name = "{name}"\n{raft}')
    first = cluster.start(names[0])
    for name in names[1:]:
        cluster.start(name, seeds=[first.listen])


def node_named(cluster: LocalCluster, name: str) -> NodeProcess:
    return next(n for n in reversed(cluster.nodes) if n.name == name)


async def raft_status(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    """``status`` of every reachable node that runs Raft, by name."""
    status = await gather_status(cluster.directory, timeout_s=STATUS_TIMEOUT_S)
    return {n["name"]: n for n in status["nodes"] if n.get("reachable") and "raft" in n}


def agreed_leader(nodes: dict[str, dict[str, Any]], voters: int = len(VOTERS),
                  ) -> dict[str, Any] | None:
    """The leader of the highest term that a majority of the voters follows, if any."""
    leaders = [n for n in nodes.values() if n["raft"]["role"] == "leader"]
    if not leaders:
        return None
    leader = max(leaders, key=lambda n: n["raft"]["term"])
    term = leader["raft"]["term"]
    followers = sum(1 for n in nodes.values()
                    if n["raft"]["term"] == term and n["raft"]["leader_id"] == leader["node_id"])
    return leader if followers >= voters // 2 + 1 else None


async def eventually(condition: Callable[[], Awaitable[T | None]], *, timeout_s: float,
                     what: str, interval_s: float = 0.1) -> T:
    """Poll ``condition`` until it returns a truthy value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = await condition()
        if last:
            return last
        await anyio.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what} (last value: {last!r})")


async def leader_now(cluster: LocalCluster, *, not_id: str | None = None,
                     above_term: int = 0, timeout_s: float = 20.0,
                     voters: int = len(VOTERS)) -> dict[str, Any]:
    """Wait for a leader that the majority follows (other than ``not_id``, in a later term)."""
    async def found() -> dict[str, Any] | None:
        leader = agreed_leader(await raft_status(cluster), voters)
        if leader is None or leader["node_id"] == not_id or leader["raft"]["term"] <= above_term:
            return None
        return leader

    return await eventually(found, timeout_s=timeout_s, what="an agreed Raft leader")


async def caught_up(cluster: LocalCluster, name: str, index: int, *,
                    timeout_s: float = 30.0) -> dict[str, Any]:
    """Wait until ``name`` has applied ``index``; its status then. On a timeout the
    failure shows every voter's Raft state, to tell a stuck follower from a leader
    that stopped sending to it."""
    async def applied() -> dict[str, Any] | None:
        node = (await raft_status(cluster)).get(name)
        return node if node is not None and node["raft"]["applied_index"] >= index else None

    try:
        return await eventually(applied, timeout_s=timeout_s,
                                what=f"{name} to apply up to index {index}")
    except pytest.fail.Exception as failed:
        states = {n: raft_summary(status) for n, status in (await raft_status(cluster)).items()}
        pytest.fail(f"{failed}; Raft state of each voter: {states}")


def raft_summary(status: dict[str, Any]) -> dict[str, Any]:
    """A node's Raft state without the parts that do not tell what it is doing."""
    raft = status["raft"]
    wanted = ("role", "term", "leader_id", "commit_index", "applied_index", "last_index",
              "progress")
    counters = {k: v for k, v in raft.get("counters", {}).items() if v}
    peers = {peer.get("name"): (peer.get("address"), peer.get("state"))
             for peer in status.get("peers", [])}
    return {**{k: raft.get(k) for k in wanted}, "counters": counters, "peers": peers,
            "transport": {k: v for k, v in status.get("counters", {}).items() if v}}


@asynccontextmanager
async def own_client(cluster_dir: Path, name: str) -> AsyncIterator[KVClient]:
    """A ``KVClient`` with an identity of its own, retrying the nodes in ``cluster.json``."""
    client_dir = cluster_dir / "clients" / name
    create_node_identity(client_dir, load_authority(cluster_dir), name=name, roles=["client"])
    files = load_node_files(client_dir)
    node = Node.client(config=NodeConfig(name=name), identity=files.identity,
                                  certificate=files.certificate,
                                  authority_public_key=files.authority_public_key)
    known: list[str] = []

    def targets() -> list[str]:
        try:  # rewritten by every (re)start; a read in the middle of a write keeps the last
            known[:] = [str(entry["listen"]) for entry in read_cluster_file(cluster_dir)]
        except MeshError:
            pass
        return list(known)

    targets()
    async with KVClient.running(node, node.config.raft, targets) as client:
        yield client


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """``anyio.run(scenario)``, failing with the one error inside nested task groups."""
    try:
        anyio.run(scenario)
    except BaseExceptionGroup as group:
        leaves = exception_leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


# -- the load ------------------------------------------------------------------------


@dataclass
class Load:
    """Clients' operations, recorded for the linearizability checker."""

    history: History = field(default_factory=History)
    acked: dict[str, bytes] = field(default_factory=dict)
    """Unique keys whose put was acknowledged, and their values."""
    counts: Counter[str] = field(default_factory=Counter)
    stop: anyio.Event = field(default_factory=anyio.Event)

    async def record(self, client: str, op: str, key: str, args: tuple[Any, ...],
                     call: Awaitable[Any]) -> Any | None:
        """Await ``call`` (not started yet) as ``op(key, *args)``; its result for the
        model, or None if unknown."""
        handle = self.history.invoke(client, op, key, args, at=time.monotonic())
        try:
            answer = await call
        except KVUnavailable:
            self.history.unknown(handle)
            self.counts["unknown"] += 1
            return None
        now = time.monotonic()
        result = _model_result(op, answer)
        if result is None:  # a refusal the workload never provokes: not applied
            self.history.unknown(handle)
            self.counts[f"refused_{answer.error.value}"] += 1
            return None
        self.history.complete(handle, result, at=now)
        self.counts["ok"] += 1
        return result


def _model_result(op: str, answer: Any) -> Any | None:
    """The result ``KVModel`` expects, from a ``KVClient`` answer."""
    if op == "get":
        return (None, 0) if answer is None else (answer.value, answer.version)
    assert isinstance(answer, Response)
    error = answer.error
    if op == "put" and error is None:
        return answer.version
    if op == "cas" and error in (None, ErrorCode.CAS_FAILED):
        return (error is None, answer.version)
    if op == "delete" and error in (None, ErrorCode.NOT_FOUND):
        return error is None
    return None


async def writer(kv: KVClient, name: str, load: Load, rng: random.Random) -> None:
    """Puts, compare-and-sets, deletes and gets on the shared keys; puts to unique keys."""
    seen: dict[str, int] = {}
    count = 0
    while not load.stop.is_set():
        count += 1
        key = rng.choice(KEYS)
        value = f"{name}:{count}".encode()
        roll = rng.random()
        if roll < 0.2:
            unique = f"{UNIQUE_PREFIX}{name}/{count}"
            response = await load.record(name, "put", unique, (value,),
                                         kv.put(unique, value))
            if response is not None:
                load.acked[unique] = value
        elif roll < 0.5:
            version = await load.record(name, "put", key, (value,), kv.put(key, value))
            if version is not None:
                seen[key] = version
        elif roll < 0.8:
            expect = seen.get(key, 0) if rng.random() < 0.8 else rng.randrange(4)
            outcome = await load.record(name, "cas", key, (value, expect),
                                        kv.compare_and_set(key, value, expect))
            if outcome is not None:
                seen[key] = outcome[1]
        elif roll < 0.92:
            read = await load.record(name, "get", key, (), kv.get(key))
            if read is not None:
                seen[key] = read[1]
        else:
            if await load.record(name, "delete", key, (), kv.delete(key)) is not None:
                seen[key] = 0
        await anyio.sleep(rng.uniform(0.005, 0.02))


async def reader(kv: KVClient, name: str, load: Load, rng: random.Random) -> None:
    """Linearizable gets of the shared keys."""
    while not load.stop.is_set():
        key = rng.choice(KEYS)
        await load.record(name, "get", key, (), kv.get(key))
        await anyio.sleep(rng.uniform(0.005, 0.02))


async def progress(load: Load, more: int, *, what: str, timeout_s: float = 20.0) -> None:
    """Wait until ``more`` operations beyond those done now have been acknowledged."""
    target = load.counts["ok"] + more

    async def reached() -> bool:
        return load.counts["ok"] >= target

    await eventually(reached, timeout_s=timeout_s, what=f"{more} more acknowledged "
                     f"operations {what} (counts: {dict(load.counts)})")


async def finish(load: Load, kv: KVClient, tmp_path: Path) -> None:
    """Final reads: every acknowledged write is there, and the history is linearizable."""
    for key in KEYS:
        await load.record("final", "get", key, (), kv.get(key))
    items, truncated = await kv.list(UNIQUE_PREFIX, limit=100_000)
    assert not truncated
    present = {item.key: item.value for item in items}
    lost = {key: value for key, value in load.acked.items() if present.get(key) != value}
    assert not lost, f"{len(lost)} acknowledged writes missing or changed: {sorted(lost)[:10]}"
    saved = tmp_path / "history.json"
    load.history.save(str(saved))
    result = check(load.history, KVModel(DeleteVersioning.RESET), time_limit_s=60)
    done = [op for op in load.history.operations if not op.unknown]
    latencies = sorted(op.complete - op.invoke for op in done if op.complete is not None)
    span = max(op.complete or 0 for op in done) - min(op.invoke for op in done)
    print(f"{len(load.history)} operations in {span:.1f} s {dict(load.counts)}, "
          f"{len(load.acked)} acknowledged unique puts; latency median "
          f"{latencies[len(latencies) // 2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms; "
          f"{result.explanation}")
    assert result.linearizable is True, f"{result.explanation} (history saved in {saved})"
    assert load.counts["unknown"] <= load.counts["ok"] // 10, dict(load.counts)
