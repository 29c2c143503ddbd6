"""Raft benchmark: 3 voters as real processes on loopback, fsync on, driven by this process.

What it measures, in one run:

a. writes/s with ``--outstanding`` writes in flight (default 1000, values of
   ``--value-bytes``), from this process (a separate client process: the voters
   are node processes started by ``agentmesh up``'s launcher) through the
   agentmesh Python client (``KVClient``);
b. latency p50/p99 of one write at a time;
c. failover: SIGKILL the leader, time until the next write succeeds (median of
   ``--failovers``); the killed voter is restarted and caught up between rounds.

With ``--pysyncobj`` and ``--etcd`` the same workload runs against those peers
(see ``raft_peers.py``) and is reported side by side; ``--floor`` adds the least
a write of the same shape costs in Python here (``raft_floor.py``).
``--profile DIR`` runs the voters under cProfile and leaves one ``.prof`` per
voter there. This process tunes its garbage collector as a node does
(``mesh.collector``; with thousands of writes in flight, collections cost a
client 15 - 20 % of its CPU); ``--client-gc-threshold 0`` keeps Python's
defaults.

    python scripts/bench_raft.py [--seconds S] [--value-bytes B] [--outstanding N]
                                 [--failovers K] [--pysyncobj] [--etcd] [--floor]
                                 [--client-gc-threshold N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from mesh.collector import tune_collector
from mesh.config import NodeConfig
from mesh.errors import exception_leaves
from mesh.kv_client import KVClient, KVError, KVInvalid
from mesh.launcher import ClusterLauncher
from mesh.layout import write_cluster_file
from mesh.status import gather_status

VOTERS = 3
_CATCH_UP_TIMEOUT_S = 30.0


def _quiet(_text: str) -> None:
    pass


class Cluster:
    """Three voter processes under one launcher, with helpers to find and kill the leader."""

    def __init__(self, directory: Path, profile_dir: Path | None) -> None:
        self.directory = directory
        if profile_dir is not None:
            os.environ["AGENTMESH_PROFILE_DIR"] = str(profile_dir)
        self.launcher = ClusterLauncher(directory, VOTERS, voters=VOTERS, out=_quiet)

    def start(self) -> None:
        self.launcher.prepare()
        self.launcher.start_all()

    def stop(self) -> None:
        self.launcher.stop_all()

    async def raft_status(self) -> list[dict[str, Any]]:
        status = await gather_status(self.directory, timeout_s=1.0)
        return [n for n in status["nodes"] if n.get("reachable") and n.get("raft")]

    async def wait_for_leader(self, deadline_s: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            for node in await self.raft_status():
                if node["raft"]["role"] == "leader":
                    return node
            await anyio.sleep(0.05)
        raise RuntimeError("no leader within the deadline")

    async def wait_caught_up(self, name: str) -> None:
        deadline = time.monotonic() + _CATCH_UP_TIMEOUT_S
        while time.monotonic() < deadline:
            nodes = {n["name"]: n["raft"] for n in await self.raft_status()}
            leader = next((r for r in nodes.values() if r["role"] == "leader"), None)
            if name in nodes and leader is not None and (
                nodes[name]["applied_index"] >= leader["commit_index"] - 1
            ):
                return
            await anyio.sleep(0.1)
        raise RuntimeError(f"{name} did not catch up within {_CATCH_UP_TIMEOUT_S} s")

    def kill(self, name: str) -> int:
        node = next(n for n in self.launcher.nodes if n.name == name)
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()
        return self.launcher.nodes.index(node)

    def restart(self, position: int) -> None:
        old = self.launcher.nodes.pop(position)
        old.log_file.close()
        seeds = [n.listen for n in self.launcher.nodes]
        index = int(old.name.removeprefix("node"))
        node = self.launcher._start(index, seeds)
        self.launcher._await_address(node)
        # It listens on a new port: status (and new clients) find it through cluster.json.
        write_cluster_file(self.directory, [n.as_json() for n in self.launcher.nodes])


async def _throughput(kv: KVClient, seconds: float, outstanding: int, value: bytes,
                      keys: int) -> float:
    done = 0
    stop_at = time.monotonic() + seconds

    async def writer(worker: int) -> None:
        nonlocal done
        i = worker
        while time.monotonic() < stop_at:
            await kv.put(f"bench/{i % keys}", value)
            done += 1
            i += outstanding

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for worker in range(outstanding):
            tg.start_soon(writer, worker)
    return done / (time.monotonic() - started)


async def _latency(kv: KVClient, seconds: float, value: bytes) -> tuple[float, float]:
    samples: list[float] = []
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at or len(samples) < 20:
        start = time.perf_counter()
        await kv.put(f"latency/{len(samples) % 100}", value)
        samples.append(time.perf_counter() - start)
    samples.sort()
    return _ms(samples[len(samples) // 2]), _ms(samples[min(len(samples) - 1,
                                                            int(len(samples) * 0.99))])


async def _failover(cluster: Cluster, kv: KVClient, value: bytes) -> float:
    leader = await cluster.wait_for_leader()
    await kv.put("failover/warm", value)
    position = cluster.kill(leader["name"])
    killed_at = time.monotonic()
    while True:
        try:
            await kv.put("failover/probe", value)
            break
        except KVError:
            if time.monotonic() - killed_at > _CATCH_UP_TIMEOUT_S:
                raise
            continue
    elapsed = time.monotonic() - killed_at
    cluster.restart(position)
    await cluster.wait_caught_up(leader["name"])
    return elapsed * 1000


async def bench_agentmesh(args: argparse.Namespace) -> dict[str, Any]:
    value = os.urandom(args.value_bytes // 2).hex().encode()[: args.value_bytes]
    with tempfile.TemporaryDirectory(prefix="bench-raft-") as tmp_dir:
        tmp = args.dir or tmp_dir
        cluster = Cluster(Path(tmp), args.profile)
        try:
            cluster.start()
            await cluster.wait_for_leader()
            async with KVClient.connect(Path(tmp)) as kv:
                # Warm up at the measured load: the client opens its store sessions
                # (one per window of writes in flight) here, not in the measured run.
                await _throughput(kv, min(1.0, args.seconds), args.outstanding, value,
                                  args.keys)
                writes_per_s = await _throughput(kv, args.seconds, args.outstanding, value,
                                                 args.keys)
                _progress(f"throughput: {writes_per_s:.0f} writes/s")
                p50, p99 = await _latency(kv, max(2.0, args.seconds / 2), value)
                _progress(f"latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
                failovers = []
                for _ in range(args.failovers):
                    failovers.append(await _failover(cluster, kv, value))
                    _progress(f"failover: {failovers[-1]:.0f} ms")
            status = await cluster.raft_status()
        finally:
            cluster.stop()
    return {
        "system": "agentmesh",
        "writes_per_s": round(writes_per_s, 1),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "failover_ms_p50": round(statistics.median(failovers), 1) if failovers else None,
        "failover_ms_all": [round(f, 1) for f in failovers],
        "counters": {n["name"]: n["raft"]["counters"] for n in status},
    }


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _ms(seconds: float) -> float:
    return seconds * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--value-bytes", type=int, default=256)
    parser.add_argument("--outstanding", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys written")
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--pysyncobj", action="store_true", help="also run PySyncObj")
    parser.add_argument("--etcd", action="store_true", help="also run etcd")
    parser.add_argument("--floor", action="store_true",
                        help="also run the floor: the same writes with nothing but the "
                        "hops, signatures and fsyncs (raft_floor.py)")
    parser.add_argument("--profile", type=Path, help="cProfile the voters into this directory")
    parser.add_argument("--dir", type=Path, help="cluster directory to keep (default: temporary)")
    parser.add_argument("--client-gc-threshold", type=int,
                        default=NodeConfig().gc_young_threshold,
                        help="this process's young-generation threshold, as a node's "
                        "gc_young_threshold (0: Python's defaults)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.client_gc_threshold < 0:
        parser.error("--client-gc-threshold must be 0 (Python's defaults) or more")
    if not args.seconds > 0:
        parser.error(f"--seconds ({args.seconds}) must be positive")
    for name in ("outstanding", "keys", "value_bytes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} ({getattr(args, name)}) must be at least 1")
    if args.failovers < 0:
        parser.error(f"--failovers ({args.failovers}) must not be negative")
    tune_collector(args.client_gc_threshold)
    try:
        results = [anyio.run(bench_agentmesh, args)]
    except (KVInvalid, BaseExceptionGroup) as error:
        # Not `except*`: before 3.11.4 an exit raised inside it came out wrapped in a group.
        refusal = next((e for e in exception_leaves(error) if isinstance(e, KVInvalid)), None)
        if refusal is None:
            raise
        parser.exit(2, f"bench_raft: the cluster refused the writes: {refusal}\n")
    results[0]["client_gc_young_threshold"] = args.client_gc_threshold
    peers = [name for name in ("pysyncobj", "etcd", "floor") if getattr(args, name)]
    if peers:
        sys.path.insert(0, str(Path(__file__).parent))
        import raft_peers

        for name in peers:
            run = getattr(raft_peers, f"bench_{name}")
            results.append(run(args.seconds, args.value_bytes, args.outstanding,
                               failovers=args.failovers))
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else
                         {**results[0], "peers": results[1:]}, indent=2))
    else:
        for result in results:
            print(f"{result['system']:>10}: {result['writes_per_s']:>9.0f} writes/s at "
                  f"{args.outstanding} outstanding; one at a time p50 {result['p50_ms']:.2f} ms, "
                  f"p99 {result['p99_ms']:.2f} ms; failover p50 "
                  f"{result['failover_ms_p50']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
