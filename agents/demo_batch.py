"""``agentmesh up --agents demo --demo-tasks N``: a batch of demo tasks through the
contract net, as the README's first command shows it.

Once the cluster runs, ``up_hook`` (the ``agentmesh.up_hooks`` entry point)
submits N tasks the way ``agentmesh task submit`` does, cycling through
``demo.wordcount``, ``demo.sum`` and a short ``demo.sleep``, waits until each is
final in the Raft task ledger, and prints one line per task: who won the
auction, out of how many bids, and the result. Its exit code (0 when every
task is done with the right result) becomes ``up``'s when it stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio

from agents.contract_net.ledger import TaskRecord, TaskState, decode_record, task_key
from agents.driver import decode_json
from agents.submission import submit_task
from mesh.errors import MeshError
from mesh.kv_client import KVClient
from mesh.layout import read_cluster_file

__all__ = ["demo_tasks", "run_demo_batch", "up_hook"]

DEMO_TASKS_MAX = 10_000
"""Most tasks one ``--demo-tasks`` batch may ask for."""
_WAIT_S = 120.0
_POLL_S = 0.1
_WORDS = "the quick brown fox jumps over the lazy dog and keeps on running".split()


def demo_tasks(count: int) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``count`` demo tasks: (capability, input, the result it must give)."""
    tasks: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for number in range(count):
        kind = number % 3
        if kind == 0:
            text = " ".join(_WORDS[: 2 + number % (len(_WORDS) - 1)])
            tasks.append(("demo.wordcount", {"text": text}, {"words": len(text.split())}))
        elif kind == 1:
            numbers = list(range(number % 7 + 1))
            tasks.append(("demo.sum", {"numbers": numbers}, {"sum": sum(numbers)}))
        else:
            seconds = round(0.1 * (1 + (number // 3) % 3), 1)
            tasks.append(("demo.sleep", {"seconds": seconds}, {"slept": seconds}))
    return tasks


def up_hook(cluster_dir: Path, options: Mapping[str, Any], out: Callable[[str], None]) -> int:
    """The ``agentmesh.up_hooks`` entry point: run ``--demo-tasks`` tasks, if asked."""
    count = int(options.get("demo_tasks") or 0)
    if count <= 0:
        return 0
    if count > DEMO_TASKS_MAX:
        out(f"--demo-tasks {count}: at most {DEMO_TASKS_MAX}")
        return 1
    try:
        return anyio.run(run_demo_batch, cluster_dir, count, out)
    except MeshError as exc:
        out(f"demo tasks: {exc}")
        return 1


async def run_demo_batch(cluster_dir: Path, count: int, out: Callable[[str], None]) -> int:
    """Submit ``count`` demo tasks, wait for them, print how each went; 0 if all done
    with the right results."""
    names = {str(n["node_id"]): str(n["name"]) for n in read_cluster_file(cluster_dir)}
    tasks = demo_tasks(count)
    ids = [f"demo-{time.time_ns():x}-{number}" for number in range(count)]
    out(f"submitting {count} demo tasks; each goes to auction among the nodes' agents")
    started = time.monotonic()
    async with KVClient.connect(cluster_dir) as kv:
        limit = anyio.Semaphore(32)

        async def submit(task_id: str, capability: str, task_input: dict[str, Any]) -> None:
            async with limit:
                await submit_task(kv, capability, task_input, task_id=task_id)

        async with anyio.create_task_group() as tg:
            for task_id, (capability, task_input, _) in zip(ids, tasks, strict=True):
                tg.start_soon(submit, task_id, capability, task_input)
        records = await _wait_final(kv, ids)
    elapsed = time.monotonic() - started
    good = 0
    for task_id, (capability, task_input, expected) in zip(ids, tasks, strict=True):
        record = records.get(task_id)
        good += _report(out, names, task_id, capability, task_input, expected, record)
    out(f"{good} of {count} demo tasks done with the right result in {elapsed:.2f} s")
    return 0 if good == count else 1


async def _wait_final(kv: KVClient, ids: list[str]) -> dict[str, TaskRecord]:
    final: dict[str, TaskRecord] = {}
    with anyio.move_on_after(_WAIT_S):
        while len(final) < len(ids):
            for task_id in ids:
                if task_id in final:
                    continue
                item = await kv.get(task_key(task_id))
                if item is not None:
                    record = decode_record(item.value)
                    if record.final:
                        final[task_id] = record
            if len(final) < len(ids):
                await anyio.sleep(_POLL_S)
    return final


def _report(out: Callable[[str], None], names: Mapping[str, str], task_id: str,
            capability: str, task_input: Mapping[str, Any], expected: Mapping[str, Any],
            record: TaskRecord | None) -> bool:
    shown = f"{capability:15} {_short(task_input):38}"
    if record is None:
        out(f"  {shown} -> not finished within {_WAIT_S:g} s ({task_id})")
        return False
    winner = names.get(record.contractor.hex(), record.contractor.hex()[:8]) \
        if record.contractor else "-"
    result = decode_json(record.result)
    right = record.state is TaskState.DONE and result == expected
    verdict = "" if right else "  (unexpected)"
    reasons = f" {list(record.failure_reasons)}" if record.state is not TaskState.DONE else ""
    out(f"  {shown} -> {record.state.value} by {winner} ({len(record.bids)} bids, epoch "
        f"{record.epoch}): {_short(result)}{reasons}{verdict}")
    return right


def _short(value: Any, width: int = 38) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."
