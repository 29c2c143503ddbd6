"""Three Raft voters as real processes: failover under client load, and log recovery.

Every client operation is recorded with its invocation and completion times in a
``sim.linearizability.History``; the whole history must be linearizable and every
acknowledged write present at the end. The leader is found from ``status``;
SIGKILL and SIGSTOP stand for a crash and a long pause. Logs are damaged as a
crash would (a torn tail: cut and carry on) and as a crash cannot (a flipped
byte mid-segment: ``node run`` refuses to start, in one line).

Each load client has its own certified identity (as separate programs would),
and the targets it retries are re-read from ``cluster.json``, which a restart
rewrites.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from conftest import LocalCluster, NodeProcess, run_cli
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
from mesh.raft_service import RAFT_DIR_NAME
from mesh.raftlog.records import RecordType
from mesh.raftlog.segment import SegmentScan
from mesh.runtime import Node
from mesh.status import gather_status
from sim.linearizability import DeleteVersioning, History, KVModel, check

pytestmark = pytest.mark.timeout(120)

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
    """Wait until ``name`` has applied ``index``; its status then."""
    async def applied() -> dict[str, Any] | None:
        node = (await raft_status(cluster)).get(name)
        return node if node is not None and node["raft"]["applied_index"] >= index else None

    return await eventually(applied, timeout_s=timeout_s,
                            what=f"{name} to apply up to index {index}")


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
    client = KVClient(node, node.config.raft, targets)
    async with node.running(), anyio.create_task_group() as tg:
        tg.start_soon(client.run)
        try:
            yield client
        finally:
            tg.cancel_scope.cancel()


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
