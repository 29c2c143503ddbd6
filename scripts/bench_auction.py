"""Contract-net benchmark: ``agentmesh up --nodes N --agents demo`` as real processes,
trivial ``demo.sum`` tasks submitted from this process the way ``agentmesh task
submit`` does (``agents.submission.submit_task``: a node takes each task and
calls for proposals at once; submissions go to the nodes in turn).

Two phases, in one run:

1. *burst*: ``--burst`` tasks submitted at once (at most ``--concurrency`` in
   flight). Throughput is tasks / (first submit -> the poll that sees the last
   result recorded): the nodes' status (their drivers' ``results_recorded``) is
   polled every ``--poll-ms``, which costs the cluster far less than reading the
   ledger; the ledger is read once afterwards to check every result.
2. *paced*: tasks submitted at ``--rate`` per second for ``--paced-seconds``,
   a load the cluster keeps up with, so latency is the protocol's, not a queue's.

For each phase the auction latency (a round's call for proposals -> the award
committed in the ledger, as each manager measures it) and the decision latency
(call -> decision) are read from the nodes' status: the histograms of every
node are read before and after the phase and the differences added up, so a
percentile is a bucket's upper bound (``agents.latency``).

Every process started is stopped at the end (``mesh.up_process.running_up``:
``up`` by SIGTERM, then any node still alive by SIGKILL).

    python scripts/bench_auction.py [--nodes N] [--burst N] [--concurrency C]
                                    [--rate R] [--paced-seconds S] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from agents.contract_net import ledger
from agents.contract_net.ledger import KEY_PREFIX, LedgerError, TaskState
from agents.driver import decode_json
from agents.latency import histogram_percentile
from agents.submission import submit_task
from mesh.errors import ClusterError
from mesh.kv_client import KVClient
from mesh.status import gather_status
from mesh.up_process import running_up


async def _histograms(cluster: Path) -> dict[str, dict[str, dict[str, int]]]:
    """node name -> {"award_ms": histogram, "decision_ms": histogram}."""
    status = await gather_status(cluster, timeout_s=10.0)
    found: dict[str, dict[str, dict[str, int]]] = {}
    for node in status["nodes"]:
        section = node.get("contract_net") or {}
        found[str(node.get("name"))] = {
            name: dict((section.get(name) or {}).get("histogram") or {})
            for name in ("award_ms", "decision_ms")
        }
    return found


def _difference(after: dict[str, dict[str, dict[str, int]]],
                before: dict[str, dict[str, dict[str, int]]], name: str) -> list[dict[str, int]]:
    differences = []
    for node, histograms in after.items():
        earlier = before.get(node, {}).get(name, {})
        differences.append({edge: count - earlier.get(edge, 0)
                            for edge, count in histograms[name].items()})
    return differences


def _latency_summary(after: Any, before: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, label in (("award_ms", "auction"), ("decision_ms", "decision")):
        parts = _difference(after, before, name)
        summary[f"{label}_samples"] = sum(sum(part.values()) for part in parts)
        for q in (0.5, 0.99):
            summary[f"{label}_p{round(q * 100)}_ms_at_most"] = histogram_percentile(parts, q)
    return summary


async def _results_recorded(cluster: Path) -> int:
    """Results written to the ledger so far, summed over the nodes' drivers."""
    status = await gather_status(cluster, timeout_s=10.0)
    return sum(int(((node.get("contract_net") or {}).get("counters") or {})
                   .get("results_recorded", 0)) for node in status["nodes"])


async def _wait_recorded(cluster: Path, baseline: int, count: int, poll_s: float,
                         deadline: float) -> float:
    """When the nodes had recorded ``count`` results more than ``baseline``: polling
    their status is far cheaper for the cluster than reading the ledger."""
    while time.perf_counter() < deadline:
        now = time.perf_counter()
        if await _results_recorded(cluster) - baseline >= count:
            return now
        await anyio.sleep(poll_s)
    return time.perf_counter()


async def _wait_done(kv: KVClient, expected: dict[str, int], poll_s: float,
                     deadline: float, prefix: str) -> tuple[float, int, int]:
    """Poll until every task in ``expected`` (id -> its sum; every id starts with
    ``prefix``, so only those records are read) is final: (when the last was seen
    done, done, wrong or failed)."""
    remaining = dict(expected)
    wrong = done = 0
    last_done = time.perf_counter()
    while remaining and time.perf_counter() < deadline:
        start_after: str | None = None
        now = time.perf_counter()
        while True:
            items, more = await kv.list(KEY_PREFIX + prefix, limit=1000,
                                        start_after=start_after)
            for item in items:
                try:
                    record = ledger.decode_record(item.value)
                except LedgerError:
                    continue
                if record.task_id not in remaining or not record.final:
                    continue
                want = remaining.pop(record.task_id)
                if record.state is TaskState.DONE and decode_json(record.result) == {"sum": want}:
                    done += 1
                else:
                    wrong += 1
                last_done = now
            if not more or not items:
                break
            start_after = items[-1].key
        if remaining:
            await anyio.sleep(poll_s)
    return last_done, done, wrong


