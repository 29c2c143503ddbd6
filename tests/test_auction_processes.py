"""Real processes: ``agentmesh up --nodes 5 --agents demo``, 200 tasks submitted,
the contractors of two running tasks SIGKILLed; all 200 finish, each with the
right result recorded once in the Raft task ledger."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents.contract_net import ledger
from agents.contract_net.ledger import KEY_PREFIX, LedgerError, TaskRecord, TaskState
from agents.driver import ALIVE_PREFIX, OWNER_PREFIX, RUN_PREFIX, decode_json, submit_open_task
from agents.submission import submit_task
from conftest import pid_alive, run_cli, running_up
from mesh.kv_client import KVClient

pytestmark = pytest.mark.timeout(180)

TASKS = 200
SLEEP_TASKS = 24
"""demo.sleep tasks of 1-2 s, so that some are running when contractors are killed."""
SUBMIT_CONCURRENCY = 32
RUNNING_DEADLINE_S = 60.0
DONE_DEADLINE_S = 90.0
POLL_S = 0.1


@dataclass
class UpCluster:
    directory: Path
    pids: dict[str, int]  # node id hex -> pid
    voters: set[str]  # node id hex


@pytest.fixture
def up5(tmp_path: Path) -> Iterator[UpCluster]:
    """``agentmesh up --nodes 5 --agents demo``; every process gone afterwards."""
    cluster_dir = tmp_path / "mesh"
    with running_up(cluster_dir, "--nodes", "5", "--agents", "demo") as up:
        pids = {n["node_id"]: n["pid"] for n in up.nodes}
        status = json.loads(run_cli("status", "--cluster", str(cluster_dir), "--json",
                                    timeout_s=60).stdout)
        voters: set[str] = set()
        for node in status["nodes"]:
            voters.update((node.get("raft") or {}).get("voters") or [])
        assert len(voters) == 3, status
        yield UpCluster(cluster_dir, pids, voters)


def task_inputs() -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """task id -> (capability, input, expected result)."""
    tasks: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}
    for i in range(TASKS):
        task_id = f"t{i:03d}"
        if i % (TASKS // SLEEP_TASKS) == 0 and i // (TASKS // SLEEP_TASKS) < SLEEP_TASKS:
            seconds = 1.0 + (i % 5) / 4  # 1.0 .. 2.0
            tasks[task_id] = ("demo.sleep", {"seconds": seconds}, {"slept": seconds})
        elif i % 2:
            numbers = [*range(i % 17), i]
            tasks[task_id] = ("demo.sum", {"numbers": numbers}, {"sum": sum(numbers)})
        else:
            text = " ".join(f"w{j}" for j in range(i % 13))
            tasks[task_id] = ("demo.wordcount", {"text": text},
                              {"words": len(text.split())})
    return tasks


async def read_ledger(kv: KVClient) -> dict[str, TaskRecord]:
    records: dict[str, TaskRecord] = {}
    start_after: str | None = None
    while True:
        items, more = await kv.list(KEY_PREFIX, limit=1000, start_after=start_after)
        for item in items:
            try:
                record = ledger.decode_record(item.value)
            except LedgerError:
                continue
            assert record.task_id not in records, f"{record.task_id} listed twice"
            records[record.task_id] = record
        if not more or not items:
            return records
        start_after = items[-1].key


def pick_victims(records: dict[str, TaskRecord], cluster: UpCluster) -> list[str] | None:
    """Two distinct contractors of running (awarded) tasks, at most one of them a voter."""
    contractors = sorted({r.contractor.hex() for r in records.values()
                          if r.state is TaskState.AWARDED and r.contractor is not None
                          and r.contractor.hex() in cluster.pids})
    others = [c for c in contractors if c not in cluster.voters]
    voters = [c for c in contractors if c in cluster.voters]
    chosen = others[:2]
    if len(chosen) < 2 and voters:
        chosen.append(voters[0])
    return chosen if len(chosen) == 2 else None


async def explain_unfinished(kv: KVClient, records: dict[str, TaskRecord],
                             victims: list[str]) -> str:
    """What a failure report needs: the unfinished tasks, their owners and leases."""
    alive = {item.key.removeprefix(ALIVE_PREFIX)[:8]: item.lease_id
             for item in (await kv.list(ALIVE_PREFIX))[0]}
    lines = [f"killed {[v[:8] for v in victims]}; alive (node: lease) {alive}"]
    unfinished = [r for r in records.values() if not r.final]
    for record in unfinished[:10]:
        owner = await kv.get(OWNER_PREFIX + record.task_id)
        run = await kv.get(RUN_PREFIX + record.task_id)
        lines.append(
            f"{record.task_id}: {record.state.value} epoch {record.epoch} contractor "
            f"{record.contractor.hex()[:8] if record.contractor else None} lease "
            f"{record.lease_id} owner {owner.value.hex()[:8] if owner else None} run-key "
            f"lease {run.lease_id if run else None} reasons {record.failure_reasons}")
    return f"{len(unfinished)} tasks unfinished after {DONE_DEADLINE_S} s:\n" + "\n".join(lines)


def test_200_tasks_all_finish_once_though_two_contractors_are_killed(up5: UpCluster) -> None:
    tasks = task_inputs()
    assert len(tasks) == TASKS

    async def main() -> tuple[dict[str, TaskRecord], list[str], list[str]]:
        async with KVClient.connect(up5.directory) as kv:
            limit = anyio.Semaphore(SUBMIT_CONCURRENCY)

            async def submit(task_id: str) -> None:
                capability, task_input, _ = tasks[task_id]
                # Half through a node (auctioned at once), half straight to the
                # ledger (taken over by a node's scan).
                through_a_node = int(task_id[1:]) % 2 == 0
                async with limit:
                    with anyio.fail_after(30):
                        if through_a_node:
                            await submit_task(kv, capability, task_input, task_id=task_id)
                        else:
                            await submit_open_task(kv, capability, task_input,
                                                   task_id=task_id)

            async with anyio.create_task_group() as tg:
                for task_id in tasks:
                    tg.start_soon(submit, task_id)

            victims: list[str] | None = None
            running: list[str] = []
            deadline = time.monotonic() + RUNNING_DEADLINE_S
            while victims is None:
                assert time.monotonic() < deadline, "no two contractors of running tasks"
                records = await read_ledger(kv)
                victims = pick_victims(records, up5)
                if victims is None:
                    await anyio.sleep(POLL_S)
            running = sorted(r.task_id for r in records.values()
                             if r.state is TaskState.AWARDED and r.contractor is not None
                             and r.contractor.hex() in victims)
            for victim in victims:
                os.kill(up5.pids[victim], signal.SIGKILL)

            deadline = time.monotonic() + DONE_DEADLINE_S
            while True:
                records = await read_ledger(kv)
                if len(records) == TASKS and all(r.final for r in records.values()):
                    return records, victims, running
                if time.monotonic() > deadline:
                    pytest.fail(await explain_unfinished(kv, records, victims))
                await anyio.sleep(POLL_S)

    records, victims, running = anyio.run(main)
    assert len(victims) == 2 and len(set(victims) & up5.voters) <= 1
    assert running, "the killed nodes were running no task"
    assert sorted(records) == sorted(tasks)
    for task_id, (capability, _, expected) in tasks.items():
        record = records[task_id]
        assert record.capability == capability
        assert record.state is TaskState.DONE, (task_id, record.state, record.failure_reasons)
        assert record.result is not None, task_id
        assert decode_json(record.result) == expected, task_id
        assert record.contractor is not None
    # The tasks running on the killed nodes were taken up again and finished on a
    # surviving node (one may have finished just before its kill: it keeps its epoch).
    rerun = [t for t in running if records[t].epoch >= 2]
    assert rerun, f"no task running on {victims} was run again: {running}"
    for task_id in rerun:
        contractor = records[task_id].contractor
        assert contractor is not None and contractor.hex() not in victims, task_id
    for victim in victims:
        assert not pid_alive(up5.pids[victim])
