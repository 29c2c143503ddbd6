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
from agents.demo import SleepAgent, SumAgent, WordCountAgent
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
