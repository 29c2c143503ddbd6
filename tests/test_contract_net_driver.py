"""ContractNetDriver on real nodes in one process: a 3-voter Raft ledger, demo agents."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest

from agents.agent import Agent
from agents.contract_net.ledger import TaskState, decode_record
from agents.contract_net.settings import ManagerSettings
from agents.demo import SleepAgent, SumAgent, WordCountAgent
from agents.driver import (
    ContractNetDriver,
    DriverSettings,
    decode_json,
    submit_open_task,
)
from agents.host import AgentHost
from mesh.config import NodeConfig
from mesh.identity import ClusterAuthority, Identity
from mesh.runtime import Node

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

AUTHORITY = ClusterAuthority(Identity.generate())
SETTINGS = DriverSettings(scan_interval_s=0.2, lease_ttl_s=1.5, lease_margin_s=0.3,
                          alive_ttl_s=1.5, kv_timeout_s=3.0, max_attempts=5)
MANAGER = ManagerSettings(bid_window_s=0.3, no_bid_backoff_s=0.2, no_bid_rounds_max=3)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _node(name: str, identity: Identity, voters: list[str], seeds: list[str],
          node_dir: Path) -> Node:
    certificate = AUTHORITY.issue(name=name, public_key=identity.public_key, roles=["node"],
                                  not_after=int(time.time()) + 3600)
    config = NodeConfig(name=name, seeds=seeds,
                        raft={"voters": voters, "election_timeout_ms": 300,
                              "heartbeat_interval_ms": 30, "lease_tick_interval_ms": 100})
    node_dir.mkdir(parents=True, exist_ok=True)
    return Node(config=config, identity=identity, certificate=certificate,
                authority_public_key=AUTHORITY.public_key, node_dir=node_dir)


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    with anyio.fail_after(timeout_s):
        while not condition():
            await anyio.sleep(0.02)


class Mesh:
    def __init__(self, tmp_path: Path, agents: list[list[Agent]]) -> None:
        self.identities = [Identity.generate() for _ in agents]
        self.voters = [i.node_id.hex() for i in self.identities]
        self.tmp_path = tmp_path
        self.agents = agents
        self.nodes: list[Node] = []
        self.drivers: list[ContractNetDriver] = []
        self.scopes: list[anyio.CancelScope] = []

    async def start(self, stack: AsyncExitStack, tg: anyio.abc.TaskGroup) -> None:
        seeds: list[str] = []
        for index, identity in enumerate(self.identities):
            node = _node(f"n{index}", identity, self.voters, seeds,
                         self.tmp_path / f"n{index}")
            driver = ContractNetDriver(node, AgentHost(node, self.agents[index]),
                                       settings=SETTINGS, manager_settings=MANAGER)
            driver.install()
            scope = anyio.CancelScope()

            async def run(node: Node = node, scope: anyio.CancelScope = scope,
                          *, task_status: anyio.abc.TaskStatus[None]) -> None:
                with scope:
                    await node.run(task_status=task_status)

            await tg.start(run)
            assert node.address is not None
            seeds = [*seeds, node.address]  # every earlier node: the mesh forms sooner
            self.nodes.append(node)
            self.drivers.append(driver)
            self.scopes.append(scope)
        # Everyone sees everyone's advert, and follows one Raft leader.
        await until(lambda: all(len(n.gossip.items("agents/")) == len(self.nodes)
                                for n in self.nodes))
        await until(self._one_leader)

    def _one_leader(self) -> bool:
        leaders = {(n.raft.status()["leader_id"], n.raft.status()["term"])
                   for n in self.nodes if n.raft is not None}
        return len(leaders) == 1 and None not in next(iter(leaders))

    def stop(self, index: int) -> None:
        self.scopes[index].cancel()


@asynccontextmanager
async def mesh(tmp_path: Path, agents: list[list[Agent]]) -> AsyncIterator[Mesh]:
    built = Mesh(tmp_path, agents)
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        await built.start(stack, tg)
        try:
            yield built
        finally:
            tg.cancel_scope.cancel()


async def test_tasks_submitted_on_any_node_run_on_the_node_with_the_capability(
    tmp_path: Path,
) -> None:
    async with mesh(tmp_path, [[WordCountAgent()], [SumAgent()], [SleepAgent()]]) as m:
        words = await m.drivers[2].submit("demo.wordcount", {"text": "a b c d"})
        total = await m.drivers[0].submit("demo.sum", {"numbers": [1, 2, 3]})
        done = await m.drivers[2].wait(words, 30)
        assert done.state is TaskState.DONE, done
        assert decode_json(done.result) == {"words": 4}
        assert done.contractor == m.nodes[0].node_id
        summed = await m.drivers[1].wait(total, 30)
        assert summed.state is TaskState.DONE, summed
        assert decode_json(summed.result) == {"sum": 6}
        assert summed.contractor == m.nodes[1].node_id


async def test_a_task_nobody_can_do_fails_after_its_attempts(tmp_path: Path) -> None:
    async with mesh(tmp_path, [[SumAgent()], [SumAgent()], [SumAgent()]]) as m:
        task = await m.drivers[0].submit("demo.wordcount", {"text": "x"})
        record = await m.drivers[0].wait(task, 60)
        assert record.state is TaskState.FAILED
        assert record.failure_reasons and "no bids" in record.failure_reasons[0]


async def test_an_open_task_written_to_the_ledger_is_taken_over_and_done(
    tmp_path: Path,
) -> None:
    async with mesh(tmp_path, [[SumAgent()], [WordCountAgent()], [SleepAgent()]]) as m:
        record = await submit_open_task(m.nodes[2].kv, "demo.sum", {"numbers": [4, 5]})
        done = await m.drivers[2].wait(record.task_id, 30)
        assert done.state is TaskState.DONE, done
        assert decode_json(done.result) == {"sum": 9}
        assert sum(d.counters["takeovers"] for d in m.drivers) >= 1


async def test_a_task_whose_contractor_stops_mid_run_completes_on_another_node(
    tmp_path: Path,
) -> None:
    async with mesh(tmp_path, [[SleepAgent()], [SleepAgent()], [SumAgent()]]) as m:
        manager = m.drivers[2]
        task = await manager.submit("demo.sleep", {"seconds": 2})
        record = None
        with anyio.fail_after(20):
            while record is None or record.state is not TaskState.AWARDED:
                item = await m.nodes[2].kv.get(f"task/{task}")
                record = None if item is None else decode_record(item.value)
                await anyio.sleep(0.05)
        first = [n.node_id for n in m.nodes].index(record.contractor)
        assert first in (0, 1)
        m.stop(first)
        done = await manager.wait(task, 60)
        assert done.state is TaskState.DONE, (done.failure_reasons, done.epoch)
        assert done.contractor == m.nodes[1 - first].node_id
        assert done.epoch >= 2 and done.attempts >= 1
        assert decode_json(done.result) == {"slept": 2}