async def _burst(cluster: Path, kv: KVClient, args: argparse.Namespace) -> dict[str, Any]:
    expected = {f"burst-{i:06d}": i + 3 for i in range(args.burst)}
    before = await _histograms(cluster)
    baseline = await _results_recorded(cluster)
    limit = anyio.Semaphore(args.concurrency)

    async def submit(task_id: str) -> None:
        async with limit:
            await submit_task(kv, "demo.sum", {"numbers": [expected[task_id] - 3, 1, 2]},
                              task_id=task_id)

    first = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for task_id in expected:
            tg.start_soon(submit, task_id)
    submitted = time.perf_counter()
    last = await _wait_recorded(cluster, baseline, args.burst, args.poll_ms / 1000,
                                first + args.timeout)
    after = await _histograms(cluster)
    _, done, wrong = await _wait_done(kv, expected, 0.5, first + args.timeout, "burst-")
    elapsed = last - first
    return {
        "tasks": args.burst,
        "done": done,
        "wrong_or_failed": wrong,
        "unfinished": args.burst - done - wrong,
        "submit_s": round(submitted - first, 3),
        "elapsed_s": round(elapsed, 3),
        "tasks_per_s": round(done / max(elapsed, 1e-9), 1),
        **_latency_summary(after, before),
    }


async def _paced(cluster: Path, kv: KVClient, args: argparse.Namespace) -> dict[str, Any]:
    count = max(1, round(args.rate * args.paced_seconds))
    expected = {f"paced-{i:06d}": i + 3 for i in range(count)}
    before = await _histograms(cluster)
    baseline = await _results_recorded(cluster)
    interval = 1 / args.rate
    first = time.perf_counter()
    submit_ms: list[float] = []

    async def submit(task_id: str) -> None:
        started = time.perf_counter()
        await submit_task(kv, "demo.sum", {"numbers": [expected[task_id] - 3, 3]},
                          task_id=task_id)
        submit_ms.append((time.perf_counter() - started) * 1000)

    async with anyio.create_task_group() as tg:
        for number, task_id in enumerate(expected):
            await anyio.sleep(max(0.0, first + number * interval - time.perf_counter()))
            tg.start_soon(submit, task_id)
    # The latencies come from the histograms: the end needs no fine resolution, and
    # polling more often would load the cluster whose latency is measured.
    last = await _wait_recorded(cluster, baseline, count, max(0.5, args.poll_ms / 1000),
                                first + args.paced_seconds + args.timeout)
    after = await _histograms(cluster)
    _, done, wrong = await _wait_done(kv, expected, 0.5,
                                      first + args.paced_seconds + args.timeout, "paced-")
    ordered = sorted(submit_ms)
    return {
        "rate_per_s": args.rate,
        "tasks": count,
        "done": done,
        "wrong_or_failed": wrong,
        "unfinished": count - done - wrong,
        "offered_s": round(args.paced_seconds, 3),
        "finished_after_s": round(last - first, 3),
        "submit_p50_ms": round(ordered[len(ordered) // 2], 2) if ordered else None,
        **_latency_summary(after, before),
    }


async def _run(cluster: Path, args: argparse.Namespace) -> dict[str, Any]:
    async with KVClient.connect(cluster) as kv:
        # Warm up: every node's connections, adverts and leases in place.
        for number in range(args.nodes * 2):
            await submit_task(kv, "demo.sum", {"numbers": [number]}, task_id=f"warm-{number}")
        await _wait_done(kv, {f"warm-{n}": n for n in range(args.nodes * 2)}, 0.05,
                         time.perf_counter() + 60, "warm-")
        burst = await _burst(cluster, kv, args)
        paced = await _paced(cluster, kv, args) if args.rate > 0 else None
    return {"burst": burst, "paced": paced}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--burst", type=int, default=1000, help="tasks in the burst phase")
    parser.add_argument("--concurrency", type=int, default=128,
                        help="burst submissions in flight at once (default 128)")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="paced phase: tasks per second (0 skips the phase)")
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--poll-ms", type=float, default=50.0,
                        help="status poll interval (default 50)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for a phase's tasks (default 120)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-auction-") as tmp:
        cluster = Path(tmp) / "mesh"
        try:
            with running_up(cluster, "--nodes", str(args.nodes), "--agents", "demo"):
                phases = anyio.run(_run, cluster, args)
        except ClusterError as exc:
            print(exc, file=sys.stderr)
            return 2

    result = {
        "nodes": args.nodes,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "poll_ms": args.poll_ms,
        **phases,
    }
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
    ok = all(phase is None or (phase["unfinished"] == 0 and phase["wrong_or_failed"] == 0)
             for phase in (phases["burst"], phases["paced"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
