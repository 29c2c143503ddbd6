"""``agentmesh task``: submit to the ledger, show, list; nodes' drivers pick tasks up."""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from test_contract_net_driver import mesh

from agents.cli import register, run_operation
from agents.contract_net.ledger import LedgerError, TaskState
from agents.demo import SleepAgent, SumAgent, WordCountAgent
from agents.driver import decode_json
from agents.submission import submit_task
from conftest import LocalCluster, run_cli, running_up
from mesh.identity import read_private_key
from mesh.layout import NODE_KEY

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["task", *argv, "--cluster", "unused"])


@pytest.mark.anyio
async def test_a_task_submitted_to_the_ledger_is_taken_over_and_waited_for(
    tmp_path: Path,
) -> None:
    async with mesh(tmp_path, [[WordCountAgent()], [SumAgent()], [SleepAgent()]]) as m:
        kv: Any = m.nodes[2].kv
        code, views, message = await run_operation(kv, parse(
            "submit", "--capability", "demo.wordcount", "--input", '{"text": "x y z"}',
            "--wait", "--timeout", "30"))
        assert (code, message) == (0, "")
        [view] = views
        assert view["state"] == "done" and view["result"] == {"words": 3}
        assert view["contractor"] == m.nodes[0].node_id.hex()
        # Only node 0 has the capability: one bid, the winner's.
        [bid] = view["bids"]
        assert bid["node"] == view["contractor"] and bid["duration_s"] == 0.01
        code, shown, _ = await run_operation(kv, parse("show", view["task_id"]))
        assert code == 0 and shown == views
        code, listed, _ = await run_operation(kv, parse("list", "--state", "done"))
        assert [v["task_id"] for v in listed] == [view["task_id"]]
        code, listed, _ = await run_operation(kv, parse("list", "--state", "open"))
        assert listed == []
        code, _, message = await run_operation(kv, parse("show", "nope"))
        assert code == 1 and "no task" in message
        code, _, message = await run_operation(kv, parse(
            "submit", "--capability", "demo.sum", "--input", "[1]"))
        assert code == 1 and "JSON object" in message


@pytest.mark.anyio
async def test_a_task_submitted_through_a_node_is_owned_and_auctioned_there(
    tmp_path: Path,
) -> None:
    async with mesh(tmp_path, [[WordCountAgent()], [SumAgent()], [SleepAgent()]]) as m:
        kv: Any = m.nodes[2].kv
        record = await submit_task(kv, "demo.sum", {"numbers": [4, 5]}, task_id="via-node")
        assert record.state is TaskState.OPEN and record.task_id == "via-node"
        submitted = [driver.counters["submitted"] for driver in m.drivers]
        assert sorted(submitted) == [0, 0, 1]
        manager = submitted.index(1)
        owner = await kv.get("owner/via-node")
        assert owner is not None and owner.value == m.nodes[manager].node_id
        done = await m.drivers[manager].wait("via-node", 30)
        assert done.state is TaskState.DONE and decode_json(done.result) == {"sum": 9}
        assert done.contractor == m.nodes[1].node_id
        # The node auctioned it at once: no scan had to take it over.
        assert sum(driver.counters["takeovers"] for driver in m.drivers) == 0
        # A retry with the same id and input is the same task; another input is not.
        again = await submit_task(kv, "demo.sum", {"numbers": [4, 5]}, task_id="via-node")
        assert again.task_id == "via-node"
        with pytest.raises(LedgerError, match="another task"):
            await submit_task(kv, "demo.sum", {"numbers": [1]}, task_id="via-node")
        assert sum(driver.counters["submitted"] for driver in m.drivers) == 2


def test_the_cli_writes_an_open_task_and_reads_it_back(local_cluster: LocalCluster) -> None:
    node_dir = local_cluster.make_node_dir("voter")
    voter = read_private_key(node_dir / NODE_KEY).node_id_hex
    (node_dir / "node.toml").write_text(f'name = "voter"\n[raft]\nvoters = ["{voter}"]\n')
    local_cluster.start("voter")
    cluster = str(local_cluster.directory)
    submitted = run_cli("task", "submit", "--capability", "demo.sum", "--input",
                        '{"numbers": [1, 2]}', "--task-id", "t1", "--cluster", cluster,
                        "--json", "--timeout", "20")
    view = json.loads(submitted.stdout)
    assert view["task_id"] == "t1" and view["state"] == "open" and view["epoch"] == 1
    # No node runs a driver here, so the task stays open.
    shown = run_cli("task", "show", "t1", "--cluster", cluster, "--json")
    assert json.loads(shown.stdout) == view
    listed = run_cli("task", "list", "--state", "open", "--cluster", cluster)
    assert "t1" in listed.stdout and "open" in listed.stdout
    again = run_cli("task", "submit", "--capability", "demo.sum", "--input", "{}",
                    "--task-id", "t1", "--cluster", cluster, check=False)
    assert again.returncode == 1 and "could not be created" in again.stderr


def test_up_with_demo_agents_runs_a_task_submitted_from_the_cli(tmp_path: Path) -> None:
    cluster_dir = tmp_path / "mesh"
    with running_up(cluster_dir, "--nodes", "3", "--agents", "demo") as up:
        done = run_cli("task", "submit", "--capability", "demo.wordcount", "--input",
                       '{"text": "one two"}', "--wait", "--timeout", "40", "--json",
                       "--cluster", str(cluster_dir), timeout_s=90)
        view = json.loads(done.stdout)
        assert view["state"] == "done" and view["result"] == {"words": 2}
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(timeout=30) == 0


def test_up_runs_a_batch_of_demo_tasks_through_auctions(tmp_path: Path) -> None:
    cluster_dir = tmp_path / "mesh"
    with running_up(cluster_dir, "--nodes", "3", "--agents", "demo", "--demo-tasks", "9") as up:
        lines = up.printed.splitlines()
        reports = [line for line in lines if " -> " in line]
        assert len(reports) == 9, up.printed
        names = {node["name"] for node in up.nodes}
        for report in reports:
            # Bids: 3 once every node's advert has spread (the first calls may see fewer).
            assert " -> done by " in report and " bids, epoch " in report, report
            assert report.split(" -> done by ")[1].split()[0] in names
        assert "9 of 9 demo tasks done with the right result" in up.printed
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(timeout=30) == 0


def test_demo_tasks_need_agents(tmp_path: Path) -> None:
    result = run_cli("up", "--dir", str(tmp_path / "mesh"), "--demo-tasks", "3", check=False)
    assert result.returncode == 1 and "--agents demo" in result.stderr
