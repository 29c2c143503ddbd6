"""Contract-net benchmark: ``agentmesh up --nodes N --agents demo`` as real processes,
N trivial ``demo.sum`` tasks submitted at once from this process.

What it measures, in one run:

a. tasks/s from the first submit to the moment the last task is seen done in the
   Raft task ledger (``task/<id>``), which this process polls every ``--poll-ms``;
b. latency per task. The ledger records no award time (a ``TaskRecord`` has no
   timestamps), so the auction alone cannot be timed from outside: what is
   reported is submit-to-done (submit call started -> first poll that sees the
   task done), p50/p99, with the poll interval as its resolution. It includes the
   wait for a driver's periodic scan (``scan_interval_s``, 1 s by default): a task
   written straight to the ledger, as ``agentmesh task submit`` does, has no owner
   until a node's driver takes it over at its next scan.

Tasks are written the way ``agentmesh task submit`` writes them
(``agents.driver.submit_open_task``, the ledger's ``create`` transition), with at
most ``--concurrency`` writes in flight. Every process started is stopped at the
end (``up`` by SIGTERM, then any node still alive by SIGKILL).

    python scripts/bench_auction.py [--tasks N] [--nodes N] [--concurrency C]
                                    [--poll-ms MS] [--timeout S] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from agents.contract_net import ledger
from agents.contract_net.ledger import KEY_PREFIX, LedgerError, TaskState
from agents.driver import decode_json, submit_open_task
from mesh.kv_client import KVClient


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def _run(cluster: Path, tasks: int, concurrency: int, poll_s: float,
               timeout_s: float) -> dict[str, Any]:
    inputs = {f"b{i:06d}": [i, i + 1, 2] for i in range(tasks)}
    submitted_at: dict[str, float] = {}
    done_at: dict[str, float] = {}
    wrong: list[str] = []
    failed: list[str] = []
    async with KVClient.connect(cluster) as kv:
        limit = anyio.Semaphore(concurrency)

        async def submit(task_id: str) -> None:
            async with limit:
                submitted_at[task_id] = time.perf_counter()
                await submit_open_task(kv, "demo.sum", {"numbers": inputs[task_id]},
                                       task_id=task_id)

        first_submit = time.perf_counter()
        deadline = first_submit + timeout_s
        async with anyio.create_task_group() as tg:
            for task_id in inputs:
                tg.start_soon(submit, task_id)
        submits_done = time.perf_counter()

        polls = 0
        while len(done_at) + len(failed) < tasks:
            if time.perf_counter() > deadline:
                break
            polls += 1
            start_after: str | None = None
            now = time.perf_counter()
            while True:
                items, more = await kv.list(KEY_PREFIX, limit=1000, start_after=start_after)
                for item in items:
                    try:
                        record = ledger.decode_record(item.value)
                    except LedgerError:
                        continue
                    tid = record.task_id
                    if tid not in inputs or tid in done_at or tid in failed:
                        continue
                    if record.state is TaskState.DONE:
                        done_at[tid] = now
                        if decode_json(record.result) != {"sum": sum(inputs[tid])}:
                            wrong.append(tid)
                    elif record.final:
                        failed.append(tid)
                if not more or not items:
                    break
                start_after = items[-1].key
            if len(done_at) + len(failed) < tasks:
                await anyio.sleep(poll_s)
        last_done = max(done_at.values(), default=time.perf_counter())

    latencies_ms = [(done_at[t] - submitted_at[t]) * 1000 for t in done_at]
    elapsed = last_done - first_submit
    return {
        "tasks": tasks,
        "done": len(done_at),
        "failed": len(failed),
        "wrong_results": len(wrong),
        "unfinished": tasks - len(done_at) - len(failed),
        "submit_s": round(submits_done - first_submit, 3),
        "submits_per_s": round(tasks / max(submits_done - first_submit, 1e-9), 1),
        "elapsed_s": round(elapsed, 3),
        "tasks_per_s": round(len(done_at) / max(elapsed, 1e-9), 1),
        "latency": "submit_to_done (the ledger records no award time)",
        "latency_p50_ms": round(_percentile(latencies_ms, 0.5), 1),
        "latency_p99_ms": round(_percentile(latencies_ms, 0.99), 1),
        "latency_mean_ms": round(statistics.fmean(latencies_ms), 1) if latencies_ms else None,
        "poll_ms": round(poll_s * 1000, 1),
        "polls": polls,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64,
                        help="submissions in flight at once (default 64)")
    parser.add_argument("--poll-ms", type=float, default=20.0,
                        help="ledger poll interval (default 20)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for every task (default 120)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-auction-") as tmp:
        cluster = Path(tmp) / "mesh"
        up = subprocess.Popen(
            [sys.executable, "-m", "mesh.cli", "up", "--nodes", str(args.nodes),
             "--dir", str(cluster), "--agents", "demo"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        pids: list[int] = []
        try:
            assert up.stdout is not None
            lines = []
            for line in up.stdout:
                lines.append(line)
                if line.startswith("cluster running"):
                    break
            else:
                print("up ended before the cluster ran:\n" + "".join(lines), file=sys.stderr)
                return 2
            pids = [n["pid"] for n in json.loads((cluster / "cluster.json").read_text())["nodes"]]
            result = anyio.run(_run, cluster, args.tasks, args.concurrency,
                               args.poll_ms / 1000, args.timeout)
        finally:
            if up.poll() is None:
                up.send_signal(signal.SIGTERM)
                try:
                    up.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    up.kill()
                    up.wait()
            for pid in pids:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            if up.stdout is not None:
                up.stdout.close()

    result = {"nodes": args.nodes, "concurrency": args.concurrency, **result}
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:16} {value}")
    ok = result["done"] == args.tasks and not result["wrong_results"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
